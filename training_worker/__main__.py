"""``python -m training_worker``: the container entrypoint."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from training_worker.collectives import BACKENDS
from training_worker.elastic import Membership
from training_worker.worker import Worker, WorkerConfig

DESCRIPTION = """\
A ringfleet training worker: trains a digits classifier data-parallel with a Horovod-style ring all-reduce
on torch.distributed (gloo on CPU), checkpoints to S3 and follows the control plane.

How it learns who it is:
  * by default it consumes its commands from RabbitMQ (exchange ringfleet.commands, routing keys
    <job>.<instance> and <job>.all), prints "control channel ready" once it is listening (commands sent before
    are not seen) and waits for its first Reconfigure: generation, its rank, the world size and the rendezvous
    host:port (and, when the job restarts from S3, the checkpoint to restore). A Reconfigure of a newer
    generation makes every rank leave the ring at the same step boundary and re-form it; an older one is
    ignored. A generation that leaves out a worker that has not trained yet keeps it waiting as a spare; one
    that leaves out a member ends that member's run. Stop ends the run at the next step boundary.
    Without --job-id (a container that boots with its instance, before the fleet scaler places it) it waits
    in its instance's mailbox for as long as it takes and serves the job its first Reconfigure names.
  * --static-world RANK:WORLD:HOST:PORT skips the control plane (standalone runs).
  * --discovery-file PATH reads a Reconfigure message (JSON) from a file and re-reads it when it changes.

What it does on the way:
  * commits its state in memory every --commit-every steps; when a peer dies it restores that commit and waits
    for the next membership (the survivors), instead of starting over;
  * checkpoints to s3://BUCKET/jobs/JOB/ckpt/STEP/ every --checkpoint-every steps in the background, on
    CheckpointNow, and before leaving on SIGTERM or a spot interruption notice (then exits 0 once the checkpoint
    is in S3, while the other ranks wait for the next Reconfigure); at start it resumes from the newest
    checkpoint that verifies;
  * publishes Heartbeat and CheckpointCompleted to the ringfleet.worker-events queue, and prints one progress
    line every --log-every steps: step, loss, samples/s, world size, rank, generation.

Every option falls back to an environment variable (shown in brackets), so a container needs no arguments.

Example (two ranks, no broker, no S3):
  python -m training_worker --job-id demo --instance-id i-00000000000000001 --broker-url none \\
      --static-world 0:2:127.0.0.1:29500 &
  python -m training_worker --job-id demo --instance-id i-00000000000000002 --broker-url none \\
      --static-world 1:2:127.0.0.1:29500
"""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def parse_static(value: str) -> Membership:
    try:
        rank, world, host, port = value.split(":")
        return Membership(generation=0, rank=int(rank), world_size=int(world), rendezvous=f"{host}:{int(port)}")
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected RANK:WORLD:HOST:PORT, got {value!r}") from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training_worker",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = p.add_argument_group("identity and control plane")
    who.add_argument(
        "--job-id",
        default=_env("RINGFLEET_JOB_ID"),
        help="job id [RINGFLEET_JOB_ID]; leave it out when the worker boots with its instance: it then waits to be "
        "placed and serves the job its first Reconfigure names",
    )
    who.add_argument(
        "--instance-id", default=_env("RINGFLEET_INSTANCE_ID"), help="this instance's id [RINGFLEET_INSTANCE_ID]"
    )
    who.add_argument(
        "--broker-url",
        default=_env("RINGFLEET_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="RabbitMQ / Amazon MQ URL [RINGFLEET_BROKER_URL]; 'none' disables the control channel",
    )
    who.add_argument("--static-world", type=parse_static, default=None, help="RANK:WORLD:HOST:PORT, no control plane")
    who.add_argument("--discovery-file", type=Path, default=None, help="a Reconfigure message as JSON, re-read")
    who.add_argument(
        "--metadata-url",
        default=_env("RINGFLEET_METADATA_URL"),
        help="instance-metadata base URL polled for the spot notice, e.g. http://169.254.169.254 "
        "[RINGFLEET_METADATA_URL]; unset: not polled",
    )
    ck = p.add_argument_group("checkpoints")
    ck.add_argument(
        "--bucket",
        default=_env("RINGFLEET_CHECKPOINT_BUCKET"),
        help="S3 bucket for checkpoints [RINGFLEET_CHECKPOINT_BUCKET]; unset: none (AWS_ENDPOINT_URL is honoured)",
    )
    ck.add_argument("--checkpoint-every", type=int, default=50, help="steps between S3 checkpoints (default 50)")
    ck.add_argument("--commit-every", type=int, default=5, help="steps between in-memory commits (default 5)")
    tr = p.add_argument_group("training")
    tr.add_argument("--steps", type=int, default=200, help="train until this global step (default 200)")
    tr.add_argument("--global-batch", type=int, default=96, help="samples per step over all ranks (default 96)")
    tr.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9)")
    tr.add_argument("--seed", type=int, default=0, help="model init and data order")
    tr.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="all-reduce backends tried in order: ring (ours), native (dist.all_reduce) (default ring,native)",
    )
    tr.add_argument("--wire", choices=("none", "fp16", "bf16"), default="none", help="gradient compression")
    tr.add_argument("--backward-passes-per-step", type=int, default=1, help="gradient accumulation")
    tr.add_argument("--timeout", type=float, default=10.0, help="seconds before a silent peer counts as dead")
    tr.add_argument(
        "--join-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for every member of a new generation at its rendezvous (default 60)",
    )
    tr.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a (new) membership")
    tr.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    tr.add_argument("--heartbeat-every", type=float, default=5.0, help="seconds between Heartbeats (default 5)")
    tr.add_argument("--step-delay", type=float, default=0.0, help="sleep per step, to pace demos")
    tr.add_argument("--final-state", type=Path, default=None, help="write the final model state_dict here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    no_broker = args.broker_url in (None, "", "none")
    if not args.instance_id:
        build_parser().error("--instance-id (or RINGFLEET_INSTANCE_ID) is needed")
    if not args.job_id and no_broker:
        build_parser().error("--job-id (or RINGFLEET_JOB_ID) is needed without a broker: nothing would place it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    config = WorkerConfig(
        job_id=args.job_id,
        instance_id=args.instance_id,
        steps=args.steps,
        global_batch=args.global_batch,
        lr=args.lr,
        seed=args.seed,
        commit_every=args.commit_every,
        checkpoint_every=args.checkpoint_every,
        backends=tuple(args.backends.split(",")),
        wire=args.wire,
        backward_passes_per_step=args.backward_passes_per_step,
        timeout_s=args.timeout,
        join_timeout_s=args.join_timeout,
        wait_s=args.wait,
        log_every=args.log_every,
        heartbeat_every_s=args.heartbeat_every,
        broker_url=None if no_broker else args.broker_url,
        bucket=args.bucket,
        metadata_url=args.metadata_url,
        discovery_file=args.discovery_file,
        static=args.static_world,
        final_state=args.final_state,
        step_delay_s=args.step_delay,
    )
    Worker(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
