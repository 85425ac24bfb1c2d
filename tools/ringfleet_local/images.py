"""The container images of the local cloud, built on this machine with no registry reachable.

Three images, each built only when what it is made of changed (its tag carries a digest of its inputs, so the
Docker engine's own store is the cache between runs):

- ``ringfleet-base:bookworm``: Debian bookworm with Python 3.11 (``debootstrap --variant=minbase``, then ``docker
  import``), standing in for ``python:3.11-slim``, which no registry here can serve;
- ``ringfleet-worker:<digest>``: ``training_worker/Dockerfile`` built ``FROM`` that base, pip installing from a
  wheelhouse staged beside ``constraints.txt`` (``pip download`` on this machine, where PyPI and the local torch wheel
  are reachable; a build has neither);
- a job image: the job's own folder copied onto the worker image, the way a user builds one (``FROM
  ringfleet-worker``, ``COPY . /job``).

The engine is the machine's ``dockerd``; ``docker_ready`` says how to start it when it is not answering.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "BASE_IMAGE",
    "DockerUnavailable",
    "base_image",
    "docker_ready",
    "job_image",
    "worker_image",
]

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "ringfleet-base:bookworm"
WORKER_REPOSITORY = "ringfleet-worker"
#: What the worker image installs besides torch: the Dockerfile's list, which the wheelhouse must cover.
WORKER_PACKAGES = (
    "zstandard",
    "scikit-learn",
    "boto3",
    "aio-pika",
    "pydantic",
    "aws-lambda-powertools[parser]",
    "docker",
)
TORCH = "torch==2.13.0"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
START_DOCKERD = "dockerd --storage-driver vfs --iptables=false --bridge=none"


class DockerUnavailable(RuntimeError):
    """No Docker engine answers: the message says how to start one."""


def _run(command: Sequence[str], *, what: str, quiet: bool = False, **kwargs: object) -> str:
    """Runs ``command``; raises RuntimeError naming ``what`` and the command's last output lines when it fails."""
    if not quiet:
        print(f"[images] {what}: {' '.join(command[:6])}{' ...' if len(command) > 6 else ''}", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{tail}")
    return str(done.stdout)


def docker_ready() -> None:
    """Raises DockerUnavailable, saying how to fix it, unless a Docker engine answers."""
    if shutil.which("docker") is None:
        raise DockerUnavailable("no docker command: install Docker (`apt-get install docker.io`)")
    done = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise DockerUnavailable(
            f"the Docker engine does not answer ({done.stderr.strip().splitlines()[-1:] or ['no output']}): start it, "
            f"as root, with `{START_DOCKERD} &` (what .ci/run does)"
        )


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def base_image() -> str:
    """``ringfleet-base:bookworm``: made once with debootstrap (about a minute), then kept by the engine."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        raise DockerUnavailable("no debootstrap to make the base image: install it (`apt-get install debootstrap`)")
    with tempfile.TemporaryDirectory(prefix="ringfleet-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            what="making the base image's root file system (debootstrap, about a minute)",
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            _run(["docker", "import", "-", BASE_IMAGE], what="importing the base image", stdin=tar.stdout)
        finally:
            tar.wait()
    return BASE_IMAGE


def _digest(paths: Iterable[Path], *extra: str, root: Path = ROOT) -> str:
    """12 hex digits of the files' names (relative to ``root``) and contents, and ``extra``: an image's tag."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    for value in extra:
        h.update(value.encode())
    return h.hexdigest()[:12]


def _worker_sources() -> list[Path]:
    """The files the worker image is made of (the Dockerfile's COPYs), without caches."""
    files = [ROOT / "training_worker" / "Dockerfile", ROOT / "constraints.txt"]
    files += [ROOT / "src" / "ringfleet" / name for name in ("__init__.py", "py.typed")]
    for folder in (ROOT / "src" / "ringfleet" / "contracts", ROOT / "training_worker"):
        files += [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(set(files))


def _stage_worker_context(context: Path) -> None:
    for path in _worker_sources():
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    wheels = context / "wheels"
    wheels.mkdir()
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--dest",
            str(wheels),
            "-c",
            str(ROOT / "constraints.txt"),
            TORCH,
            *WORKER_PACKAGES,
        ],
        what="staging the worker image's wheelhouse (pip download)",
    )


def worker_image() -> str:
    """The worker image for this checkout (``ringfleet-worker:<digest of its sources>``), built when missing, and
    also tagged ``ringfleet-worker:local``."""
    tag = f"{WORKER_REPOSITORY}:{_digest(_worker_sources(), BASE_IMAGE)}"
    if not image_exists(tag):
        base = base_image()
        with tempfile.TemporaryDirectory(prefix="ringfleet-worker-context-") as tmp:
            context = Path(tmp)
            _stage_worker_context(context)
            _run(
                [
                    "docker",
                    "build",
                    "--network=host",
                    "--build-arg",
                    f"BASE={base}",
                    "-f",
                    str(context / "training_worker" / "Dockerfile"),
                    "-t",
                    tag,
                    str(context),
                ],
                what="building the worker image (a few minutes the first time)",
            )
    _run(["docker", "tag", tag, f"{WORKER_REPOSITORY}:local"], what="tagging the worker image", quiet=True)
    return tag


def job_image(folder: Path, repository: str, *, root: Path | None = None) -> str:
    """A job's image: ``folder`` (relative to ``root``, by default this directory) copied to ``/job/<folder>`` on
    the worker image, with ``/job`` the working directory, so a job file's entrypoint (``python
    examples/digits/train.py``) is the same as on a fleet of processes started here; tagged ``<repository>:<digest>``,
    built when missing."""
    folder, root = folder.resolve(), (root or Path.cwd()).resolve()
    try:
        inside = folder.relative_to(root)
    except ValueError:
        raise ValueError(f"{folder} is not under {root}: run from the job's project") from None
    worker = worker_image()
    files = [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    tag = f"{repository}:{_digest(files, worker, str(inside), root=folder)}"
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="ringfleet-job-context-") as tmp:
        context = Path(tmp)
        shutil.copytree(folder, context / "job" / inside, ignore=shutil.ignore_patterns("__pycache__"))
        (context / "Dockerfile").write_text(f"FROM {worker}\nCOPY --chown=worker job /job\nWORKDIR /job\n")
        _run(["docker", "build", "--network=host", "-t", tag, str(context)], what=f"building the job image {tag}")
    return tag
