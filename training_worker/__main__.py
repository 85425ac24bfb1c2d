"""``python -m training_worker``: the instance agent, the worker container's entrypoint."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ringfleet.contracts import DEFAULT_CHECKPOINT_INTERVAL_STEPS
from training_worker.agent import Agent
from training_worker.collectives import BACKENDS
from training_worker.control import broker_url_from_secret
from training_worker.runtime.config import (
    BROKER_FROM_VARIABLE,
    RuntimeConfig,
    broker_url_from_agent,
    cache_dir,
    default_slots,
    parse_static,
)

DESCRIPTION = """\
The ringfleet instance agent: runs a job's own training script on this instance, data-parallel with a
Horovod-style ring all-reduce on torch.distributed (gloo on CPU, NCCL on GPU), checkpoints to S3 and follows
the control plane. The script is written against training_worker's public API (see the README's "Train your own
model"); everything operational is done here, beside it.

How it learns what to run and who it is:
  * by default it boots with its instance, consumes its commands from RabbitMQ (exchange ringfleet.commands) and
    waits, unplaced, for its first Reconfigure: the job, the generation, its rank, the world size, the rendezvous
    and the job's program (entrypoint and hyperparameters). It then runs the entrypoint with the hyperparameters
    as --name value arguments (and as JSON in RINGFLEET_HYPERPARAMETERS). A Python entrypoint (python script.py,
    python -m module) runs in this interpreter, already warm; anything else as a child process, or inside the
    job's image with --container-runtime (how it runs in AWS).
  * PROGRAM after -- runs that instead (standalone runs and tests), with --static-world RANK:WORLD:HOST:PORT (or
    torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT variables), --discovery-file PATH (a Reconfigure message as
    JSON, re-read when it changes) or the broker for its memberships.

What it does on the way, so the script never has to:
  * a newer Reconfigure re-forms the ring at the script's next state.commit(); a failed collective restores the
    last commit and waits for the next membership; Stop ends the script at its next commit;
  * checkpoints to s3://BUCKET/jobs/JOB/ckpt/STEP/ every checkpoint_interval_steps of the job (in the
    background), on CheckpointNow, and before leaving on SIGTERM or a spot interruption notice; a job whose
    workers all start fresh resumes from its newest checkpoint that verifies; the last step's checkpoint is
    reported final when the script's @elastic.run function returns, which ends the job;
  * publishes Heartbeat, CheckpointCompleted and WorkerFailed to the ringfleet.worker-events queue; a script that
    fails is reported with the last lines of its traceback and run again on the next Reconfigure (the job's
    max_restarts bounds that); prints a progress line every --log-every steps.

Every option falls back to an environment variable (shown in brackets), so a container needs no arguments.

Examples:
  # two ranks on this machine, no broker, no S3
  python -m training_worker --static-world 0:2:127.0.0.1:29500 -- python examples/digits/train.py --steps 100 &
  python -m training_worker --static-world 1:2:127.0.0.1:29500 -- python examples/digits/train.py --steps 100
  # as an instance boots in a fleet: wait to be placed, then run the job's program
  python -m training_worker --instance-id i-0123456789abcdef0 --broker-url amqps://...
