"""The broker URL: amqps:// anywhere, plain amqp:// only to this machine or inside the local cloud."""

from __future__ import annotations

import pytest

from ringfleet.contracts.broker import broker_url, require_tls
from training_worker.control import ControlChannel

pytestmark = pytest.mark.unit


def test_the_url_built_for_amazon_mq_is_amqps_with_the_secrets_credentials() -> None:
    url = broker_url("amqps://b-1234.mq.us-east-1.amazonaws.com:5671", "ring fleet", "p@ss/word")
    assert url == "amqps://ring%20fleet:p%40ss%2Fword@b-1234.mq.us-east-1.amazonaws.com:5671"


def test_plain_amqp_to_a_remote_broker_is_refused_naming_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGFLEET_LOCAL_CLOUD", raising=False)
    with pytest.raises(ValueError, match=r"plain amqp:// to b-1234\.mq\.us-east-1\.amazonaws\.com refused.*amqps://"):
        broker_url("amqp://b-1234.mq.us-east-1.amazonaws.com:5672", "user", "secret")
    with pytest.raises(ValueError, match=r"plain amqp:// to 10\.0\.3\.7 refused"):
        require_tls("amqp://guest:guest@10.0.3.7:5672/")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "[::1]"])
def test_plain_amqp_to_this_machine_is_allowed(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGFLEET_LOCAL_CLOUD", raising=False)
    assert broker_url(f"amqp://{host}:5672/", "guest", "guest").startswith("amqp://guest:guest@")


def test_the_local_cloud_may_use_plain_amqp_to_any_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGFLEET_LOCAL_CLOUD", "1")
    assert require_tls("amqp://guest:guest@rabbitmq:5672/") == "amqp://guest:guest@rabbitmq:5672/"
    # and the flag is the local cloud's own: any other value is not it
    monkeypatch.setenv("RINGFLEET_LOCAL_CLOUD", "yes")
    with pytest.raises(ValueError, match="refused"):
        require_tls("amqp://guest:guest@rabbitmq:5672/")


def test_a_scheme_that_is_not_amqp_is_refused() -> None:
    with pytest.raises(ValueError, match=r"scheme 'http' is not amqps://"):
        require_tls("http://broker:15672/")


def test_a_worker_refuses_a_plain_remote_broker_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGFLEET_LOCAL_CLOUD", raising=False)
    with pytest.raises(ValueError, match=r"plain amqp:// to broker\.internal refused"):
        ControlChannel("amqp://u:p@broker.internal:5672/", "job", "i-1", lambda command: None)
