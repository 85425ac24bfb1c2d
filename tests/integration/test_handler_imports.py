"""Every handler imports on its own, in a fresh interpreter, without torch, numpy or the training worker: what a
cold start really loads, third-party imports included (``tests/unit/test_import_graph.py`` reads our own imports
from the source)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ringfleet_local.context import CloudContext

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

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


def test_contracts_import_without_heavy_packages() -> None:
    # given a fresh interpreter, as a Lambda cold start
    probe = "import sys, json, ringfleet.contracts; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    # then importing the contracts pulls in nothing a handler must not carry
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"torch", "numpy", "boto3", "aio_pika", "moto", "yaml", "training_worker"}
