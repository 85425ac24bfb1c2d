"""The local cloud's warm interpreters (``ringfleet_local.warm``): a process forked from one runs as ``python -m``
would have started it, and what each fork must not share, it does not."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import boto3
import pytest
from ringfleet_local import warm
from ringfleet_local.cloud import free_port, start_moto_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROBE = """
import json, os, sys
print("to the log")
json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "path": sys.path[:2], "probe": os.environ.get("PROBE"),
           "leaked": os.environ.get("ONLY_THE_PARENT_HAS_THIS")}, open("seen.json", "w"))
sys.exit(int(os.environ["EXIT_WITH"]))
"""


def _run(tmp: Path, monkeypatch: pytest.MonkeyPatch, *, cold: bool) -> tuple[int, dict[str, object], str]:
    folder, code = tmp / ("cold" if cold else "warm"), tmp / "code"
    folder.mkdir()
    code.mkdir(exist_ok=True)
    (code / "probe.py").write_text(PROBE)
    monkeypatch.setenv(warm.COLD_VARIABLE, "1" if cold else "")
    monkeypatch.setenv("ONLY_THE_PARENT_HAS_THIS", "1")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(code), "PROBE": "its own", "EXIT_WITH": "3"}
    process = warm.start("lambda", "probe", ["--flag", "x"], env=env, cwd=folder, log_path=folder / "log")
    status = process.wait(60)
    return status, json.loads((folder / "seen.json").read_text()), (folder / "log").read_text()


def test_a_forked_process_runs_as_python_m_would_start_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # when the same module runs forked from the warm interpreter, and cold (python -m)
    for cold in (False, True):
        status, seen, log = _run(tmp_path, monkeypatch, cold=cold)
        folder = str(tmp_path / ("cold" if cold else "warm"))
        # then each ends with the module's exit status and writes to its own log
        assert (status, log) == (3, "to the log\n"), cold
        # and each saw its arguments and its environment alone (nothing of its parent's), in its working
        # directory, which comes first on sys.path, then its PYTHONPATH
        assert seen == {
            "argv": ["--flag", "x"],
            "cwd": folder,
            "path": [folder, str(tmp_path / "code")],
            "probe": "its own",
            "leaked": None,
        }, cold


def test_a_forked_process_killed_reports_the_signal_as_subprocess_does(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path)}
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(60)\n")
    process = warm.start("lambda", "sleeper", [], env=env, cwd=tmp_path, log_path=tmp_path / "log")
    assert process.poll() is None
    process.send_signal(signal.SIGKILL)
    assert process.wait(10) == -signal.SIGKILL


def test_two_moto_servers_forked_from_one_hand_out_different_ids() -> None:
    # given two moto servers forked from the same warm interpreter (moto's random generator is not the random
    # module's, which a fork reseeds by itself)
    ports = [free_port(), free_port()]
    servers = [start_moto_server(port) for port in ports]
    try:
        # when each launches an instance
        ids = [_launch(port) for port in ports]
        # then the ids differ, as two clouds' do in AWS
        assert ids[0] != ids[1], ids
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)


def _launch(port: int) -> str:
    ec2 = boto3.client(
        "ec2",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    out = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro")
    return str(out["Instances"][0]["InstanceId"])
