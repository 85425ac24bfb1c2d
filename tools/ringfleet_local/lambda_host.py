"""Runs one Lambda handler in its own process, as a Lambda execution environment would (used by the router).

Protocol: over the Unix socket ``--connect`` names (the local cloud's end listens), one JSON request per line
(``{"request_id", "event", "deadline_ms"}``) and one JSON reply per line back. The process ends when its end of the
socket closes. What the handler logs or prints goes to a temporary file
for the length of one invocation and comes back in the reply, so each invocation's logs stay its own.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from typing import Any


class LambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    def __init__(self, request_id: str, deadline_ms: float) -> None:
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        region = os.environ.get("AWS_REGION", "us-east-1")
        self.invoked_function_arn = f"arn:aws:lambda:{region}:123456789012:function:{self.function_name}"
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--handler", required=True, help="module.function, e.g. app.handler")
    parser.add_argument("--connect", required=True, help="the Unix socket its requests come from, replies go to")
    args = parser.parse_args()
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.connect(args.connect)
    requests, reply = channel.makefile("r"), channel.makefile("w")
    # Everything the handler writes to stdout or stderr belongs to the current invocation's log.
    saved_err = os.dup(2)
    log_file = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - lives as long as the process
    os.dup2(2, 1)

    if os.environ.get("RINGFLEET_LOCAL_CLOUD") == "1":
        # The local cloud's adapters where AWS has no emulator good enough (EC2 Fleet, spot prices): injected into
        # the composition root before the handler is imported, so production code never imports the local cloud.
        from ringfleet import bootstrap
        from ringfleet_local.moto_fleet import local_fleet

        bootstrap.provide_fleet(local_fleet)
    module_name, func_name = args.handler.rsplit(".", 1)
    init_error: dict[str, Any] | None = None
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
    except Exception as exc:  # reported on every invocation, as Lambda reports an init error
        init_error = {
            "errorType": type(exc).__name__,
            "errorMessage": str(exc),
            "trace": traceback.format_exc(),
        }

    for line in requests:
        request = json.loads(line)
        log_file.seek(0)
        log_file.truncate()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            if init_error is not None:
                out: dict[str, Any] = {"ok": False, **init_error}
            else:
                ctx = LambdaContext(request["request_id"], request["deadline_ms"])
                result = handler(request["event"], ctx)
                out = {"ok": True, "result": result}
        except Exception as exc:
            traceback.print_exc()
            out = {"ok": False, "errorType": type(exc).__name__, "errorMessage": str(exc)}
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_err, 2)
            os.dup2(saved_err, 1)
        log_file.seek(0)
        out["logs"] = log_file.read().decode(errors="replace")
        try:
            reply.write(json.dumps(out, default=str) + "\n")
        except TypeError as exc:
            reply.write(json.dumps({"ok": False, "errorType": "TypeError", "errorMessage": str(exc)}) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
