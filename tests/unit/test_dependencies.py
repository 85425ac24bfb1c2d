"""One pinned set of dependencies: constraints.txt and the layer's src/requirements.txt agree with each other and
fall inside pyproject.toml's ranges, and every install path uses them (`make pin` writes both files)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one ==
        assert spec.operator == "==", f"{path.name}: {line} is not pinned with =="
        found[canonicalize_name(req.name)] = spec.version
    return found


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs]
    return [Requirement(r) for r in [*project["dependencies"], *extras] if not r.startswith("ringfleet")]


def test_every_requirement_of_the_project_is_pinned_inside_its_range() -> None:
    constraints = pins(ROOT / "constraints.txt")
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in constraints, f"{req.name} has no pin in constraints.txt: run `make pin`"
        assert req.specifier.contains(constraints[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={constraints[name]}, outside pyproject.toml's {req}: run `make pin`"
        )


def test_the_layer_installs_exactly_the_versions_of_the_constraints() -> None:
    constraints, layer = pins(ROOT / "constraints.txt"), pins(ROOT / "src" / "requirements.txt")
    layer_direct = [
        Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    for req in layer_direct:
        assert canonicalize_name(req.name) in layer, f"the layer misses {req.name}: run `make pin`"
    differ = {n: (v, constraints.get(n)) for n, v in layer.items() if constraints.get(n) != v}
    assert not differ, f"src/requirements.txt and constraints.txt differ (layer, constraints): {differ}"


def test_every_install_path_uses_the_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-c constraints\.txt -e '\.\[dev\]'", makefile)
    dockerfile = (ROOT / "training_worker" / "Dockerfile").read_text()
    assert "-c /tmp/install/constraints.txt" in dockerfile and "COPY constraints.txt" in dockerfile
    assert "torch==2.13.0" in dockerfile
    # the tool virtualenvs are pinned too
    assert re.search(r"aws-sam-cli==[\d.]+", makefile) and re.search(r"checkov==[\d.]+", makefile)


def test_libraries_whose_internals_the_code_uses_have_an_upper_bound() -> None:
    moto = next(r for r in project_requirements() if canonicalize_name(r.name) == "moto")
    assert any(s.operator == "<" for s in moto.specifier), "moto's internals are patched: bound its minor version"
