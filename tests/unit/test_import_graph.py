"""What production code may import, read from the source (ast, nothing is imported): the runtime package and the
handlers never reach the local cloud, the dev tools, the tests or the worker; handlers stay thin; the capabilities'
decisions and use cases stay pure, their use cases meeting only in the composition root.

Every import counts, those under ``if TYPE_CHECKING:`` and inside functions too: a lazy import is still a
dependency of what ships. ``tests/integration/test_handler_imports.py`` checks what a cold start really loads.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

SRC = ROOT / "src"
SERVICES = ROOT / "services"
WORKER = ROOT / "training_worker"

#: Never imported by anything that ships to Lambda: the local cloud, the CLI and client, the tests, the worker.
NEVER = ("ringfleet_local", "ringfleet_cli", "ringfleet_client", "tests", "moto", "torch", "training_worker")
CAPABILITIES = ("recovery", "scaling", "intake", "backup")
#: What a handler may use of the runtime package: the composition root, the wire contracts and the two helpers
#: every handler shares. Use cases and adapters reach a handler only through ``bootstrap``.
HANDLER_MAY_USE = ("ringfleet.bootstrap", "ringfleet.contracts", "ringfleet.batch", "ringfleet.observability")
#: Pure packages (decisions, use cases, ports): they see the outside world only through their ports.
PURE = ("ringfleet.core", "ringfleet.contracts", *(f"ringfleet.{c}" for c in CAPABILITIES))
IMPURE = ("ringfleet.adapters", "ringfleet.bootstrap", "boto3", "botocore", "aio_pika", "aiormq", "pamqp")


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    """``ringfleet.scaling.service`` for src/ringfleet/scaling/service.py, ``training_worker.runtime.ring`` for
    training_worker/runtime/ring.py; ``app`` for a handler (its own root)."""
    root = SRC if path.is_relative_to(SRC) else ROOT if path.is_relative_to(WORKER) else None
    if root is None:
        return path.stem
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, source: str | None = None) -> Iterator[Import]:
    """Every module ``path`` (or ``source`` as if it were that file) imports, relative imports resolved;
    ``from a import b`` yields ``a.b`` too (b may be a module)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield Import(path, node.lineno, base)
            for alias in node.names:
                yield Import(path, node.lineno, f"{base}.{alias.name}")


