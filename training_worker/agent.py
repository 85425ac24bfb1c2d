"""The instance agent: boots with its instance, learns its job from the first Reconfigure, runs the job's program.

A Python entrypoint (``python script.py ...``, ``python -m module ...``, ``script.py ...``) runs inside the agent's
own interpreter, already warm (torch imported, control channel connected), so a worker placed on a job trains within
a second; anything else (or ``--container-runtime``, how it runs in AWS) runs as a child process, which gets this
runtime's configuration and the Reconfigure that placed it through environment variables. The job's
hyperparameters are passed both as ``--name value`` arguments and as JSON in ``RINGFLEET_HYPERPARAMETERS``
(SageMaker's habit).

When the script fails (raises, exits non-zero, never calls ``training_worker.init()``, or its entrypoint does not
exist), the agent reports ``WorkerFailed(scope="script")`` with the last lines of the traceback and waits for the
next Reconfigure to run it again: the control plane counts failures against the job's ``max_restarts`` and ends it
FAILED past them. Membership changes never count: they happen inside the script's ``@elastic.run``.

Checkpoints are written with the job's own credentials: given WorkerJobRole's ARN (``RINGFLEET_JOB_ROLE_ARN``, the
stack's ``WorkerJobRoleArn``), the agent assumes it once the first Reconfigure names the job, with a session policy
that allows writing under ``jobs/<job>/`` only (``training_worker.checkpoint.JobCredentials``); the instance role
itself writes no checkpoint. A child process or container gets the same credentials from a loopback endpoint of the
agent, the way ECS serves a task's role (``AWS_CONTAINER_CREDENTIALS_FULL_URI``). In the local cloud moto does not
enforce IAM, but the role is assumed through moto's STS all the same.
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import secrets
import shlex
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TextIO

from ringfleet.contracts import parse_message
from ringfleet.contracts.messages import Program, Reconfigure
from ringfleet.contracts.training import EVENTS_FILE_VARIABLE
from training_worker import runtime as _rt
from training_worker.checkpoint import INSTANCE_CREDENTIALS, JobCredentials
from training_worker.containers import ContainerFailed, JobContainer, remove_leftovers
from training_worker.runtime import Runtime, RuntimeConfig, Stopped
from training_worker.runtime.config import BROKER_FROM_VARIABLE, BROKER_PATH
from training_worker.slots import SlotProcesses

__all__ = ["Agent", "CredentialsEndpoint", "ScriptFailed", "command_line"]

log = logging.getLogger("training_worker.agent")

#: Lines of a failed script's traceback (or output) the control plane gets.
TRACEBACK_LINES = 12


class ScriptFailed(Exception):
    """The job's script failed; the message names the cause and ends with the last lines of its traceback."""


