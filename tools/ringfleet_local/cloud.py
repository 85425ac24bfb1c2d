"""The local cloud: a moto server, the template's resources in it, and the router that plays Lambda."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ringfleet.core.ports import Clock
from ringfleet.intake.quotas import TenantRegistry
from ringfleet_local import warm
from ringfleet_local.broker_roles import BrokerRoles, create_roles, delete_roles
from ringfleet_local.context import CloudContext, LocalState
from ringfleet_local.provision import provision
from ringfleet_local.router import Delivery, Router
from ringfleet_local.vhost import create_vhost, delete_vhost, revoke_admin

__all__ = ["LOCAL_TENANTS", "LocalCloud", "broker_reachable", "free_port", "start_moto_server"]

log = logging.getLogger(__name__)

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"

#: The tenants a local cloud registers unless told otherwise: the examples' and the demo's (acme), and the ones the
#: tests submit as (globex, evil: another tenant; own: tests/e2e/test_your_own_script.py), each with the default
#: quotas. ``ringfleet local up --tenant NAME[:max_gpus=N,max_usd_per_hour=X]`` or ``--tenant-registry FILE``
#: registers others.
LOCAL_TENANTS = TenantRegistry.register("acme", "globex", "evil", "own")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_reachable(url: str, timeout: float = 2.0) -> bool:
    host_port = url.split("://", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    try:
        with socket.create_connection((host, int(port or 5672)), timeout=timeout):
            return True
    except OSError:
        return False


class LocalCloud:
    """Starts and stops everything; use as a context manager in tests::

    with LocalCloud(clock=ManualClock()) as cloud:
        cloud.client("events").put_events(...)
        cloud.router.wait_for(lambda ds: any(d.function == "NodeRecoveryFunction" for d in ds))
    """

    def __init__(
        self,
        template: str | Path = "template.yaml",
        *,
        broker_url: str | None = None,
        clock: Clock | None = None,
        route: bool = True,
        only_functions: set[str] | None = None,
        state_dir: str | Path | None = None,
        on_delivery: Callable[[Delivery], None] | None = None,
        stack: str = "ringfleet",
        function_env: Mapping[str, str] | None = None,
        tenants: TenantRegistry = LOCAL_TENANTS,
        schedule_speed: float = 1.0,
    ) -> None:
        self.template_path = Path(template).resolve()
        #: Neither given nor set in the environment: the machine's broker, on a vhost of this cloud's own.
        self._own_vhost = broker_url is None and not os.environ.get("RINGFLEET_BROKER_URL")
        self._vhost: str | None = None
        #: The broker users of the cloud's own vhost: the handlers log in as control, the agents as worker, apps as
        #: their tenant's user (``ringfleet local credentials``).
        self.roles: BrokerRoles | None = None
        self.broker_url = broker_url or os.environ.get("RINGFLEET_BROKER_URL", DEFAULT_BROKER_URL)
        self.clock = clock
        self.route = route
        self.only_functions = only_functions
        self.state_dir = Path(state_dir) if state_dir else None
        self.on_delivery = on_delivery
        self.stack = stack
        #: Added to every function's environment (e.g. ``TraceReplay.environment()``: the scaler checks capacity).
        self.function_env = dict(function_env or {})
        #: The tenant registry job intake runs with (the template's TenantRegistry parameter).
        self.tenants = tenants
        #: How many times as often as their rate() the template's schedules fire (1: as in AWS).
        self.schedule_speed = schedule_speed
        self._moto: warm.ProcessHandle | None = None
        self._ctx: CloudContext | None = None
        self._router: Router | None = None
        self.created: dict[str, list[str]] = {}

    @property
    def ctx(self) -> CloudContext:
        if self._ctx is None:
            raise RuntimeError("the local cloud is not started")
        return self._ctx

    @property
    def router(self) -> Router:
        if self._router is None:
            raise RuntimeError("the local cloud runs no router (route=False)")
        return self._router

    @property
    def endpoint(self) -> str:
        return self.ctx.endpoint

    def client(self, service: str) -> Any:
        return self.ctx.client(service)

    def start(self) -> LocalCloud:
        if self.route and not broker_reachable(self.broker_url):
            raise RuntimeError(
                f"RabbitMQ does not answer at {self.broker_url.split('@')[-1]}: start it with "
                "`rabbitmq-server -detached` (or set RINGFLEET_BROKER_URL)"
            )
        if self.route and self._own_vhost:
            own = create_vhost(self.broker_url, prefix=f"{self.stack}-local")
            if own is not None:
                self._vhost, admin_url = own
                self.roles = create_roles(admin_url, self._vhost)
                self.broker_url = self.roles.role_url("control")
                revoke_admin(admin_url, self._vhost)
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        try:
            # Inside the try: a template that cannot be read (TemplateError) must not leave the moto server behind.
            self._moto = start_moto_server(port)
            self._ctx = CloudContext(
                self.template_path, endpoint=endpoint, broker_url=self.broker_url, stack=self.stack
            )
            self._ctx.function_env.update(self.function_env)
            self._ctx.parameters["TenantRegistry"] = self.tenants.to_json()
            self._ctx.roles = self.roles
            self.created = provision(self._ctx)
            if self.route:
                self._router = Router(
                    self._ctx,
                    clock=self.clock,
                    on_delivery=self.on_delivery,
                    only=self.only_functions,
                    schedule_speed=self.schedule_speed,
                )
                self._router.start()
        except BaseException:
            self.stop()
            raise
        if self.state_dir is not None:
            LocalState(
                endpoint=endpoint,
                broker_url=self.broker_url,
                template=str(self.template_path),
                stack=self.stack,
                region=self._ctx.region,
                pid=os.getpid(),
                started_at=time.time(),
                broker_vhost=self.roles.vhost if self.roles else None,
                broker_seed=self.roles.seed if self.roles else None,
                tenant_registry=self.tenants.to_json(),
            ).save(self.state_dir)
        return self

    def stop(self) -> None:
        try:
            if self._router is not None:
                self._router.stop()
                self._router = None
            if self._moto is not None:
                self._moto.terminate()
                try:
                    self._moto.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._moto.kill()
                self._moto = None
            if self._vhost is not None:
                delete_vhost(self._vhost)
                self._vhost = None
            if self.roles is not None:
                delete_roles(self.roles)
        finally:
            # Last: `ringfleet local down` returns once it is gone, so nothing of the cloud (its vhost, its broker
            # users) is still being deleted, or left half deleted by whoever ends this process next.
            if self.state_dir is not None:
                (self.state_dir / "local.json").unlink(missing_ok=True)

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_moto_server(port: int) -> warm.ProcessHandle:
    """The local cloud's moto server (``ringfleet_local.moto_server``) on ``port`` of 127.0.0.1, forked from the
    warm interpreter that imported moto once (``ringfleet_local.warm``), its output discarded; returned once it
    answers (RuntimeError, with nothing left running, when it does not within 30 s)."""
    process = warm.start(
        "moto",
        "ringfleet_local.moto_server",
        ["-H", "127.0.0.1", "-p", str(port)],
        env=os.environ,
        cwd=None,
        log_path=Path(os.devnull),
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return process
        except OSError:
            time.sleep(0.1)
    if process.poll() is not None:
        raise RuntimeError("the moto server exited at start (is moto[server] installed?)")
    process.kill()
    process.wait()
    raise RuntimeError(f"the moto server did not answer at {endpoint} within 30 s")


def registry_from_options(tenants: list[str] | None, registry_file: str | None) -> TenantRegistry:
    """The registry ``ringfleet local up`` runs with: ``registry_file`` (JSON, as the TenantRegistry parameter)
    or LOCAL_TENANTS, plus each ``--tenant NAME[:max_gpus=N,max_usd_per_hour=X]`` (which replaces a tenant of the
    same name). Raises ValueError naming what is wrong."""
    from ringfleet.intake.quotas import TenantQuota

    base = LOCAL_TENANTS
    if registry_file:
        try:
            text = Path(registry_file).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the tenant registry {registry_file}: {exc.strerror}") from exc
        base = TenantRegistry.from_json(text)
    added: dict[str, TenantQuota] = {}
    for option in tenants or ():
        name, _, quotas = option.partition(":")
        fields: dict[str, object] = {}
        for pair in filter(None, quotas.split(",")):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"--tenant {option}: {pair!r} is not QUOTA=VALUE (max_gpus=8,max_usd_per_hour=20)")
            try:
                fields[key.strip()] = float(value) if key.strip() == "max_usd_per_hour" else int(value)
            except ValueError as exc:
                raise ValueError(f"--tenant {option}: {key} must be a number, not {value!r}") from exc
        added.update(TenantRegistry.from_json(json.dumps({name.strip(): fields})).tenants)
    return TenantRegistry({**base.tenants, **added})
