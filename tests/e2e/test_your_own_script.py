"""A new user's own script, as the README's "Train your own model" tells it: `ringfleet local up`, `ringfleet submit`,
and `ringfleet status` / `events` show it train to the end. Scripts that raise, never call init(), or do not exist
end their job FAILED with the cause, and the fleet scales back down.

A module of its own: the background local cloud consumes the jobs queue of its vhost while it runs.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from tests.e2e.support import wait_until
from tests.e2e.test_local_cloud import ringfleet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

#: What a user writes against the README (about forty lines): a linear regression on synthetic data.
OWN_SCRIPT = '''
"""Fits y = 3x - 1 on synthetic data, data-parallel with ringfleet."""
import argparse

import torch

import training_worker as rf

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--lr", type=float, default=0.1)
args = parser.parse_args()

rf.init()
torch.manual_seed(0)
x = torch.randn(512, 1)
data = torch.utils.data.TensorDataset(x, 3 * x - 1)
model = torch.nn.Linear(1, 1)
optimizer = rf.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=args.lr), model.named_parameters())
sampler = rf.elastic.ElasticSampler(data, global_batch_size=32)
loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
state = rf.elastic.TorchState(model=model, optimizer=optimizer, sampler=sampler, epoch=0, step=0)


@rf.elastic.run
def train(state):
    while state.step < args.steps:
        sampler.set_epoch(state.epoch)
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            optimizer.step()
            state.step += 1
            rf.report(loss=loss.item())
            state.commit()
            if state.step == args.steps:
                return
        state.epoch += 1


train(state)
print(f"fitted weight {model.weight.item():.3f} bias {model.bias.item():.3f}", flush=True)
'''

RAISES = """
import training_worker as rf

rf.init()
raise ValueError("the learning rate schedule is empty")
"""

NEVER_INITS = """
print("training, but without ringfleet")
"""


def _job(tmp: Path, name: str, script: str | None, *, workers: int, max_restarts: int) -> tuple[str, Path]:
    job_id = f"{name}-{uuid.uuid4().hex[:6]}"
    path = tmp / f"{name}.py"
    if script is not None:
        path.write_text(textwrap.dedent(script))
    spec = {
        "tenant": "own",
        "job_id": job_id,
        "name": name,
        "image": "local/own:1",
        "entrypoint": ["python", str(path)],
        "hyperparameters": {"steps": 60},
        "min_workers": workers,
        "max_workers": workers,
        "gpus_per_worker": 1,
        "instance_types": ["g5.xlarge"],
        "checkpoint_interval_steps": 10,
        "max_restarts": max_restarts,
        "budget_usd_per_hour": 50,
    }
    job_file = tmp / f"{name}.yaml"
    job_file.write_text(yaml.safe_dump(spec))
    return job_id, job_file


def _states(tmp: Path) -> dict[str, str]:
    """Job id -> state of the tenant's jobs, as `ringfleet status --output json` lists them (one CLI run for all)."""
    out = ringfleet("status", "--tenant", "own", "--output", "json", state_dir=tmp / "state").stdout
    try:
        return {j["job_id"]: j["state"] for j in json.loads(out)}
    except ValueError:  # the local cloud not answering yet: no job known
        return {}


def test_own_scripts_train_to_the_end_and_failing_ones_end_failed_with_their_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a local cloud started as the README says, whose fleet scaler releases idle instances after seconds
    # rather than AWS's ten minutes, on a tick every 5 s rather than every minute (docs/local-cloud.md's knobs for
    # local runs), and four jobs of a new user's
    monkeypatch.setenv("SCALING_IDLE_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("SCALING_COOLDOWN_SECONDS", "5")
    up = ringfleet("local", "up", "--schedule-speed", "12", state_dir=tmp_path / "state")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        good, good_file = _job(tmp_path, "fits", OWN_SCRIPT, workers=2, max_restarts=1)
        raises, raises_file = _job(tmp_path, "raises", RAISES, workers=1, max_restarts=1)
        never, never_file = _job(tmp_path, "noinit", NEVER_INITS, workers=1, max_restarts=0)
        missing, missing_file = _job(tmp_path, "missing", None, workers=1, max_restarts=0)
        # when each is submitted
        for job_file in (good_file, raises_file, never_file, missing_file):
            submitted = ringfleet("submit", str(job_file), state_dir=tmp_path / "state")
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr

        # then the user's own script trains on two workers to the end, and the job SUCCEEDS
        finals = {good: "SUCCEEDED", raises: "FAILED", never: "FAILED", missing: "FAILED"}
        wait_until(lambda: _states(tmp_path) == finals, timeout=240, what=f"the jobs to end {finals}", every=2.0)
        logs = ringfleet("logs", good, "--tenant", "own", state_dir=tmp_path / "state").stdout
        assert "world 2" in logs and "fitted weight 3.0" in logs, logs[-3000:]
        events = ringfleet("events", "--tenant", "own", state_dir=tmp_path / "state").stdout

        # and each failing script's job says why, in `ringfleet status` and with the traceback in `events`
        def status(job_id: str) -> str:
            return ringfleet("status", job_id, "--tenant", "own", state_dir=tmp_path / "state").stdout

        assert "ValueError: the learning rate schedule is empty" in status(raises)
        assert "without calling training_worker.init()" in status(never)
        assert "does not exist" in status(missing)
        assert events.count("script-failed") >= 2 + 1 + 1, events  # raises: 1 restart, then the failure for good
        assert 'raise ValueError("the learning rate schedule is empty")' in events

        # and the fleet scales back down: no instance of the stack keeps running
        def running() -> str:
            return ringfleet("local", "status", state_dir=tmp_path / "state").stdout

        wait_until(lambda: "0 instance(s) running" in running(), timeout=180, what="the fleet to scale down", every=3.0)
    finally:
        ringfleet("local", "down", state_dir=tmp_path / "state")
