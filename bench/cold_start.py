"""Cold-start cost of each Lambda handler: its import time over that of its libraries alone, in fresh interpreters.

The baseline does what every handler does before any ringfleet code runs: import boto3 and pydantic, create
Powertools' Logger, Tracer and Metrics, import batch processing and the Powertools parser models our contracts
extend (EventBridge, SQS, S3). So the ratio is what ringfleet's own code adds to a cold start.
Runs are interleaved (baseline, handler, baseline, ...) so machine noise hits both alike; medians are reported.
Target: every ratio <= 1.15.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from ringfleet_local.context import CloudContext  # noqa: E402

BASELINE = (
    "import boto3, pydantic\n"
    "from aws_lambda_powertools import Logger, Metrics, Tracer\n"
    "from aws_lambda_powertools.utilities.batch import BatchProcessor, process_partial_response\n"
    "from aws_lambda_powertools.utilities.parser.models import EventBridgeModel, S3Model, SqsModel\n"
    "from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel\n"
    "logger, tracer, metrics = Logger(), Tracer(), Metrics()\n"
)
TIMER = "import time\nt0 = time.perf_counter()\n{body}\nprint(time.perf_counter() - t0)\n"
TARGET = 1.15


def one_run(body: str, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", TIMER.format(body=body)], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="fresh interpreters per measurement (default 9)")
    parser.add_argument("--quick", action="store_true", help="3 repeats: a smoke run")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    # Each run gets the function's environment from the template, as Lambda would; no request is ever sent.
    ctx = CloudContext(ROOT / "template.yaml", endpoint="http://127.0.0.1:9")
    print(f"{'function':<28} {'handler ms':>10} {'baseline ms':>11} {'ratio':>6}")
    worst = 0.0
    for lid, fn in sorted(ctx.functions.items()):
        module = fn.handler.rsplit(".", 1)[0]
        env = ctx.function_environment(lid)
        base, handler = [], []
        for _ in range(repeats):
            base.append(one_run(BASELINE, env))
            handler.append(one_run(f"import {module}", env))
        b, h = statistics.median(base), statistics.median(handler)
        worst = max(worst, h / b)
        print(f"{lid:<28} {h * 1000:>10.0f} {b * 1000:>11.0f} {h / b:>6.2f}")
    verdict = "meets" if worst <= TARGET else "misses"
    print(f"worst ratio {worst:.2f} ({verdict} the target of <= {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
