"""`ringfleet demo`: spot-interrupted training end to end on the local cloud, with a report and a plot."""

from __future__ import annotations

import argparse

__all__ = ["cmd_demo", "register"]


def cmd_demo(args: argparse.Namespace) -> int:
    from ringfleet_local.demo import run_demo

    return run_demo(template=args.template, fast=args.fast, out_dir=args.out)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ringfleet demo``."""
    demo = sub.add_parser(
        "demo",
        help="spot-interrupted distributed training end to end on the local cloud, with a report and a plot",
        description="Brings the local cloud up (moto server, RabbitMQ, the event router and its handlers, the fleet "
        "emulator), submits a 3-worker training job through the client and, while it trains, injects a spot "
        "interruption warning followed by termination and a hard kill of another worker, every cloud event "
        "delivered twice. Recovery goes through the real handlers and workers. Then trains the same job "
        "uninterrupted for comparison and writes report.md and timeline.png. Exits 1 if an incident was not "
        "recovered exactly once within its loss budget or the final model differs from the uninterrupted one.",
    )
    demo.add_argument("--fast", action="store_true", help="the short scenario, under 3 minutes (what the tests run)")
    demo.add_argument("--out", default="demo-output", help="folder for report.md, timeline.png and worker logs")
    demo.add_argument("--template", default="template.yaml")
    demo.set_defaults(func=cmd_demo)