"""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _static(value: str) -> str:
    try:
        parse_static(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return value


def _slot_count(value: str) -> int:
    count = int(value)
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least 1 (one training process per GPU), got {count}")
    return count


def _slots(given: int | None) -> int:
    """--slots, else RINGFLEET_SLOTS or the GPUs visible."""
    return given if given is not None else default_slots(os.environ)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training_worker",
        usage="python -m training_worker [options] [-- PROGRAM [ARGS...]]",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = p.add_argument_group("identity and control plane")
    who.add_argument(
        "--job-id",
        default=_env("RINGFLEET_JOB_ID"),
        help="job id [RINGFLEET_JOB_ID]; leave it out when "
        "the agent boots with its instance: its first Reconfigure names the job",
    )
    who.add_argument(
        "--instance-id", default=_env("RINGFLEET_INSTANCE_ID"), help="this instance's id [RINGFLEET_INSTANCE_ID]"
    )
    who.add_argument(
        "--broker-url",
        default=_env("RINGFLEET_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="RabbitMQ / Amazon MQ URL [RINGFLEET_BROKER_URL]; 'none' disables the control channel",
    )
    who.add_argument(
        "--static-world",
        type=_static,
        default=_env("RINGFLEET_STATIC_WORLD"),
        help="RANK:WORLD:HOST:PORT, one fixed ring, no control plane [RINGFLEET_STATIC_WORLD]",
    )
    who.add_argument("--discovery-file", type=Path, default=None, help="a Reconfigure message as JSON, re-read")
    who.add_argument(
        "--slots",
        type=_slot_count,
        default=None,
        help="training processes this instance runs for a job, one per GPU, like torchrun's --nproc-per-node "
        "[RINGFLEET_SLOTS] (default: the GPUs visible, 1 without); the Reconfigure says how many a job uses",
    )
    who.add_argument(
        "--broker-secret",
        default=_env("RINGFLEET_BROKER_SECRET_ID"),
        help="Secrets Manager id of the worker's broker login (JSON username/password), used instead of a password "
        "in --broker-url [RINGFLEET_BROKER_SECRET_ID]; needs --broker-endpoint",
    )
    who.add_argument(
        "--broker-endpoint",
        default=_env("RINGFLEET_BROKER_ENDPOINT"),
        help="the broker's endpoint without credentials, e.g. amqps://b-1234.mq.us-east-1.amazonaws.com:5671/ "
        "[RINGFLEET_BROKER_ENDPOINT]",
    )
    who.add_argument(
        "--metadata-url",
        default=_env("RINGFLEET_METADATA_URL"),
        help="instance-metadata base URL polled for the spot notice, e.g. http://169.254.169.254 "
        "[RINGFLEET_METADATA_URL]; unset: not polled",
    )
    who.add_argument(
        "--container-runtime",
        default=_env("RINGFLEET_CONTAINER_RUNTIME"),
        choices=["docker"],
        help="docker: run the job's image as a container beside this one, through the Docker engine's socket, with "
        "the job's entrypoint (training_worker/containers.py says what it gets) [RINGFLEET_CONTAINER_RUNTIME]",
    )
    ck = p.add_argument_group("checkpoints")
    ck.add_argument(
        "--bucket",
        default=_env("RINGFLEET_CHECKPOINT_BUCKET"),
        help="S3 bucket for checkpoints [RINGFLEET_CHECKPOINT_BUCKET]; unset: none (AWS_ENDPOINT_URL is honoured)",
    )
    ck.add_argument(
        "--checkpoint-cache",
        default=_env("RINGFLEET_CHECKPOINT_CACHE"),
        help="local-disk tier: keep this instance's newest checkpoints here too, and restore from them on this "
        "instance [RINGFLEET_CHECKPOINT_CACHE]; default a folder under the temporary directory, 'none' turns it off",
    )
    ck.add_argument(
        "--checkpoint-interval-steps",
        "--checkpoint-every",
        type=int,
        default=DEFAULT_CHECKPOINT_INTERVAL_STEPS,
        help="steps between S3 checkpoints when the program comes from -- (a job's program says its own "
        f"checkpoint_interval_steps) [{DEFAULT_CHECKPOINT_INTERVAL_STEPS}]",
    )
    ring = p.add_argument_group("the ring")
    ring.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="all-reduce backends tried in order: ring (ours), native (dist.all_reduce) (default ring,native)",
    )
    ring.add_argument("--wire", choices=("none", "fp16", "bf16"), default="none", help="gradient compression")
    ring.add_argument("--timeout", type=float, default=10.0, help="seconds before a silent peer counts as dead")
    ring.add_argument(
        "--join-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for every member of a new generation at its rendezvous (default 60)",
    )
    ring.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a (new) membership")
    ring.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    ring.add_argument("--heartbeat-every", type=float, default=5.0, help="seconds between Heartbeats (default 5)")
    ring.add_argument(
        "--stop-grace",
        type=float,
        default=float(_env("RINGFLEET_STOP_GRACE") or 60.0),
        help="seconds a Stop waits for the script's next step boundary before the process ends, script and all "
        "[RINGFLEET_STOP_GRACE] (default 60)",
    )
    return p


def _broker_secret(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, str] | None:
    if not args.broker_secret:
        return None
    if not args.broker_endpoint:
        parser.error("--broker-secret needs --broker-endpoint (the broker's amqps:// endpoint)")
    return args.broker_secret, args.broker_endpoint


def _broker_url(parser: argparse.ArgumentParser, args: argparse.Namespace, secret: tuple[str, str] | None) -> str:
    """The broker login: from the worker's secret; lent by the instance's agent (the agent in a job's container,
    whose job credentials cannot read the secret); or --broker-url as given."""
    if secret is not None:
        try:
            return broker_url_from_secret(*secret)
        except Exception as e:  # a missing secret, no permission, a malformed one: say which, no traceback
            parser.error(f"could not read the broker secret {secret[0]}: {e}")
    if lent := os.environ.get(BROKER_FROM_VARIABLE):
        try:
            return broker_url_from_agent(lent, os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"))
        except ValueError as e:
            parser.error(str(e))
    return str(args.broker_url)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    program: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, program = argv[:cut], argv[cut + 1 :]
        if not program:
            build_parser().error("nothing after --: give the program to run, e.g. -- python train.py")
    parser = build_parser()
    args = parser.parse_args(argv)
    secret = _broker_secret(parser, args)
    args.broker_url = _broker_url(parser, args, secret)
    no_broker = args.broker_url in (None, "", "none")
    if not args.instance_id:
        parser.error("--instance-id (or RINGFLEET_INSTANCE_ID) is needed")
    if program is None and no_broker:
        parser.error("without a broker nothing places this agent: give the program to run after --")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    config = RuntimeConfig(
        job_id=args.job_id,
        instance_id=args.instance_id,
        broker_url=None if no_broker else args.broker_url,
        bucket=args.bucket,
        metadata_url=args.metadata_url,
        static=parse_static(args.static_world) if args.static_world else None,
        discovery_file=args.discovery_file,
        backends=tuple(args.backends.split(",")),
        wire=args.wire,
        timeout_s=args.timeout,
        join_timeout_s=args.join_timeout,
        wait_s=args.wait,
        heartbeat_every_s=args.heartbeat_every,
        stop_grace_s=args.stop_grace,
        checkpoint_interval_steps=args.checkpoint_interval_steps,
        log_every=args.log_every,
        checkpoint_cache=cache_dir(
            {"RINGFLEET_INSTANCE_ID": args.instance_id, "RINGFLEET_CHECKPOINT_CACHE": args.checkpoint_cache or ""}
        ),
        broker_secret=secret,
        slots=_slots(args.slots),
        # the Reconfigure that placed it, when the instance's agent started it in the job's container
        reconfigure_json=os.environ.get("RINGFLEET_RECONFIGURE") or None,
    )
    return Agent(config, entrypoint=program, container_runtime=args.container_runtime).run()


if __name__ == "__main__":
    status = main()
    # The runtime has closed its ring and channel; leave without interpreter finalization, where gloo's native
    # threads, torn down after Python's, abort the process now and then ("terminate called without an active
    # exception") and turn a finished run's exit status 0 into SIGABRT.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