def _argument(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def command_line(program: Program) -> list[str]:
    """The entrypoint with the hyperparameters appended as ``--name value``."""
    args = list(program.entrypoint)
    for name, value in program.hyperparameters.items():
        args += [f"--{name}", _argument(value)]
    return args


_PYTHONS = {"python", "python3", f"python3.{sys.version_info.minor}", sys.executable}


@dataclass(frozen=True)
class _PythonTarget:
    kind: str  # "path" or "module"
    target: str
    argv: list[str]


def _python_target(argv: list[str]) -> _PythonTarget | None:
    """How to run ``argv`` in this interpreter, or None when it is not a plain Python entrypoint."""
    if argv and (argv[0] in _PYTHONS or Path(argv[0]).name in _PYTHONS):
        rest = argv[1:]
        if len(rest) >= 2 and rest[0] == "-m":
            return _PythonTarget("module", rest[1], [rest[1], *rest[2:]])
        if rest and not rest[0].startswith("-"):
            return _PythonTarget("path", rest[0], rest)
        return None
    if argv and argv[0].endswith(".py"):
        return _PythonTarget("path", argv[0], argv)
    return None


def _tail(text: str, lines: int = TRACEBACK_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _slots_placed(config: RuntimeConfig) -> RuntimeConfig:
    """An agent started already placed (in a job's container: the Reconfigure it is handed) starts as many slots as
    the job asks of its instance, not one per GPU it sees."""
    if config.reconfigure_json is None or config.local_rank != 0:
        return config
    placed = parse_message(config.reconfigure_json)
    if not isinstance(placed, Reconfigure) or config.instance_id not in placed.ranks:
        return config
    return replace(config, slots=min(config.slots, placed.slots_of(config.instance_id)))


def _show(stream: TextIO) -> Callable[[str], None]:
    """Writes a job container's output through to this agent's own, as it comes."""

    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


class CredentialsEndpoint:
    """Serves ``JobCredentials`` on 127.0.0.1 to the agent's child (process or ``--network=host`` container), as ECS
    serves a task's role: botocore's container provider reads them, token-checked, and fetches them anew before they
    expire.

    With ``broker_url`` (the agent's login, read from its broker secret with the instance's credentials) it also
    serves that at ``/broker`` to the same token: the child's job credentials cannot read the secret, and the login
    never sits in the child's environment or its container's configuration (``docker inspect``)."""

    def __init__(self, credentials: JobCredentials, broker_url: str | None = None) -> None:
        token = secrets.token_urlsafe(32)

        class Serve(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not secrets.compare_digest(self.headers.get("Authorization", ""), token):
                    self.send_error(403, "wrong or missing authorization token")
                    return
                if self.path == BROKER_PATH:
                    if broker_url is None:
                        self.send_error(404, "this agent lends no broker login")
                        return
                    body = json.dumps({"url": broker_url}).encode()
                else:
                    body = json.dumps(credentials.current()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("credentials endpoint: " + format, *args)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Serve)
        threading.Thread(target=self.server.serve_forever, name="job-credentials", daemon=True).start()
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        #: What the child's environment gets.
        self.environment = {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{base}/",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
            **({BROKER_FROM_VARIABLE: f"{base}{BROKER_PATH}"} if broker_url else {}),
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Agent:
    """Runs the job's program on this instance, again after each failure, until it ends or the worker leaves."""

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        entrypoint: list[str] | None = None,
        container_runtime: str | None = None,
        job_role_arn: str | None = None,
    ) -> None:
        config = _slots_placed(config)
        self.config = config
        self.entrypoint = entrypoint
        self.container_runtime = container_runtime
        #: WorkerJobRole, assumed for the job's checkpoints; None (no RINGFLEET_JOB_ROLE_ARN): the process's own
        #: credentials write them (a laptop, a test without the stack).
        self.job_role_arn = job_role_arn or os.environ.get("RINGFLEET_JOB_ROLE_ARN") or None
        self.credentials: JobCredentials | None = None
        self._endpoint: CredentialsEndpoint | None = None
        self.runtime = _rt.install(Runtime(config))
        #: The job's container while it runs (``--container-runtime docker``): SIGTERM and spot notices reach it.
        self._container: JobContainer | None = None
        if container_runtime:
            if container_runtime != "docker":
                raise SystemExit(f"--container-runtime {container_runtime!r}: only 'docker' (the Docker engine's API)")
            self.runtime.notices.on_leave(self._pass_on_leave)
        #: The instance's other slots (one process per GPU beyond this one), started warm now; None: one slot. With a
        #: container runtime the agent in the job's container starts them (``training_worker.containers``).
        self.slots: SlotProcesses | None = None
        if config.slots > 1 and config.local_rank == 0 and config.static is None and not container_runtime:
            self.slots = SlotProcesses(config, entrypoint, self._slot_died)
            self.slots.start()
            self.runtime.notices.forward(self.slots.relay)

    def program(self) -> Program:
        """The program given on the command line, or the one the first Reconfigure names (waiting for it)."""
        if self.entrypoint is not None:
            return Program(
                image="local",
                entrypoint=self.entrypoint,
                checkpoint_interval_steps=self.config.checkpoint_interval_steps,
            )
        commands = self.runtime.ring.commands
        if commands is None:
            raise SystemExit("nothing to run: give an entrypoint after -- or a broker to be placed through")
        while commands.latest is None or commands.latest.program is None:
            if commands.closed:
                raise Stopped("leaving before being placed")
            commands.wait(commands.generation, _rt.UNPLACED_WAIT_S)
            if commands.latest is not None and commands.latest.program is None:
                raise SystemExit(
                    f"Reconfigure of generation {commands.latest.generation} names no program: the control plane "
                    "is older than this worker"
                )
        return commands.latest.program

    def run(self) -> int:
        """Exit status: 0 when the job's program ended (trained, stopped or left), 1 when it failed for good."""
        runtime = self.runtime
        runtime.start()
        try:
            self._clear_instance()
            program = self.program()
            self.use_job_credentials()
            while True:
                try:
                    return self._run_once(program)
                except Stopped as e:
                    log.info("stopped: %s", e)
                    runtime.stopped()
                    return 0
                except ScriptFailed as e:
                    log.error("the job's script failed: %s", e)
                    runtime.ring.script_failed(str(e))
                    # A slot process has no link of its own: its agent's script failed too and reported it.
                    if not (runtime.link.connected or self.config.relayed) or runtime.ring.discovery.closed:
                        return 1
                    runtime.reset_for_rerun()
                    # The control plane restarts the job with a new generation (or stops it past max_restarts).
                    log.info(
                        "waiting for a Reconfigure newer than generation %d to run it again", runtime.ring.generation
                    )
                    if not self._await_restart():
                        return 0 if runtime.ring.discovery.closed else 1
        except Stopped as e:
            log.info("stopped: %s", e)
            return 0
        finally:
            runtime.close()
            if self.slots is not None:
                self.slots.close()
            if self._endpoint is not None:
                self._endpoint.close()

    def _clear_instance(self) -> None:
        """With a container runtime: nothing of a previous job runs beside the next (``remove_leftovers``)."""
        if not self.container_runtime:
            return
        try:
            remove_leftovers(self.config.instance_id)
        except ContainerFailed as e:
            raise SystemExit(f"--container-runtime docker: {e}") from e

    def _slot_died(self, slot: int, status: int) -> None:
        """One of this instance's slot processes died: the instance leaves the ring and is reported lost (see
        ``training_worker.slots``)."""
        why = f"slot {slot}'s process ended with status {status}"
        log.error("%s: this instance leaves the ring", why)
        self.runtime.ring.instance_lost(why)
        self.runtime.notices.leave(why)

    def use_job_credentials(self) -> None:
        """From the job's first Reconfigure on (``run`` calls this once the job is known), its checkpoints are written
        with credentials scoped to its prefix; nothing without a role or a checkpoint bucket, or once done."""
        store = self.runtime.tiers.store
        if self.job_role_arn is None or store is None or self.credentials is not None:
            return
        self.credentials = JobCredentials(self.job_role_arn, store.bucket, store.job_id, self.config.instance_id)
        store.s3 = self.credentials.s3_client()
        log.info("checkpoints of job %s are written as %s, scoped to its prefix", store.job_id, self.job_role_arn)

    def _child_credentials(self) -> dict[str, str]:
        """The child's environment for the job's credentials (none without them)."""
        if self.credentials is None:
            return {}
        if self._endpoint is None:
            lent = self.config.broker_url if self.config.broker_secret else None
            self._endpoint = CredentialsEndpoint(self.credentials, lent)
        return self._endpoint.environment

    def _await_restart(self) -> bool:
        """Waits for a generation newer than the failed one that includes this worker; False when there is none
        (Stop, SIGTERM, left out, or nothing within the wait)."""
        ring = self.runtime.ring
        deadline = time.monotonic() + self.runtime.config.wait_s
        while time.monotonic() < deadline:
            membership = ring.discovery.wait(ring.generation, max(0.0, deadline - time.monotonic()))
            if membership is not None:
                return True
            if ring.discovery.closed or ring.discovery.generation <= ring.generation:
                return False
            ring.passed_over(ring.discovery.generation)  # a generation without this worker: wait on
        return False

    def _run_once(self, program: Program) -> int:
        """Runs the program to its end: 0, or the status of a job container that ended otherwise (its own agent
        reported why). A failing script raises ScriptFailed."""
        if self.container_runtime:
            return self._run_container(program)
        argv = command_line(program)
        commands = self.runtime.ring.commands
        latest = commands.latest if commands is not None else None
        # torchrun's variables for the script's slot on this instance, for code that reads them rather than
        # training_worker.local_rank() (which reads the ring's membership).
        os.environ["LOCAL_RANK"] = str(self.config.local_rank)
        os.environ["LOCAL_WORLD_SIZE"] = str(latest.slots_of(self.config.instance_id) if latest else 1)
        os.environ["RINGFLEET_HYPERPARAMETERS"] = json.dumps(program.hyperparameters)
        os.environ["RINGFLEET_CHECKPOINT_INTERVAL_STEPS"] = str(program.checkpoint_interval_steps)
        self.runtime.tiers.checkpoint_every(program.checkpoint_interval_steps)
        target = _python_target(argv)
        if target is None:
            self._run_child(program, argv)
        else:
            self._run_in_process(target, shlex.join(argv))
        return 0

    def _run_in_process(self, target: _PythonTarget, shown: str) -> None:
        log.info("running the job's entrypoint in this interpreter: %s", shown)
        if target.kind == "path" and not Path(target.target).is_file():
            raise ScriptFailed(
                f"the entrypoint's script does not exist: {target.target} (in {shown!r}; the agent runs in "
                f"{Path.cwd()}, relative paths resolve there)"
            )
        saved_argv, saved_path = sys.argv, list(sys.path)
        sys.argv = list(target.argv)
        if target.kind == "path":
            sys.path.insert(0, str(Path(target.target).resolve().parent))
        try:
            if target.kind == "module":
                runpy.run_module(target.target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target.target, run_name="__main__")
        except Stopped:
            raise
        except SystemExit as e:
            if e.code not in (None, 0):
                raise ScriptFailed(f"the script exited with status {e.code} (entrypoint {shown!r})") from e
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            raise ScriptFailed(f"{type(e).__name__}: {e} (raised by {shown})\n{_tail(traceback.format_exc())}") from e
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path
        if not self.runtime.initialized:
            raise ScriptFailed(
                f"the script ended without calling training_worker.init(), so it trained nothing on the ring "
                f"(entrypoint {shown!r}): call training_worker.init() first and wrap the training loop in "
                "@training_worker.elastic.run"
            )

    def _child_environment(self, program: Program) -> dict[str, str]:
        """The variables the child's own runtime starts from: this worker's configuration, the program's settings,
        the newest Reconfigure and the credentials it is lent."""
        runtime = self.runtime
        commands = runtime.ring.commands
        latest = commands.latest if commands is not None else None
        env = {
            **runtime.config.environment(),
            "RINGFLEET_HYPERPARAMETERS": json.dumps(program.hyperparameters),
            "RINGFLEET_CHECKPOINT_INTERVAL_STEPS": str(program.checkpoint_interval_steps),
            **({"RINGFLEET_RECONFIGURE": latest.model_dump_json()} if latest is not None else {}),
            **({"RINGFLEET_JOB_ID": runtime.job.id} if runtime.job.id else {}),
            **self._child_credentials(),
        }
        if BROKER_FROM_VARIABLE in env:  # the login comes from this agent, not from the secret
            for name in ("RINGFLEET_BROKER_SECRET_ID", "RINGFLEET_BROKER_ENDPOINT"):
                env.pop(name, None)
        return env

    def _run_child(self, program: Program, argv: list[str]) -> None:
        """A non-Python entrypoint: the child runs its own runtime, so this one lets go of the control channel (one
        consumer per mailbox) until the child ends."""
        runtime = self.runtime
        env = self._child_environment(program)
        tail: deque[str] = deque(maxlen=TRACEBACK_LINES)
        log.info("running the job's entrypoint as a child process: %s", shlex.join(argv))
        inherited = {k: v for k, v in os.environ.items() if not (self.credentials and k in INSTANCE_CREDENTIALS)}
        runtime.link.detach()
        try:
            try:
                child = subprocess.Popen(
                    argv, env={**inherited, **env}, stdout=sys.stdout, stderr=subprocess.PIPE, text=True
                )
            except OSError as e:
                raise ScriptFailed(f"the entrypoint could not start: {e} ({shlex.join(argv)!r})") from e
            assert child.stderr is not None
            for line in child.stderr:
                sys.stderr.write(line)
                tail.append(line.rstrip())
            status = child.wait()
        finally:
            runtime.link.reconnect()
        if status != 0:
            raise ScriptFailed(f"the script exited with status {status} ({shlex.join(argv)!r})\n" + "\n".join(tail))
        runtime.mark_initialized()

    def _run_container(self, program: Program) -> int:
        """The job's image through the Docker engine, running the agent's program (``training_worker.containers``):
        the agent in there runs the job and reports on it; this one hands it the control channel, passes SIGTERM and
        a spot notice on, and returns the container's exit status. Without job credentials it gets this instance's
        (as a child process inherits them). A container that cannot start is a failure of the job's script."""
        import torch

        runtime, config = self.runtime, self.config
        env = self._child_environment(program)
        if self.credentials is None:
            env = {**{k: os.environ[k] for k in INSTANCE_CREDENTIALS if k in os.environ}, **env}
        shared = [config.checkpoint_cache] if config.checkpoint_cache else []
        if os.environ.get(EVENTS_FILE_VARIABLE):
            shared.append(Path(os.environ[EVENTS_FILE_VARIABLE]))
        container = JobContainer(
            program.image, env, instance_id=config.instance_id, shared=shared, gpus=torch.cuda.is_available()
        )
        log.info("running the job's image %s for %s", program.image, shlex.join(command_line(program)))
        runtime.link.detach()
        self._container = container
        try:
            status = container.run(_show(sys.stdout), _show(sys.stderr))
        except ContainerFailed as e:
            raise ScriptFailed(str(e)) from e
        finally:
            self._container = None
            runtime.link.reconnect()
        runtime.mark_initialized()
        return status

    def _pass_on_leave(self, why: str) -> None:
        if self._container is not None:
            self._container.signal("SIGTERM")
