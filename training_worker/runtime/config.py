"""The runtime's configuration: the frozen ``RuntimeConfig``, read from the environment variables the agent (or the
user) sets, and written back for a process the agent launches.

It says how this process was started and never changes after: the job a worker serves once it is placed lives in
``training_worker.runtime.job``, the checkpoint interval the job's program asks for in the checkpoint tiers.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ringfleet.contracts.messages import DEFAULT_CHECKPOINT_INTERVAL_STEPS
from training_worker.collectives import BACKENDS
from training_worker.control import broker_url_from_secret
from training_worker.membership import Membership

__all__ = [
    "BROKER_FROM_VARIABLE",
    "BROKER_PATH",
    "RuntimeConfig",
    "broker_url_from_agent",
    "cache_dir",
    "default_slots",
    "parse_static",
]

#: Where a process the agent launched with job credentials gets its broker login: the agent's credentials endpoint
#: (``training_worker.agent.CredentialsEndpoint``), at this path, with the same token as its credentials.
BROKER_FROM_VARIABLE = "RINGFLEET_BROKER_FROM"
BROKER_PATH = "/broker"


def broker_url_from_agent(url: str, token: str | None) -> str:
    """The broker login the agent lends its child (``BROKER_FROM_VARIABLE``); a clear error when it does not."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": token or ""})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(json.loads(answer.read())["url"])
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        raise ValueError(f"{BROKER_FROM_VARIABLE}={url}: the agent lent no broker login ({e})") from e


def parse_static(value: str) -> Membership:
    """``RANK:WORLD:HOST:PORT`` as a fixed membership."""
    try:
        rank, world, host, port = value.split(":")
        return Membership(generation=0, rank=int(rank), world_size=int(world), rendezvous=f"{host}:{int(port)}")
    except ValueError as e:
        raise ValueError(f"expected RANK:WORLD:HOST:PORT, got {value!r}") from e


def cache_dir(env: Mapping[str, str]) -> Path | None:
    """RINGFLEET_CHECKPOINT_CACHE: the local-disk checkpoint tier's folder; "none" turns it off; by default one per
    instance under the temporary directory (an instance's own disk: it goes with the instance)."""
    value = env.get("RINGFLEET_CHECKPOINT_CACHE")
    if value == "none":
        return None
    if value:
        return Path(value)
    instance = env.get("RINGFLEET_INSTANCE_ID") or f"local-{os.getpid()}"
    return Path(tempfile.gettempdir()) / "ringfleet-checkpoints" / instance


def default_slots(env: Mapping[str, str]) -> int:
    """RINGFLEET_SLOTS: the training processes this instance offers a job; by default one per visible GPU (one on a
    machine without). The local fleet sets it from its instance type's GPU count."""
    if env.get("RINGFLEET_SLOTS"):
        return max(1, int(env["RINGFLEET_SLOTS"]))
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return float(env.get(name) or default)


