"""The job's own container, started by the agent as a sibling through the Docker engine (``--container-runtime
docker``, how it runs in AWS: the agent's container has the engine's socket, the job's never does).

The job's container runs the agent's own program from the job's image, ``python -m training_worker`` (``AGENT``,
given as its entrypoint, so the image's own ``ENTRYPOINT`` never swallows it): it is placed by the Reconfigure it is
handed, runs the job's entrypoint as written in the job's spec (in its warm interpreter when it is Python), starts
one slot process per GPU beside it, takes over the instance's control channel, reports a failing script and runs it
again, and ends with the job. The instance's agent meanwhile only waits for it: it passes SIGTERM and a spot notice
on, and ends when the container does. A job image is therefore any image where ``training_worker`` imports: one built
``FROM ringfleet-worker``, or one that pip installs it.

What the job's container gets, and why:

- **host networking**: the ring's rendezvous and the agent's credentials endpoint are on the instance's addresses;
- **every GPU of the instance** (``--gpus all``) when it has any, and a ``/dev/shm`` of half the instance's memory
  for NCCL and the DataLoader's workers (not ``--ipc=host``: the job's code shares no IPC namespace with the host);
- **no capabilities and no new privileges** (``--cap-drop ALL``, ``no-new-privileges``), never ``--privileged`` and
  never the Docker socket;
- **the variables its runtime needs** and nothing else of the agent's environment: the runtime's configuration, the
  Reconfigure that placed it, the job's credentials endpoint, and ``FORWARDED`` (the control plane's broker user,
  the region, the local cloud's endpoint);
- **the paths it shares with the agent** (the instance's checkpoint cache, the local cloud's training events file),
  bind-mounted at the same paths: the agent's container must see them at their host paths (docs/deploy.md);
- the labels ``ringfleet.instance`` and ``ringfleet.role=job``, so whoever ends the instance (the local fleet) finds
  it.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ringfleet.contracts.messages import CONTAINER_INSTANCE_LABEL as INSTANCE_LABEL
from ringfleet.contracts.messages import CONTAINER_ROLE_LABEL as ROLE_LABEL
from ringfleet.contracts.training import EVENTS_FILE_VARIABLE

__all__ = ["AGENT", "FORWARDED", "ContainerFailed", "JobContainer", "engine", "remove_leftovers"]

log = logging.getLogger("training_worker.containers")

#: The agent's variables a job container gets as they are (when set).
FORWARDED = (
    "RINGFLEET_CONTROL_USER",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "OMP_NUM_THREADS",
    "PYTHONUNBUFFERED",
    EVENTS_FILE_VARIABLE,
)
#: What the job's container runs: this agent's program, from the job's image.
AGENT = ("python", "-m", "training_worker")
_ECR = re.compile(r"^(\d+)\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/")


class ContainerFailed(Exception):
    """The job's container could not be started (no engine, no image): the message says which and how to fix it."""


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 2**31


def _ecr_auth(image: str) -> dict[str, str] | None:
    """Docker's login for an ECR image, from the instance role (``ecr:GetAuthorizationToken``); None elsewhere."""
    found = _ECR.match(image)
    if found is None:
        return None
    import boto3

    data = boto3.client("ecr", region_name=found.group(2)).get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    return {"username": user, "password": password}


def engine() -> Any:
    """The Docker engine's client (``DOCKER_HOST``, or the socket); ContainerFailed, saying how to fix it, when none
    answers."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise ContainerFailed(
            f"no Docker engine answers ({e}): the agent's container needs the engine's socket "
            "(-v /var/run/docker.sock:/var/run/docker.sock --group-add <its group>, docs/deploy.md)"
        ) from e
    return client


def remove_leftovers(instance_id: str, client: Any | None = None) -> list[str]:
    """Removes the job containers of ``instance_id`` that an agent before this one left behind (it died, or was
    stopped, with its job still running): nothing of a previous job runs beside the next. Returns their ids."""
    client = client or engine()
    labels = [f"{INSTANCE_LABEL}={instance_id}", f"{ROLE_LABEL}=job"]
    removed = []
    for container in client.containers.list(all=True, filters={"label": labels}):
        container.remove(force=True)
        removed.append(container.short_id)
    if removed:
        log.warning("removed %d job container(s) a previous agent of this instance left: %s", len(removed), removed)
    return removed


class JobContainer:
    """One run of the job's image: ``run`` starts it, follows its output until it ends and returns its exit status."""

    def __init__(
        self,
        image: str,
        env: Mapping[str, str],
        *,
        instance_id: str,
        shared: Sequence[Path] = (),
        gpus: bool = False,
        client: Any | None = None,
    ) -> None:
        self.image, self.instance_id = image, instance_id
        self.env = {**{k: os.environ[k] for k in FORWARDED if os.environ.get(k)}, **env}
        self.shared = list(dict.fromkeys(shared))
        self.gpus = gpus
        self._client = client
        self.container: Any = None

    def _engine(self) -> Any:
        if self._client is None:
            self._client = engine()
        return self._client

    def _image(self, engine: Any) -> None:
        import docker

        try:
            engine.images.get(self.image)
        except docker.errors.ImageNotFound:
            log.info("pulling the job's image %s", self.image)
            try:
                engine.images.pull(self.image, auth_config=_ecr_auth(self.image))
            except docker.errors.APIError as e:
                raise ContainerFailed(
                    f"the job's image {self.image} is not on this instance and could not be pulled: "
                    f"{e.explanation or e}"
                ) from e

    def options(self) -> dict[str, Any]:
        """The engine's ``create`` arguments (``docker run``'s flags)."""
        from docker.types import DeviceRequest, Mount

        return {
            "image": self.image,
            "entrypoint": list(AGENT),
            "command": [],
            "environment": self.env,
            "network_mode": "host",
            "shm_size": _memory_bytes() // 2,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "labels": {INSTANCE_LABEL: self.instance_id, ROLE_LABEL: "job"},
            "mounts": [Mount(target=str(p), source=str(p), type="bind") for p in self.shared],
            "device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])] if self.gpus else None,
        }

    def run(self, on_stdout: Callable[[str], None], on_stderr: Callable[[str], None]) -> int:
        import docker

        engine = self._engine()
        self._image(engine)
        try:
            self.container = engine.containers.create(**self.options())
            self.container.start()
        except docker.errors.APIError as e:
            raise ContainerFailed(f"the job's container could not start: {e.explanation or e}") from e
        log.info("the job's container %s runs %s", self.container.short_id, self.image)
        try:
            for out, err in self.container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True):
                if out:
                    on_stdout(out.decode(errors="replace"))
                if err:
                    on_stderr(err.decode(errors="replace"))
            status = int(self.container.wait()["StatusCode"])
            log.info("the job's container %s ended with status %d", self.container.short_id, status)
            return status
        finally:
            self.remove()

    def signal(self, sig: str = "SIGTERM") -> None:
        """Passes a signal on to the job's container (the agent's SIGTERM, a spot notice): its runtime leaves at the
        next step boundary."""
        import docker

        if self.container is not None:
            try:
                self.container.kill(signal=sig)
            except docker.errors.APIError as e:
                log.info("could not signal the job's container: %s", e)

    def remove(self) -> None:
        import docker

        if self.container is not None:
            try:
                self.container.remove(force=True)
            except docker.errors.APIError as e:
                log.info("could not remove the job's container: %s", e)
