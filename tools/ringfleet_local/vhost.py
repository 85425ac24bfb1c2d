"""A RabbitMQ virtual host of its own for each local cloud and test run, so none consumes another's messages.

Several local clouds and test sessions share one machine's broker; on the default vhost ``/`` they would share the
``ringfleet.worker-events`` and ``ringfleet.jobs`` queues, and one would take another's messages. Created with
``rabbitmqctl`` (the broker's own tool, present wherever rabbitmq-server is installed), deleted with everything in
it when the run ends.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from urllib.parse import quote

__all__ = ["create_vhost", "delete_vhost", "revoke_admin", "url_with_vhost"]


def url_with_vhost(url: str, vhost: str) -> str:
    """``url`` (amqp://user:pass@host:port/...) pointing at ``vhost`` instead."""
    scheme, rest = url.split("://", 1)
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{quote(vhost, safe='')}"


def _user(url: str) -> str:
    authority = url.split("://", 1)[1].split("/", 1)[0]
    return authority.rsplit("@", 1)[0].split(":", 1)[0] if "@" in authority else "guest"


def create_vhost(url: str, prefix: str = "ringfleet") -> tuple[str, str] | None:
    """A new vhost on the local broker that ``url`` names, with ``url``'s user allowed everything in it: (vhost,
    url of it); None when rabbitmqctl is not installed here (a remote broker: the caller keeps ``url``)."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        return None
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, _user(url), ".*", ".*", ".*"]):
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return vhost, url_with_vhost(url, vhost)


def revoke_admin(url: str, vhost: str) -> None:
    """Takes ``url``'s user's permissions in ``vhost`` away (the broker's admin login, guest here, which made it):
    once the role users exist, nobody logs in there with a login that may do everything. The local cloud's own
    tools keep using ``rabbitmqctl``, which needs no permission in the vhost."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        return
    args = ["clear_permissions", "-p", vhost, _user(url)]
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")


def delete_vhost(vhost: str) -> None:
    tool = shutil.which("rabbitmqctl")
    if tool is not None:
        subprocess.run([tool, "delete_vhost", vhost], capture_output=True, timeout=60, check=False)
