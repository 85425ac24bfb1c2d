"""A worker logs in to the broker with its Secrets Manager secret: the password is never in its arguments or in the
environment of what it launches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from training_worker.agent import CredentialsEndpoint
from training_worker.checkpoint import JobCredentials
from training_worker.runtime import RuntimeConfig
from training_worker.runtime.config import BROKER_FROM_VARIABLE

pytestmark = pytest.mark.worker

SECRET = "ringfleet/broker-worker"
ENDPOINT = "amqps://b-1234.mq.us-east-1.amazonaws.com:5671/"


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("RINGFLEET_LOCAL_CLOUD", raising=False)
    with mock_aws():
        yield boto3.client("secretsmanager")


def test_the_broker_url_comes_from_the_secret_and_only_its_id_is_handed_on(secrets: Any) -> None:
    secrets.create_secret(Name=SECRET, SecretString=json.dumps({"username": "ringfleet-worker", "password": "s3/cr:t"}))
    config = RuntimeConfig.from_env({"RINGFLEET_BROKER_SECRET_ID": SECRET, "RINGFLEET_BROKER_ENDPOINT": ENDPOINT})
    assert config.broker_url == "amqps://ringfleet-worker:s3%2Fcr%3At@b-1234.mq.us-east-1.amazonaws.com:5671/"
    # what a container the agent launches gets: the secret's id and the endpoint, not the password
    handed = config.environment()
    assert "s3" not in json.dumps(handed) and handed["RINGFLEET_BROKER_URL"] == "none"
    assert (handed["RINGFLEET_BROKER_SECRET_ID"], handed["RINGFLEET_BROKER_ENDPOINT"]) == (SECRET, ENDPOINT)
    assert RuntimeConfig.from_env(handed).broker_url == config.broker_url


def test_a_secret_without_an_endpoint_or_without_a_password_is_refused_by_name(secrets: Any) -> None:
    with pytest.raises(ValueError, match="RINGFLEET_BROKER_ENDPOINT"):
        RuntimeConfig.from_env({"RINGFLEET_BROKER_SECRET_ID": SECRET})
    secrets.create_secret(Name=SECRET, SecretString=json.dumps({"username": "ringfleet-worker"}))
    with pytest.raises(ValueError, match=f"broker secret {SECRET}: needs JSON with username and password"):
        RuntimeConfig.from_env({"RINGFLEET_BROKER_SECRET_ID": SECRET, "RINGFLEET_BROKER_ENDPOINT": ENDPOINT})


def test_plain_amqp_off_this_machine_is_refused_even_from_a_secret(secrets: Any) -> None:
    secrets.create_secret(Name=SECRET, SecretString=json.dumps({"username": "u", "password": "p"}))
    with pytest.raises(ValueError, match=r"plain amqp:// to 10\.0\.3\.7 refused"):
        RuntimeConfig.from_env(
            {"RINGFLEET_BROKER_SECRET_ID": SECRET, "RINGFLEET_BROKER_ENDPOINT": "amqp://10.0.3.7:5672/"}
        )


def test_a_child_with_job_credentials_gets_the_broker_login_from_its_agent_never_from_its_environment(
    secrets: Any,
) -> None:
    # given an agent logged in with its secret, holding a job's credentials (which may not read that secret)
    secrets.create_secret(Name=SECRET, SecretString=json.dumps({"username": "ringfleet-worker", "password": "s3/cr:t"}))
    agent = RuntimeConfig.from_env({"RINGFLEET_BROKER_SECRET_ID": SECRET, "RINGFLEET_BROKER_ENDPOINT": ENDPOINT})
    credentials = JobCredentials("arn:aws:iam::123456789012:role/WorkerJobRole", "ckpt", "job-1", "i-1")
    endpoint = CredentialsEndpoint(credentials, agent.broker_url)
    try:
        # when its child (a process, or the job's container) starts from the environment it is handed
        handed = endpoint.environment
        assert "s3" not in json.dumps(handed)
        child = RuntimeConfig.from_env(handed)
        # then the child logs in as its agent does, asking the agent with its token
        assert child.broker_url == agent.broker_url
        # and nobody without the token is lent it
        with pytest.raises(ValueError, match=f"{BROKER_FROM_VARIABLE}=.*the agent lent no broker login.*403"):
            RuntimeConfig.from_env({**handed, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "guess"})
    finally:
        endpoint.close()
