"""What ships: ``sam build`` of the SharedLayer holds the runtime package ``ringfleet`` and its third-party
requirements (``src/requirements.txt`` and what they require), nothing else: no local cloud, no CLI or client, no
tests, no worker, no moto.

``sam`` lives in ``.venv-sam`` (``make .venv-sam/.installed``; ``make test`` builds it first). sam reuses what it
built when neither the source nor the requirements changed, so a rerun takes seconds instead of a dependency
download: the build keeps its cache under ``.aws-sam/layer-test/`` (sam's ``build.toml`` beside the build folder),
and builds the whole template, because sam writes ``build.toml`` only then (the functions are plain copies). The
build folder itself is emptied first: only what this build wrote is inspected.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SAM = ROOT / ".venv-sam" / "bin" / "sam"
WORK = ROOT / ".aws-sam" / "layer-test"
NEVER = ("ringfleet_local", "ringfleet_cli", "ringfleet_client", "tests", "training_worker", "moto", "torch")
#: The layer's platform (python3.11 on arm64, as its BuildArchitecture): the requirements' markers are read there.
LAYER_PLATFORM = {
    **{k: str(v) for k, v in default_environment().items()},
    "platform_machine": "aarch64",
    "python_version": "3.11",
}


@pytest.fixture(scope="session")
def layer() -> Iterator[Path]:
    """The SharedLayer as ``sam build`` lays it out: the folder that becomes ``/opt/python`` in Lambda."""
    if not SAM.is_file():
        pytest.fail(f"{SAM.relative_to(ROOT)} is missing: run `make .venv-sam/.installed` (aws-sam-cli's own venv)")
    WORK.mkdir(parents=True, exist_ok=True)
    build = WORK / "build"
    with (WORK / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs side by side would share sam's cache and build folder
        shutil.rmtree(build, ignore_errors=True)
        done = subprocess.run(
            [
                str(SAM),
                "build",
                "--template-file",
                str(ROOT / "template.yaml"),
                "--build-dir",
                str(build),
                "--cache-dir",
                str(WORK / "cache"),
                "--cached",
            ],
            cwd=ROOT,
            env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
            capture_output=True,
            text=True,
            timeout=540,
        )
        assert done.returncode == 0, f"sam build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        yield build / "SharedLayer" / "python"


def requirement_closure(layer: Path) -> dict[str, set[str]]:
    """Each distribution the layer should hold (canonical name -> extras asked for): src/requirements.txt and,
    from each installed distribution's metadata, what it requires in turn."""
    wanted: dict[str, set[str]] = {}
    pending = [
        Requirement(line.split("#", 1)[0].strip())
        for line in (ROOT / "src" / "requirements.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    metadata = {canonicalize_name(p.name.split("-")[0]): p / "METADATA" for p in layer.glob("*.dist-info")}
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if name in wanted and extras <= wanted[name]:
            continue
        wanted.setdefault(name, set()).update(extras)
        if name not in metadata:
            continue  # a requirement the layer lacks: the import test below reports what is missing
        for line in metadata[name].read_text().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            dep = Requirement(line.split(":", 1)[1].strip())
            if dep.marker is None or any(
                dep.marker.evaluate({**LAYER_PLATFORM, "extra": extra}) for extra in {"", *wanted[name]}
            ):
                pending.append(dep)
    return wanted


def owners(layer: Path) -> dict[str, str]:
    """Top-level entry of the layer -> the distribution whose RECORD installed it."""
    owned: dict[str, str] = {}
    for info in layer.glob("*.dist-info"):
        dist = canonicalize_name(info.name.split("-")[0])
        for row in (info / "RECORD").read_text().splitlines():
            top = row.split(",", 1)[0].split("/", 1)[0]
            if top and not top.startswith(".."):
                owned.setdefault(top, dist)
    return owned


def test_the_layer_holds_the_runtime_package_exactly_as_in_src(layer: Path) -> None:
    shipped = {p.relative_to(layer).as_posix() for p in (layer / "ringfleet").rglob("*") if p.is_file()}
    source = {
        p.relative_to(ROOT / "src").as_posix()
        for p in (ROOT / "src" / "ringfleet").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {s for s in shipped if "__pycache__" not in s} == source


def test_the_layer_holds_nothing_of_the_local_cloud_the_tools_the_tests_or_the_worker(layer: Path) -> None:
    entries = {p.name for p in layer.iterdir()}
    dists = {canonicalize_name(p.name.split("-")[0]) for p in layer.glob("*.dist-info")}
    assert not {e for e in entries if e.split(".")[0] in NEVER}, sorted(entries)
    assert not dists & {canonicalize_name(n) for n in NEVER}, sorted(dists)
    nested = [p.relative_to(layer).as_posix() for p in layer.rglob("*") if p.is_dir() and p.name in NEVER]
    assert not nested, nested


def test_every_entry_of_the_layer_is_ringfleet_or_a_requirement(layer: Path) -> None:
    wanted = requirement_closure(layer)
    by_entry = owners(layer)
    # every distribution installed is one src/requirements.txt asks for, directly or through another
    dists = {canonicalize_name(p.name.split("-")[0]) for p in layer.glob("*.dist-info")}
    assert dists - set(wanted) == set(), f"distributions nobody requires: {sorted(dists - set(wanted))}"
    # and every top-level file or folder was installed by one of them, or is the runtime package itself
    stray = sorted(
        e.name
        for e in layer.iterdir()
        if e.name not in {"ringfleet", "requirements.txt", "__pycache__"}
        and not e.name.endswith((".dist-info", ".data"))
        and e.name not in by_entry
    )
    assert not stray, f"in the layer but installed by no required distribution: {stray}"
    # and the requirements themselves are all there
    missing = sorted(
        Requirement(line.split("#", 1)[0].strip()).name
        for line in (ROOT / "src" / "requirements.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
        and canonicalize_name(Requirement(line.split("#", 1)[0].strip()).name) not in dists
    )
    assert not missing, f"requirements the layer lacks: {missing}"
