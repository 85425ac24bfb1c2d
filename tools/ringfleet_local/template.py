"""Reads template.yaml: CloudFormation short tags, parameters, and the intrinsic functions the local cloud resolves."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Function",
    "FunctionEvent",
    "Resolver",
    "Template",
    "TemplateError",
    "load_template",
]


class TemplateError(ValueError):
    """template.yaml uses something the local cloud cannot reproduce; the message says what and where."""


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that turns `!Ref X` into `{"Ref": "X"}` and `!Sub s` into `{"Fn::Sub": s}`."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


@dataclass(frozen=True)
class FunctionEvent:
    """One event source of a function, as the template declares it (`Type` and `Properties`)."""

    name: str
    type: str
    properties: Mapping[str, Any]


@dataclass(frozen=True)
class Function:
    """An AWS::Serverless::Function with the Globals applied."""

    logical_id: str
    code_uri: Path
    handler: str
    runtime: str
    timeout: int
    memory_size: int
    environment: Mapping[str, Any]
    layers: tuple[Any, ...]
    events: tuple[FunctionEvent, ...]


@dataclass
class Template:
    """The parsed template, with the directory its relative paths start from."""

    path: Path
    body: dict[str, Any]
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.path.resolve().parent

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict(self.body.get("Resources", {}))

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return dict(self.body.get("Parameters", {}))

    def resources_of(self, *types: str) -> dict[str, dict[str, Any]]:
        return {lid: r for lid, r in self.resources.items() if r.get("Type") in types}

    def functions(self) -> dict[str, Function]:
        globals_ = self.body.get("Globals", {}).get("Function", {})
        out: dict[str, Function] = {}
        for lid, res in self.resources_of("AWS::Serverless::Function").items():
            props = {**globals_, **res.get("Properties", {})}
            env = {
                **globals_.get("Environment", {}).get("Variables", {}),
                **res.get("Properties", {}).get("Environment", {}).get("Variables", {}),
            }
            events = tuple(
                FunctionEvent(name, ev["Type"], ev.get("Properties", {}))
                for name, ev in res.get("Properties", {}).get("Events", {}).items()
            )
            out[lid] = Function(
                logical_id=lid,
                code_uri=self.root / str(props["CodeUri"]),
                handler=str(props.get("Handler", "app.handler")),
                runtime=str(props.get("Runtime", "python3.11")),
                timeout=int(props.get("Timeout", 3)),
                memory_size=int(props.get("MemorySize", 128)),
                environment=env,
                layers=tuple(props.get("Layers", ())),
                events=events,
            )
        return out


def load_template(path: str | Path = "template.yaml") -> Template:
    p = Path(path)
    if not p.is_file():
        raise TemplateError(f"{p}: no such template (run from the repository root or pass --template)")
    body = yaml.load(p.read_text(), Loader=_CfnLoader)
    if not isinstance(body, dict) or "Resources" not in body:
        raise TemplateError(f"{p}: not a CloudFormation template (no Resources)")
    return Template(p, body)


_SUB_VAR = re.compile(r"\$\{([^}!][^}]*)\}")


@dataclass
class Resolver:
    """Evaluates Ref, Fn::GetAtt, Fn::Sub, Fn::Join and Fn::If against local names.

    `refs` maps a parameter, pseudo parameter or logical id to what `Ref` returns; `attributes` maps
    ``"LogicalId.Attr"`` to what `Fn::GetAtt` returns; `conditions` is the template's Conditions section, each
    evaluated (Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition) on the local values when an Fn::If names it.
    Anything else is refused with a TemplateError, so a template change the local cloud cannot follow fails loudly
    instead of running with a wrong value.
    """

    refs: dict[str, Any]
    attributes: dict[str, Any]
    conditions: Mapping[str, Any] = field(default_factory=dict)

    def condition(self, name: Any, where: str) -> bool:
        if name not in self.conditions:
            raise TemplateError(f"{where}: no condition {name!r} in the template's Conditions")
        return self._truth(self.conditions[name], f"Conditions.{name}")

    def _truth(self, node: Any, where: str) -> bool:
        if not (isinstance(node, dict) and len(node) == 1):
            raise TemplateError(f"{where}: {node!r} is not a condition the local cloud evaluates")
        ((key, arg),) = node.items()
        if key == "Fn::Equals":
            left, right = self(arg, where)
            return bool(left == right)
        if key == "Fn::Not":
            return not self._truth(arg[0], where)
        if key == "Fn::And":
            return all(self._truth(a, where) for a in arg)
        if key == "Fn::Or":
            return any(self._truth(a, where) for a in arg)
        if key == "Condition":
            return self.condition(arg, where)
        raise TemplateError(f"{where}: {node!r} is not a condition the local cloud evaluates")

    def __call__(self, value: Any, where: str = "template") -> Any:
        if isinstance(value, list):
            return [self(v, where) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref" or key.startswith("Fn::") or key == "Condition":
                return self._intrinsic(key, arg, where)
        return {k: self(v, f"{where}.{k}") for k, v in value.items()}

    def _intrinsic(self, key: str, arg: Any, where: str) -> Any:
        if key == "Ref":
            return self._ref(arg, where)
        if key == "Fn::GetAtt":
            name = ".".join(arg) if isinstance(arg, list) else str(arg)
            if name not in self.attributes:
                raise TemplateError(f"{where}: Fn::GetAtt {name} has no local value")
            return self.attributes[name]
        if key == "Fn::Sub":
            return self._sub(arg, where)
        if key == "Fn::Join":
            sep, items = arg
            return str(sep).join(str(x) for x in self(items, where))
        if key == "Fn::If":
            name, yes, no = arg
            return self(yes if self.condition(name, where) else no, where)
        raise TemplateError(f"{where}: {key} is not supported by the local cloud")

    def _ref(self, name: Any, where: str) -> Any:
        if name not in self.refs:
            raise TemplateError(f"{where}: Ref {name} has no local value")
        return self.refs[name]

    def _sub(self, arg: Any, where: str) -> str:
        text, local = (arg, {}) if isinstance(arg, str) else (arg[0], self(arg[1], where))

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in local:
                return str(local[name])
            if "." in name and not name.startswith("AWS::"):
                return str(self({"Fn::GetAtt": name.split(".", 1)}, where))
            return str(self._ref(name, where))

        return _SUB_VAR.sub(one, str(text))
