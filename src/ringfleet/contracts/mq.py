"""The ``aws:rmq`` event Lambda's Amazon MQ (RabbitMQ) event source passes, and an envelope for its bodies.

Powertools has a data class for this event but no parser model; these models fill that gap, field for field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails

from ringfleet.contracts.messages import Message

__all__ = [
    "RabbitMqBasicProperties",
    "RabbitMqEvent",
    "RabbitMqMessage",
    "parse_rmq_messages",
]

M = TypeVar("M")

_CAMEL = ConfigDict(defer_build=True, alias_generator=to_camel, populate_by_name=True, frozen=True)


class RabbitMqBasicProperties(BaseModel):
    """The AMQP basic properties of a message; Lambda sends null for the ones the publisher left unset."""

    model_config = _CAMEL

    content_type: str | None = None
    content_encoding: str | None = None
    #: Header values as Lambda renders them: numbers as numbers, strings as ``{"bytes": [...]}``.
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    #: As Lambda renders it, e.g. ``"Jan 1, 1970, 12:33:41 AM"``.
    timestamp: str | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None
    body_size: int = Field(ge=0)

    def amqp_headers(self) -> dict[str, Any]:
        """The headers as the publisher set them: Lambda's ``{"bytes": [...]}`` renderings back to strings (bytes
        that are not UTF-8 stay bytes), so a message passed on (to its DLQ) carries what it was sent with."""
        return {k: _header_value(v) for k, v in (self.headers or {}).items()}


def _header_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"bytes"} and isinstance(value["bytes"], list):
        raw = bytes(b & 0xFF for b in value["bytes"])
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw
    if isinstance(value, list):
        return [_header_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _header_value(v) for k, v in value.items()}
    return value


class RabbitMqMessage(BaseModel):
    """One delivered message: its properties, whether the broker delivered it before, and its base64 body."""

    model_config = _CAMEL

    basic_properties: RabbitMqBasicProperties
    redelivered: bool
    data: str

    @field_validator("data")
    @classmethod
    def _data_is_base64(cls, data: str) -> str:
        try:
            base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"data is not base64: {exc}") from exc
        return data

    @property
    def body(self) -> bytes:
        """The message body as published."""
        return base64.b64decode(self.data)


class RabbitMqEvent(BaseModel):
    """The ``aws:rmq`` event: messages grouped by ``<queue>::<virtual host>``."""

    model_config = _CAMEL

    event_source: Literal["aws:rmq"]
    event_source_arn: str = Field(pattern=r"^arn:aws[a-z-]*:mq:[a-z0-9-]+:\d{12}:broker:")
    rmq_messages_by_queue: dict[str, list[RabbitMqMessage]]

    @field_validator("rmq_messages_by_queue")
    @classmethod
    def _keys_are_queue_and_vhost(cls, groups: dict[str, list[RabbitMqMessage]]) -> dict[str, list[RabbitMqMessage]]:
        for key in groups:
            queue, sep, vhost = key.rpartition("::")
            if not sep or not queue or not vhost:
                raise ValueError(f"{key!r} is not <queue>::<virtual host>")
        return groups

    def messages(self) -> Iterator[tuple[str, RabbitMqMessage]]:
        """``(queue, message)`` for every message, in the order Lambda listed them."""
        for key, messages in self.rmq_messages_by_queue.items():
            queue = key.rpartition("::")[0]
            for message in messages:
                yield queue, message


@lru_cache(maxsize=32)
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


@overload
def parse_rmq_messages(event: Mapping[str, Any], model: type[M]) -> list[M]: ...


@overload
def parse_rmq_messages(event: Mapping[str, Any], model: object = ...) -> list[Any]: ...


def parse_rmq_messages(event: Mapping[str, Any], model: object = Message) -> list[Any]:
    """Every message body of an ``aws:rmq`` event parsed as ``model`` (a message class or union, say AppMessage).

    All bodies are checked before anything is returned; one ValidationError reports every invalid body, each
    error located as ``rmqMessagesByQueue.<queue::vhost>.<index>.data.<field>``.
    """
    parsed = RabbitMqEvent.model_validate(dict(event))
    adapter = _adapter(model)
    out: list[Any] = []
    errors: list[InitErrorDetails] = []
    for key, messages in parsed.rmq_messages_by_queue.items():
        for index, message in enumerate(messages):
            try:
                out.append(adapter.validate_json(message.body))
            except ValidationError as exc:
                where = ("rmqMessagesByQueue", key, index, "data")
                errors.extend(
                    InitErrorDetails(type=e["type"], loc=(*where, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
                    for e in exc.errors()
                )
    if errors:
        raise ValidationError.from_exception_data("RabbitMqEvent", errors)
    return out
