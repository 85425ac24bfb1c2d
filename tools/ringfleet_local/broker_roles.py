"""Broker users per role in a local cloud's vhost: the control plane, the workers, one app user per tenant.

One shared login would let anyone holding it cancel any tenant's job or send any worker a Reconfigure. Each role
gets a RabbitMQ user of its own whose permissions let it do only its part, and the broker stamps who published
what: RabbitMQ refuses a message whose ``user_id`` property is not the publishing connection's user, so a consumer
that reads ``user_id`` knows the sender (intake maps ``app-<tenant>`` to its tenant, workers obey only the control
user). The users are made with ``rabbitmqctl`` (the management plugin is not enabled on every local broker); the
README's "Broker users" section gives an Amazon MQ operator the same users and permissions through the management
API. Deleting the vhost deletes the permissions; :func:`delete_roles` deletes the users.

Permissions (regular expressions on exchange and queue names; publishing to the default exchange is a write on
``amq.default``):

============  ===========================  ======================================  ===================================
user          configure                    write                                   read
============  ===========================  ======================================  ===================================
control       everything                   everything                              everything
worker        its mailbox queues           the default exchange (worker events),   the commands exchange (to bind) and
                                           its mailbox queues (to bind)            its mailbox queues
app-<tenant>  nothing                      the apps exchange (job messages)        nothing
============  ===========================  ======================================  ===================================

The worker user's topic permissions on the commands exchange allow no routing key for writing, a second lock on
publishing commands. An app publishes to the apps exchange, bound to the jobs queue alone: it cannot name another
queue. What the default exchange cannot restrict for a worker (naming another instance's mailbox, the jobs queue)
the consumers refuse by ``user_id``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from urllib.parse import quote

from ringfleet.contracts.broker import APPS_EXCHANGE, COMMANDS_EXCHANGE, app_user

__all__ = ["APP_USER_LIMITS", "ROLES", "BrokerRoles", "create_roles", "delete_roles"]

_COMMANDS = re.escape(COMMANDS_EXCHANGE)
#: (configure, write, read) of each role.
PERMISSIONS = {
    "control": (".*", ".*", ".*"),
    "worker": (rf"^{_COMMANDS}\..+$", rf"^(amq\.default|{_COMMANDS}\..+)$", rf"^{_COMMANDS}(\..+)?$"),
    "app": ("^$", rf"^{re.escape(APPS_EXCHANGE)}$", "^$"),
}
ROLES = tuple(PERMISSIONS)
#: What one app user may hold open at once: a client publishes on one connection and channel at a time, so these
#: leave room for many clients of a tenant, and none can take the broker's connections from the others. The worker
#: user has none: one login serves the whole fleet.
APP_USER_LIMITS = {"max-connections": 16, "max-channels": 64}


def _rabbitmqctl(*args: str) -> str:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        raise RuntimeError("rabbitmqctl is not installed here: broker users need the local RabbitMQ's own tool")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        # The password is never shown: add_user and change_password carry it.
        shown = " ".join(a for a in args[:2])
        raise RuntimeError(f"rabbitmqctl {shown} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _add_user(user: str, password: str) -> None:
    """Creates ``user``; one that exists (made by another process of the same local cloud) gets ``password`` again."""
    try:
        _rabbitmqctl("add_user", user, password)
    except RuntimeError as exc:
        if "already exists" not in str(exc):
            raise
        _rabbitmqctl("change_password", user, password)


@dataclass
class BrokerRoles:
    """The users of one vhost on one broker and their passwords; ``url(user)`` is an AMQP URL that logs in as it.

    User names are global on a broker, so each carries its vhost (``ringfleet-control@<vhost>``): two local clouds
    on one broker never share a user."""

    host: str
    vhost: str
    #: Every user's password is derived from it, so a command attached to the running local cloud (``ringfleet
    #: local credentials``) finds or creates any user with nothing more than the cloud's state file.
    seed: str = field(default_factory=lambda: secrets.token_hex(16))
    scheme: str = "amqp"
    created: set[str] = field(default_factory=set)

    @property
    def control_user(self) -> str:
        return f"ringfleet-control@{self.vhost}"

    @property
    def worker_user(self) -> str:
        return f"ringfleet-worker@{self.vhost}"

    def password(self, user: str) -> str:
        return hmac.new(self.seed.encode(), user.encode(), hashlib.sha256).hexdigest()[:32]

    def url(self, user: str) -> str:
        password = self.password(user)
        return f"{self.scheme}://{quote(user, safe='')}:{password}@{self.host}/{quote(self.vhost, safe='')}"

    def add(self, user: str, role: str) -> str:
        """Creates ``user`` (once) with ``role``'s permissions in the vhost; returns its URL."""
        if user not in self.created:
            _add_user(user, self.password(user))
            self.created.add(user)
            _rabbitmqctl("set_permissions", "-p", self.vhost, user, *PERMISSIONS[role])
            if role == "worker":
                _rabbitmqctl("set_topic_permissions", "-p", self.vhost, user, COMMANDS_EXCHANGE, "^$", ".*")
            if role == "app":
                _rabbitmqctl("set_user_limits", user, json.dumps(APP_USER_LIMITS))
        return self.url(user)

    def role_url(self, role: str, tenant: str | None = None) -> str:
        """The URL of ``role``'s user; an app user is ``tenant``'s, created on first use."""
        if role == "control":
            return self.url(self.control_user)
        if role == "worker":
            return self.url(self.worker_user)
        if role != "app" or not tenant:
            raise ValueError(f"no broker role {role!r} (of {', '.join(ROLES)}); an app user needs its tenant")
        return self.add(app_user(tenant, self.vhost), "app")


def create_roles(broker_url: str, vhost: str, tenants: tuple[str, ...] = (), seed: str | None = None) -> BrokerRoles:
    """The control and worker users (and an app user per tenant of ``tenants``) in ``vhost`` of the broker that
    ``broker_url`` names."""
    scheme, rest = broker_url.split("://", 1)
    host = rest.rsplit("@", 1)[-1].split("/", 1)[0]
    roles = BrokerRoles(host=host, vhost=vhost, scheme=scheme)
    if seed:
        roles.seed = seed
    roles.add(roles.control_user, "control")
    roles.add(roles.worker_user, "worker")
    for tenant in tenants:
        roles.role_url("app", tenant)
    return roles


def delete_roles(roles: BrokerRoles) -> None:
    """Deletes every user of the vhost, whichever process made it (the vhost's deletion takes their permissions)."""
    listed = _rabbitmqctl("list_users", "--quiet", "--no-table-headers")
    suffix = f"@{roles.vhost}"
    for line in listed.splitlines():
        user = line.split("\t", 1)[0].strip()
        if user.endswith(suffix):
            _rabbitmqctl("delete_user", user)
    roles.created.clear()
