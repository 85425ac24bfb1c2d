"""bench/fleet_cost.py on traces where a policy launches nothing: it reports the comparison it can make instead of
crashing (a multi-worker job on zones of one instance each left failover with no instance and no cost, and the
bench divided by it)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_cost", ROOT / "bench" / "fleet_cost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet_cost"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_policy_that_launched_nothing_is_reported_not_divided_by(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given zones of one spot instance each, gone a third of the time
    for zone in ("us-east-1a", "us-east-1b"):
        trace = {"metadata": {"gap_seconds": 600, "instance_type": "p3.2xlarge", "capacity": 1}, "data": [1, 0, 1] * 40}
        (tmp_path / f"{zone}_v100_1.json").write_text(json.dumps(trace))
    # when the bench compares the policies on them
    status = _bench().main(["--trace-dir", str(tmp_path), "--seeds", "1", "--jobs", "2"])
    out = capsys.readouterr().out
    # then failover, which never holds a multi-worker job's instances at once, shows no cost and no ratio to it
    failover = next(line for line in out.splitlines() if line.startswith("(c)"))
    assert failover.split()[4] == "0", out
    assert "cost / (c)'s: n/a" in out and status in (0, 1)
