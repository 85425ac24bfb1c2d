"""Every handler imports on its own, in a fresh interpreter, without torch, numpy or the training worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ringfleet.local.template import load_template
from tests.conftest import ROOT

FUNCTIONS = load_template(ROOT / "template.yaml").functions()
HEAVY = ("torch", "numpy", "training_worker", "moto", "matplotlib")

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m.split(".")[0] for m in sys.modules)))
"""


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_handler_imports_without_heavy_packages(logical_id: str) -> None:
    # given the function's code and the shared layer on the path, as Lambda would put them
    fn = FUNCTIONS[logical_id]
    module, attr = fn.handler.rsplit(".", 1)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(fn.code_uri), str(ROOT / "src")]),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # when a fresh interpreter imports the handler module
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(fn.code_uri),
    )
    # then it imports, has the handler function, and pulled in none of the heavy packages
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & set(HEAVY), f"{logical_id} imports {sorted(loaded & set(HEAVY))}"
    assert (fn.code_uri / f"{module}.py").is_file()
    assert f"def {attr}(" in (fn.code_uri / f"{module}.py").read_text()
