"""Every mistake a user can make with `ringfleet` ends in one line on stderr and the exit code `--help` documents,
never a traceback; every read command's `--output json` parses.

Each case runs `python -m ringfleet_cli.main` in its own process, as a user's shell would, with a state directory of its
own (no local cloud) and no broker configured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ringfleet_cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_UNREACHABLE, EXIT_USAGE

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

JOB = ROOT / "examples/digits/job.yaml"

#: Runs the real `main` with the jobs table in memory and one PENDING job of tenant acme ("job-1"), so the read
#: commands have something to print without a local cloud.
WITH_A_JOB = """
import sys
from ringfleet.core.ports import SystemClock
from ringfleet.intake.quotas import TenantRegistry
from ringfleet.intake.service import IntakeService
from ringfleet_cli import attach
from ringfleet_cli.main import main
from ringfleet_client import RingfleetClient
from tests.doubles import InMemoryJobRepository, RecordingCommandPublisher
from tests.builders import spec

jobs = InMemoryJobRepository(SystemClock())
intake = IntakeService(
    jobs=jobs,
    publisher=RecordingCommandPublisher(),
    put_events=lambda e: None,
    tenants=TenantRegistry.register("acme"),
    clock=SystemClock(),
)
intake.on_submitted(spec("job-1"))
attach.job_client = lambda *_, **__: RingfleetClient("amqp://unused", jobs)
sys.exit(main(sys.argv[1:]))
"""


def environment(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGFLEET_")}
    return {**env, "RINGFLEET_STATE_DIR": str(state_dir), "PYTHONPATH": str(ROOT), **extra}


def ringfleet(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringfleet_cli.main", *args],
        cwd=tmp_path,
        env=environment(tmp_path / "state", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def with_a_job(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITH_A_JOB, *args],
        cwd=ROOT,
        env=environment(tmp_path / "state"),
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(out: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("ringfleet: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "bad.yaml").write_text("tenant: acme\njob_id: j1\n  name: [oops\n")
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    (tmp_path / "unclosed.yaml").write_text("tenant: acme\nentrypoint: [python, train.py\n")
    (tmp_path / "event.json").write_text("{not json")
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces/us-east-1a_v100_1.json").write_text('{"metadata": {"gap_seconds": 600}, "data": [4, -1]}')
    (tmp_path / "good").mkdir()
    (tmp_path / "good/us-east-1a_v100_1.json").write_text('{"metadata": {"gap_seconds": 600}, "data": [4, 1]}')
    return tmp_path


MISTAKES = {
    "bad YAML names line and column": (["submit", "bad.yaml"], EXIT_USAGE, ["bad.yaml:3:7", "not valid YAML"]),
    "unclosed YAML list": (["submit", "unclosed.yaml", "--dry-run"], EXIT_USAGE, ["unclosed.yaml:", "YAML"]),
    "a job file that is not a mapping": (["submit", "list.yaml"], EXIT_USAGE, ["YAML mapping"]),
    "missing job file": (["submit", "nope.yaml"], EXIT_USAGE, ["nope.yaml: no such file"]),
    "--set without =": (["submit", str(JOB), "--set", "2fast"], EXIT_USAGE, ["expected FIELD=VALUE"]),
    "--set of a bad value": (
        ["submit", str(JOB), "--set", "max_workers=-3", "--dry-run"],
        EXIT_USAGE,
        ["max_workers"],
    ),
    "--set into a field that is not a mapping": (
        ["submit", str(JOB), "--set", "name.first=x", "--dry-run"],
        EXIT_USAGE,
        ["not a mapping"],
    ),
    "unknown instance type": (
        ["submit", str(JOB), "--set", "instance_types=[p9.mega]", "--dry-run"],
        EXIT_USAGE,
        ["p9.mega", "g5.xlarge"],
    ),
    "a minimum the budget cannot pay for": (
        ["submit", str(JOB), "--set", "instance_types=[g5.12xlarge]", "--dry-run"],
        EXIT_USAGE,
        ["min_workers 2 cost at least $11.34/h", "budget of $2.50/h", "raise budget_usd_per_hour"],
    ),
    "submit with no local cloud": (["submit", str(JOB)], EXIT_UNREACHABLE, ["ringfleet local up"]),
    "status with no local cloud": (["status", "--tenant", "acme"], EXIT_UNREACHABLE, ["no local cloud"]),
    "events with no local cloud": (["events", "--tenant", "acme", "-o", "json"], EXIT_UNREACHABLE, ["no local"]),
    "cancel without a tenant": (["cancel", "job-1"], EXIT_USAGE, ["--tenant"]),
    "status without a tenant": (["status"], EXIT_USAGE, ["RINGFLEET_TENANT"]),
    "local status with no local cloud": (["local", "status"], EXIT_UNREACHABLE, ["ringfleet local up"]),
    "local env with no local cloud": (["local", "env", "--sam-env-vars"], EXIT_UNREACHABLE, ["ringfleet local up"]),
    "emit of a missing file": (["local", "emit", "nope.json"], EXIT_USAGE, ["nope.json: no such file"]),
    "emit of a file that is not JSON": (["local", "emit", "event.json"], EXIT_USAGE, ["not JSON"]),
    "local up with a malformed trace": (
        ["local", "up", "--spot-traces", "traces"],
        EXIT_USAGE,
        ["us-east-1a_v100_1.json", "data[1]", "negative"],
    ),
    "local up with no trace folder": (["local", "up", "--spot-traces", "nope"], EXIT_USAGE, ["nope: not a folder"]),
    "local up with a trace speed of zero": (
        ["local", "up", "--spot-traces", "good", "--trace-speed", "0"],
        EXIT_USAGE,
        ["trace speed", "positive"],
    ),
    "local up with a schedule speed of zero": (
        ["local", "up", "--schedule-speed", "0"],
        EXIT_USAGE,
        ["--schedule-speed", "not a positive number"],
    ),
    "invoke of a missing event file": (["invoke", "NodeRecoveryFunction", "-e", "nope.json"], EXIT_USAGE, ["nope"]),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_a_mistake_is_one_line_on_stderr_with_its_documented_exit_code(files: Path, case: str) -> None:
    args, code, words = MISTAKES[case]
    # when a user makes the mistake
    out = ringfleet(files, *args)
    # then one line says what is wrong, with the exit code `ringfleet --help` documents, and no traceback
    assert_one_line_error(out, code, *words)


def test_local_up_refuses_a_trace_folder_before_starting_anything(files: Path) -> None:
    # when the trace folder cannot be replayed
    out = ringfleet(files, "local", "up", "--spot-traces", "traces")
    # then the refusal comes before the background cloud is forked: no log of it, no state written
    assert out.returncode == EXIT_USAGE
    assert not (files / "state" / "local.log").exists()


def test_a_broker_that_does_not_answer_is_one_line_and_exit_code_3(tmp_path: Path) -> None:
    out = ringfleet(tmp_path, "submit", str(JOB), RINGFLEET_BROKER_URL="amqp://guest:guest@127.0.0.1:1/")
    assert_one_line_error(out, EXIT_UNREACHABLE, "cannot reach the broker")


def test_help_documents_the_exit_codes_and_version_answers(tmp_path: Path) -> None:
    helped = ringfleet(tmp_path, "--help")
    assert helped.returncode == 0
    for code in (EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED):
        assert f"\n  {code} " in helped.stdout
    assert "==SUPPRESS==" not in ringfleet(tmp_path, "local", "--help").stdout
    version = ringfleet(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("ringfleet ")


def test_an_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    out = ringfleet(tmp_path, "statu")
    assert out.returncode == EXIT_USAGE and "Traceback" not in out.stderr and "invalid choice" in out.stderr


def test_dry_run_validates_a_good_job_offline_and_sends_nothing(tmp_path: Path) -> None:
    out = ringfleet(tmp_path, "submit", str(JOB), "--set", "job_id=digits-2", "--set", "name=2fast", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "valid: digits-2" in out.stdout and "nothing sent" in out.stdout


def test_dry_run_shows_the_slots_the_job_runs_on_each_of_its_instance_types_and_the_gpus_it_holds(
    tmp_path: Path,
) -> None:
    # given the digits job (2..3 workers) allowed a four-GPU and a one-GPU type
    multi = ["--set", "instance_types=[g5.12xlarge, g5.xlarge]", "--set", "budget_usd_per_hour=20"]
    # when it is checked: a slot per GPU on each, and every GPU of the larger type held per worker
    out = ringfleet(tmp_path, "submit", str(JOB), *multi, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "g5.12xlarge: 4 slots (4 x A10G" in out.stdout and "g5.xlarge: 1 slot (1 x A10G" in out.stdout
    assert "quota: holds up to 12 GPUs (3 workers x 4) and $20.00/h of tenant acme's" in out.stdout
    # and when it asks for at most 2 slots per instance, the four-GPU type runs 2, its other 2 GPUs idle but held
    capped = ringfleet(tmp_path, "submit", str(JOB), *multi, "--set", "slots_per_instance=2", "--dry-run")
    assert capped.returncode == 0, capped.stderr
    assert "g5.12xlarge: 2 slots (4 x A10G" in capped.stdout and "slots_per_instance 2: 2 idle)" in capped.stdout
    assert "g5.xlarge: 1 slot (" in capped.stdout and "holds up to 12 GPUs" in capped.stdout


@pytest.mark.parametrize(
    "args",
    [["status", "--tenant", "acme"], ["status", "job-1", "--tenant", "acme"], ["events", "--tenant", "acme"]],
)
def test_read_commands_print_json_that_parses(tmp_path: Path, args: list[str]) -> None:
    out = with_a_job(tmp_path, *args, "--output", "json")
    assert out.returncode == 0, out.stderr
    parsed = json.loads(out.stdout)
    assert isinstance(parsed, list) and parsed and parsed[0]["job_id"] == "job-1"


def pretend_a_local_cloud_is_up(tmp_path: Path) -> None:
    """Writes a local cloud's state file (this test process stands in for it; nothing listens on its ports)."""
    state = {
        "endpoint": "http://127.0.0.1:9",
        "broker_url": "amqp://guest:guest@127.0.0.1:9/",
        "template": str(ROOT / "template.yaml"),
        "stack": "ringfleet",
        "region": "us-east-1",
        "pid": os.getpid(),
        "started_at": time.time(),
    }
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "local.json").write_text(json.dumps(state))