def _broker_secret(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(RINGFLEET_BROKER_SECRET_ID, RINGFLEET_BROKER_ENDPOINT) when the worker logs in with its broker secret."""
    secret, endpoint = _set(env, "RINGFLEET_BROKER_SECRET_ID"), _set(env, "RINGFLEET_BROKER_ENDPOINT")
    if secret and not endpoint:
        raise ValueError("RINGFLEET_BROKER_SECRET_ID needs RINGFLEET_BROKER_ENDPOINT (amqps://host:5671/)")
    return (secret, endpoint) if secret and endpoint else None


def _set(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value; None when it is unset or empty."""
    return env.get(name) or None


def _static_world(env: Mapping[str, str]) -> Membership | None:
    """A fixed world from RINGFLEET_STATIC_WORLD or torchrun's variables; None: the agent's discovery decides."""
    if env.get("RINGFLEET_STATIC_WORLD"):
        return parse_static(env["RINGFLEET_STATIC_WORLD"])
    if all(env.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        # torchrun's variables: `torchrun --nproc-per-node 2 train.py` runs a script as is.
        return Membership(
            0,
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
            local_rank=int(env.get("LOCAL_RANK") or 0),
            local_world=int(env.get("LOCAL_WORLD_SIZE") or 1),
        )
    return None


@dataclass(frozen=True)
class RuntimeConfig:
    """What the runtime needs; ``from_env`` reads it from the variables the agent (or the user) sets."""

    #: The job named by RINGFLEET_JOB_ID; None: the worker boots unplaced, and the first Reconfigure names its job.
    job_id: str | None = None
    instance_id: str = "local"
    broker_url: str | None = None
    bucket: str | None = None
    metadata_url: str | None = None
    static: Membership | None = None
    discovery_file: Path | None = None
    backends: tuple[str, ...] = BACKENDS
    wire: str = "none"
    timeout_s: float = 10.0
    join_timeout_s: float = 60.0
    wait_s: float = 600.0
    heartbeat_every_s: float = 5.0
    checkpoint_interval_steps: int = DEFAULT_CHECKPOINT_INTERVAL_STEPS
    log_every: int = 10
    max_failures: int = 10
    #: How long a Stop may wait for the script's next step boundary before the process ends itself, its script with
    #: it (a script stuck in a step, or that never commits): the instance then serves no job any more.
    stop_grace_s: float = 60.0
    #: Where a Reconfigure came from before this process started (a container the agent launched), as JSON.
    reconfigure_json: str | None = None
    #: The local-disk tier of checkpoints (this instance's newest ones); None: S3 only.
    checkpoint_cache: Path | None = None
    #: (secret id, endpoint) when ``broker_url`` came from the worker's broker secret: a process the agent launches
    #: is handed these, never the URL with its password.
    broker_secret: tuple[str, str] | None = None
    #: This process's slot on its instance (0: the agent's own process) and the slots its instance offers (one per
    #: GPU): the agent starts ``slots - 1`` warm slot processes beside itself (``training_worker.slots``).
    local_rank: int = 0
    slots: int = 1
    #: A slot process: the control plane's commands come from its agent on standard input, never from the broker.
    relayed: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RuntimeConfig:
        env = os.environ if env is None else env
        secret = _broker_secret(env)
        broker: str | None
        if secret:
            broker = broker_url_from_secret(*secret)
        elif lent := _set(env, BROKER_FROM_VARIABLE):
            broker = broker_url_from_agent(lent, env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"))
        else:
            broker = _set(env, "RINGFLEET_BROKER_URL")
        discovery_file = _set(env, "RINGFLEET_DISCOVERY_FILE")
        return cls(
            job_id=_set(env, "RINGFLEET_JOB_ID"),
            instance_id=env.get("RINGFLEET_INSTANCE_ID") or f"local-{os.getpid()}",
            broker_url=None if broker in (None, "none") else broker,
            bucket=_set(env, "RINGFLEET_CHECKPOINT_BUCKET"),
            metadata_url=_set(env, "RINGFLEET_METADATA_URL"),
            static=_static_world(env),
            discovery_file=Path(discovery_file) if discovery_file else None,
            backends=tuple((env.get("RINGFLEET_BACKENDS") or ",".join(BACKENDS)).split(",")),
            wire=env.get("RINGFLEET_WIRE") or "none",
            timeout_s=_float(env, "RINGFLEET_TIMEOUT", 10.0),
            join_timeout_s=_float(env, "RINGFLEET_JOIN_TIMEOUT", 60.0),
            wait_s=_float(env, "RINGFLEET_WAIT", 600.0),
            heartbeat_every_s=_float(env, "RINGFLEET_HEARTBEAT_EVERY", 5.0),
            stop_grace_s=_float(env, "RINGFLEET_STOP_GRACE", 60.0),
            checkpoint_interval_steps=int(
                env.get("RINGFLEET_CHECKPOINT_INTERVAL_STEPS") or DEFAULT_CHECKPOINT_INTERVAL_STEPS
            ),
            log_every=int(env.get("RINGFLEET_LOG_EVERY") or 10),
            reconfigure_json=_set(env, "RINGFLEET_RECONFIGURE"),
            checkpoint_cache=cache_dir(env),
            broker_secret=secret,
            local_rank=int(env.get("RINGFLEET_SLOT") or 0),
            slots=default_slots(env),
            relayed=env.get("RINGFLEET_SLOT_RELAY") == "1",
        )

    def environment(self) -> dict[str, str]:
        """The variables ``from_env`` reads back into this configuration (for a process the agent launches)."""
        env = {
            "RINGFLEET_INSTANCE_ID": self.instance_id,
            "RINGFLEET_BROKER_URL": "none" if self.broker_url is None or self.broker_secret else self.broker_url,
            "RINGFLEET_BACKENDS": ",".join(self.backends),
            "RINGFLEET_WIRE": self.wire,
            "RINGFLEET_TIMEOUT": str(self.timeout_s),
            "RINGFLEET_JOIN_TIMEOUT": str(self.join_timeout_s),
            "RINGFLEET_WAIT": str(self.wait_s),
            "RINGFLEET_HEARTBEAT_EVERY": str(self.heartbeat_every_s),
            "RINGFLEET_STOP_GRACE": str(self.stop_grace_s),
            "RINGFLEET_CHECKPOINT_INTERVAL_STEPS": str(self.checkpoint_interval_steps),
            "RINGFLEET_LOG_EVERY": str(self.log_every),
            "RINGFLEET_SLOT": str(self.local_rank),
            "RINGFLEET_SLOTS": str(self.slots),
            "RINGFLEET_SLOT_RELAY": "1" if self.relayed else "0",
        }
        optional = {
            "RINGFLEET_JOB_ID": self.job_id,
            "RINGFLEET_CHECKPOINT_BUCKET": self.bucket,
            "RINGFLEET_METADATA_URL": self.metadata_url,
            "RINGFLEET_DISCOVERY_FILE": str(self.discovery_file) if self.discovery_file else None,
            "RINGFLEET_RECONFIGURE": self.reconfigure_json,
            "RINGFLEET_CHECKPOINT_CACHE": str(self.checkpoint_cache) if self.checkpoint_cache else "none",
        }
        if self.broker_secret is not None:
            optional["RINGFLEET_BROKER_SECRET_ID"], optional["RINGFLEET_BROKER_ENDPOINT"] = self.broker_secret
        if self.static is not None:
            s = self.static
            optional["RINGFLEET_STATIC_WORLD"] = f"{s.rank}:{s.world_size}:{s.rendezvous}"
        return {**env, **{k: v for k, v in optional.items() if v}}
