"""Every handler imports on its own, in a fresh interpreter, without torch, numpy or the training worker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ringfleet_local.context import CloudContext

from tests.conftest import ROOT

# The endpoint is never contacted: importing a handler builds clients but sends no request.
CONTEXT = CloudContext(ROOT / "template.yaml", endpoint="http://127.0.0.1:9")
FUNCTIONS = CONTEXT.functions
HEAVY = ("torch", "numpy", "training_worker", "moto", "matplotlib")

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m.split(".")[0] for m in sys.modules)))
"""


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_handler_imports_without_heavy_packages(logical_id: str) -> None:
    # given the function's environment from the template, its code and the shared layer on the path, as in Lambda
    fn = FUNCTIONS[logical_id]
    module, attr = fn.handler.rsplit(".", 1)
    env = CONTEXT.function_environment(logical_id)
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
