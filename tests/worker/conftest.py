"""Fixtures for whole-worker tests: a moto S3 server the worker processes reach, and an instance-metadata server."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import pytest
from ringfleet_local.cloud import start_moto_server

from tests.worker.distributed import free_port
from training_worker.control import SpotNoticeWatcher

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "ckpt"


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """Environment for worker processes: S3 (a moto server with the checkpoint bucket) via AWS_ENDPOINT_URL.

    The local cloud's moto server, a process of its own, not moto's ThreadedMotoServer: that one keeps its state in
    this process's moto backends, which any ``mock_aws`` test run by the same pytest worker resets (the bucket
    vanished mid-session)."""
    port = free_port()
    server = start_moto_server(port)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RINGFLEET_CHECKPOINT_BUCKET": BUCKET,
    }
    s3_client(env).create_bucket(Bucket=BUCKET)
    yield env
    server.terminate()
    server.wait(10)


def s3_client(env: dict[str, str]) -> S3Client:
    """A client of the same S3 the workers use."""
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


class InstanceMetadata(http.server.BaseHTTPRequestHandler):
    """EC2 instance metadata: an IMDSv2 token, and the spot notice once ``notice`` is set (404 before)."""

    notice: dict[str, str] | None = None

    def do_PUT(self) -> None:  # IMDSv2 token
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"token")

    def do_GET(self) -> None:
        if self.path == SpotNoticeWatcher.PATH and type(self).notice is not None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps(type(self).notice).encode())
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metadata() -> Iterator[tuple[str, type[InstanceMetadata]]]:
    """(base URL, handler class): set ``handler.notice`` to serve a spot interruption notice."""
    handler = type("Metadata", (InstanceMetadata,), {"notice": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
