"""template.yaml as CloudFormation deploys it: the SAM transform applied, offline, for checkov (`make checkov`).

Runs in the SAM virtualenv (``.venv-sam/bin/python tools/sam_translate.py template.yaml OUT.json``): the transform
is aws-sam-translator's, the one ``sam deploy`` and CloudFormation apply. Local code paths become placeholder S3
URIs (only ``sam package`` uploads them) and managed policies are not looked up (the template names none).

A resource's ``Metadata`` is passed through to what SAM generates from it, so that checkov's suppressions
(``Metadata: checkov: skip:``, each with its reason) written on a function in template.yaml apply to its Lambda
function.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from samtranslator.translator.transform import transform  # type: ignore[import-not-found, unused-ignore]
from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-not-found, unused-ignore]

_LOCAL_PATHS = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}


class _NoManagedPolicies:
    def load(self) -> dict[str, str]:
        return {}


def translate(template: dict[str, Any]) -> dict[str, Any]:
    for res in template.get("Resources", {}).values():
        prop = _LOCAL_PATHS.get(res.get("Type", ""))
        if prop and isinstance(res.get("Properties", {}).get(prop), str):
            res["Properties"][prop] = f"s3://sam-package/{res['Properties'][prop].strip('/')}.zip"
    out: dict[str, Any] = transform(template, {}, _NoManagedPolicies(), passthrough_metadata=True)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: sam_translate.py TEMPLATE OUT.json", file=sys.stderr)
        return 2
    logging.getLogger("samtranslator").setLevel(logging.ERROR)  # feature-toggle notices: not findings
    source, target = Path(argv[1]), Path(argv[2])
    translated = translate(yaml_parse(source.read_text()))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(translated, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