def within(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def runtime_modules() -> list[Path]:
    return sorted((SRC / "ringfleet").rglob("*.py"))


def handler_modules() -> list[Path]:
    return sorted(SERVICES.rglob("*.py"))


def worker_modules() -> list[Path]:
    return sorted(WORKER.rglob("*.py"))


def test_the_sources_are_found() -> None:
    # a glob that found nothing would make every test below pass
    assert len(runtime_modules()) > 20
    assert {p.parent.name for p in handler_modules()} >= {
        "job_intake",
        "node_recovery",
        "worker_events",
        "heartbeat_sweep",
        "instance_catalog",
        "checkpoint_backup",
        "fleet_scaler",
        "pre_traffic",
    }


def test_nothing_that_ships_imports_the_local_cloud_the_dev_tools_the_tests_or_the_worker() -> None:
    found = [str(i) for p in runtime_modules() + handler_modules() for i in imports_of(p) if within(i.target, NEVER)]
    assert not found, "production code imports what never ships:\n" + "\n".join(found)


def test_the_worker_uses_only_the_wire_contracts_of_the_control_plane_package() -> None:
    # its image ships ringfleet.contracts alone (training_worker/Dockerfile): anything else would fail to import there
    worker = worker_modules()
    assert worker
    found = [
        str(i)
        for p in worker
        for i in imports_of(p)
        if within(i.target, ("ringfleet",)) and not within(i.target, ("ringfleet", "ringfleet.contracts"))
    ]
    assert not found, "the worker imports what its image does not ship:\n" + "\n".join(found)
    dockerfile = (ROOT / "training_worker" / "Dockerfile").read_text()
    assert "COPY src/ringfleet/contracts /app/ringfleet/contracts" in dockerfile


@pytest.mark.parametrize("handler", handler_modules(), ids=lambda p: str(p.relative_to(SERVICES)))
def test_a_handler_reaches_use_cases_and_adapters_only_through_bootstrap(handler: Path) -> None:
    used = [i for i in imports_of(handler) if within(i.target, ("ringfleet",)) and i.target != "ringfleet"]
    # `from ringfleet import bootstrap` names the module itself
    found = [str(i) for i in used if not within(i.target, HANDLER_MAY_USE)]
    assert not found, "a handler imports the runtime's insides (use bootstrap):\n" + "\n".join(found)


def test_decisions_and_use_cases_import_no_adapter_no_sdk_and_not_the_composition_root() -> None:
    pure = [p for p in runtime_modules() if within(module_name(p), PURE)]
    assert pure
    found = [str(i) for p in pure for i in imports_of(p) if within(i.target, IMPURE)]
    assert not found, "a pure package imports an adapter, an SDK or bootstrap:\n" + "\n".join(found)


def test_a_capability_never_imports_another_capabilitys_use_case() -> None:
    found = []
    for capability in CAPABILITIES:
        others = tuple(f"ringfleet.{c}.service" for c in CAPABILITIES if c != capability)
        for path in sorted((SRC / "ringfleet" / capability).rglob("*.py")):
            found += [str(i) for i in imports_of(path) if within(i.target, others)]
    assert not found, "use cases meet only in ringfleet.bootstrap:\n" + "\n".join(found)


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules among ``modules`` that ``path`` imports. ``from package import module`` imports the module, not
    the package's own names: it is no edge to the package (whose ``__init__`` may import the module back)."""
    by_line: dict[int, set[str]] = {}
    for i in imports_of(path):
        by_line.setdefault(i.line, set()).add(i.target)
    found: set[str] = set()
    for targets in by_line.values():
        for target in targets:
            below = {t for t in targets if t.startswith(target + ".")}
            if below and below <= set(modules):
                continue  # a package whose submodules are what the line names
            if target in modules:
                found.add(target)
    return found


def import_circles(modules: dict[str, Path]) -> list[list[str]]:
    """The import circles among ``modules`` (name -> file): each strongly connected group of two or more modules,
    or one that imports itself, sorted (Tarjan's algorithm, iterative)."""
    graph = {m: sorted(imported_modules(p, modules)) for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, edge = work.pop()
            if edge == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
            if edge < len(graph[node]):
                work.append((node, edge + 1))
                target = graph[node][edge]
                if target not in index:
                    work.append((target, 0))
                elif target in stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                group = stack[stack.index(node) :]
                del stack[stack.index(node) :]
                if len(group) > 1 or node in graph[node]:
                    circles.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(circles)


def test_the_runtime_package_has_no_import_circle() -> None:
    modules = {module_name(p): p for p in runtime_modules()}
    circles = import_circles(modules)
    assert not circles, "import circles in ringfleet:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_worker_has_no_import_circle() -> None:
    # the runtime's parts depend one way (training state through a Protocol, never elastic's TorchState)
    modules = {module_name(p): p for p in worker_modules()}
    assert {"training_worker.runtime", "training_worker.runtime.ring", "training_worker.elastic"} <= set(modules)
    circles = import_circles(modules)
    assert not circles, "import circles in training_worker:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_runtime_never_imports_the_script_side_of_the_worker() -> None:
    # elastic, the optimizer and the public API call into the runtime; the runtime calls back only through
    # training_worker.runtime.state.TrainingState
    script_side = ("training_worker.elastic", "training_worker.optimizer", "training_worker.agent")
    runtime = [p for p in worker_modules() if within(module_name(p), ("training_worker.runtime",))]
    assert len(runtime) > 5
    found = [str(i) for p in runtime for i in imports_of(p) if within(i.target, script_side)]
    assert not found, "the runtime imports the script's side:\n" + "\n".join(found)


def test_the_circle_check_finds_a_circle_through_three_modules(tmp_path: Path) -> None:
    # given a imports b, b imports c (inside a function) and c imports a, and d imports a without being imported
    sources = {"a": "import b\n", "b": "def f():\n    import c\n", "c": "from a import x\n", "d": "import a\n"}
    for name, source in sources.items():
        (tmp_path / f"{name}.py").write_text(source)
    # when the circles among them are sought
    circles = import_circles({name: tmp_path / f"{name}.py" for name in sources})
    # then the three are one circle and d is in none
    assert circles == [["a", "b", "c"]]


def test_importing_a_module_from_its_package_is_no_edge_to_the_package(tmp_path: Path) -> None:
    # given a package p whose __init__ imports p.m, and p.m that imports its sibling as `from p import n`
    package = tmp_path / "p"
    package.mkdir()
    sources = {"__init__": "from p import m\n", "m": "from p import n\n", "n": "X = 1\n"}
    for name, source in sources.items():
        (package / f"{name}.py").write_text(source)
    modules = {"p": package / "__init__.py", "p.m": package / "m.py", "p.n": package / "n.py"}
    # when the circles among them are sought, then there are none: `from p import n` needs p.n, not p's names
    assert import_circles(modules) == []
    # but a name of the package itself is an edge to it
    (package / "m.py").write_text("from p import X\n")
    assert import_circles(modules) == [["p", "p.m"]]


def test_the_checks_see_relative_imports_and_imports_inside_functions() -> None:
    # given a module of the runtime package with a relative import and one inside a function
    source = "from ..recovery import service\n\ndef f():\n    import ringfleet_local.cloud\n"
    # when its imports are read as if it were scaling/service.py
    found = imports_of(SRC / "ringfleet" / "scaling" / "service.py", source)
    # then both are seen
    targets = [i.target for i in found if within(i.target, ("ringfleet.recovery.service", *NEVER))]
    assert targets == ["ringfleet.recovery.service", "ringfleet_local.cloud"]
