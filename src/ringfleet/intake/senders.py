"""Who may send an app message: the broker user it came from, not the tenant it names (pure).

RabbitMQ refuses a message whose ``user_id`` property differs from the user of the connection that publishes it,
so ``user_id`` proves the sender where the body's ``tenant`` proves nothing. Each tenant's apps log in as that
tenant's app user (``app-<tenant>``, see ``ringfleet.contracts.broker``); the control plane's own user may speak
for any tenant (operators, the CLI on a control login). A message without ``user_id`` cannot be attributed.
"""

from __future__ import annotations

from ringfleet.contracts.broker import tenant_of_user

__all__ = ["check_sender"]


def check_sender(tenant: str, user: str | None, control_user: str | None) -> str | None:
    """None when broker user ``user`` may send a message for ``tenant``; otherwise why not."""
    if not user:
        return "the message has no user_id: the broker cannot vouch for its sender (publish with user_id set)"
    if control_user is not None and user == control_user:
        return None
    sender = tenant_of_user(user)
    if sender is None:
        return f"broker user {user!r} is no tenant's app user: it may not send job messages"
    if sender != tenant:
        return f"broker user {user!r} sends for tenant {sender!r}, not for {tenant!r}"
    return None
