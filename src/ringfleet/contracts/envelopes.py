"""Powertools parser envelopes for our event shapes (apart: Powertools' envelope package is slow to import)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.parser.envelopes.base import BaseEnvelope

from ringfleet.contracts.mq import RabbitMqEvent

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parser.types import T

__all__ = ["RabbitMqEnvelope"]


class RabbitMqEnvelope(BaseEnvelope):
    """Powertools envelope: parses each message body of an ``aws:rmq`` event with the model given.

    ``parse(event=event, model=Heartbeat, envelope=RabbitMqEnvelope)`` returns one parsed body per message.
    """

    def parse(self, data: dict[str, Any] | Any | None, model: type[T]) -> list[T | None]:
        event = RabbitMqEvent.model_validate(data)
        return [self._parse(data=m.body.decode("utf-8"), model=model) for _, m in event.messages()]