def test_local_status_and_sam_env_vars_print_json_that_parses(tmp_path: Path) -> None:
    # given a local cloud's state file
    pretend_a_local_cloud_is_up(tmp_path)
    status = ringfleet(tmp_path, "local", "status", "--output", "json")
    assert status.returncode == 0, status.stderr
    assert "NodeRecoveryFunction" in json.loads(status.stdout)["functions"]
    env = ringfleet(tmp_path, "local", "env", "--sam-env-vars")
    assert env.returncode == 0, env.stderr
    variables = json.loads(env.stdout)["JobIntakeFunction"]
    assert variables["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert variables["JOBS_TABLE"] and variables["JOBS_TABLE"] != "JobsTable"  # a real table name, not a logical id


def test_submit_of_a_job_whose_tenant_id_is_invalid_names_the_field_before_any_tenant_lookup(tmp_path: Path) -> None:
    # given a local cloud is up here
    pretend_a_local_cloud_is_up(tmp_path)
    # when a user submits a job whose tenant id the contract refuses (capitals and a space)
    out = ringfleet(tmp_path, "submit", str(JOB), "--set", "tenant=Acme Corp")
    # then the one line names the field and the rule it breaks, as a usage error: not "not registered" with advice
    # (`ringfleet local up --tenant 'Acme Corp'`) that refuses the same id
    assert_one_line_error(out, EXIT_USAGE, "job rejected before sending", "tenant: String should match pattern")
    assert "not registered" not in out.stderr and "--tenant" not in out.stderr


def test_ctrl_c_on_events_follow_ends_cleanly_with_130(tmp_path: Path) -> None:
    # given `events --follow` printing as it happens, started as from a terminal: Ctrl-C's signal not ignored (a test
    # run started in the background by a non-interactive shell inherits SIGINT ignored, and Python keeps it so)
    proc = subprocess.Popen(
        [sys.executable, "-c", WITH_A_JOB, "events", "--tenant", "acme", "--follow", "-o", "json"],
        cwd=ROOT,
        env=environment(tmp_path / "state"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # waits for the condition: the first event is out
    assert json.loads(first)["cause"] == "admitted"
    # when the user presses Ctrl-C
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    # then it ends at once, with 130 and no traceback
    assert proc.returncode == EXIT_INTERRUPTED
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
