"""The local cloud's moto server: moto's own, with DynamoDB's requests handled one at a time, atomic as in AWS.

moto answers each request on a thread of its own and, for a conditional write, checks the condition and then
writes, with nothing held in between: two writes conditional on the same revision can both go through. DynamoDB
applies each write to an item atomically, and the generation fence relies on it; one lock around DynamoDB's
requests gives the same here (they are CPU-bound under one GIL anyway). Other services keep answering in parallel:
the router's SQS long polls would otherwise hold everything up.

Run as ``python -m ringfleet.local.moto_server -H 127.0.0.1 -p PORT`` (the arguments of ``moto.server``).
"""

from __future__ import annotations

import threading
from typing import Any

from moto import server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

__all__ = ["AtomicDynamoDbApplication", "main"]


class AtomicDynamoDbApplication(DomainDispatcherApplication):
    """moto's WSGI application, one DynamoDB request at a time."""

    _dynamodb = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_"):
            return super().__call__(environ, start_response)
        with self._dynamodb:
            return super().__call__(environ, start_response)


def main() -> None:
    server.DomainDispatcherApplication = AtomicDynamoDbApplication  # type: ignore[misc]
    server.main()


if __name__ == "__main__":
    main()
