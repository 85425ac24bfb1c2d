"""Where the local cloud is and what the template's names resolve to there: shared by owner and attached CLIs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3

from ringfleet_local.broker_roles import BrokerRoles
from ringfleet_local.template import Function, Resolver, Template, TemplateError, load_template

__all__ = ["CloudContext", "LocalState"]

ACCOUNT = "123456789012"  # moto's default account
BROKER_ARN = "arn:aws:mq:{region}:{account}:broker:ringfleet-local:b-00000000-0000-0000-0000-000000000000"
BROKER_SECRET_NAME = "ringfleet/local/broker"
#: The workers' broker login, read by the agents from Secrets Manager as in AWS (never a password in their env).
WORKER_BROKER_SECRET_NAME = "ringfleet/local/broker-worker"


@dataclass(frozen=True)
class LocalState:
    """What a running local cloud writes to ``.ringfleet/local.json`` so other commands can attach to it."""

    endpoint: str
    broker_url: str
    template: str
    stack: str
    region: str
    pid: int
    started_at: float
    #: The broker users of the cloud's vhost (``ringfleet_local.broker_roles``): the seed of their passwords, and
    #: the vhost. None: one user for everything (a broker given by RINGFLEET_BROKER_URL).
    broker_vhost: str | None = None
    broker_seed: str | None = None
    #: The TenantRegistry parameter the cloud runs with (JSON; ``ringfleet.intake.quotas``). None: the template's.
    tenant_registry: str | None = None

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / "local.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(state_dir / "local.json")

    @classmethod
    def load(cls, state_dir: Path) -> LocalState | None:
        path = state_dir / "local.json"
        if not path.is_file():
            return None
        state = cls(**json.loads(path.read_text()))
        try:
            os.kill(state.pid, 0)
        except OSError:
            return None  # left behind by a local cloud that is gone
        return state


def _broker_host_url(broker_url: str) -> str:
    """amqp://user:pass@host:port/vhost -> amqp://host:port/vhost: credentials travel in the secret, as on Amazon MQ.

    The virtual host stays, so a local cloud on its own vhost (tests running side by side) is the one handlers use.
    """
    scheme, rest = broker_url.split("://", 1)
    host, _, vhost = rest.rsplit("@", 1)[-1].partition("/")
    return f"{scheme}://{host}/{vhost}" if vhost else f"{scheme}://{host}"


class CloudContext:
    """The template resolved against one local cloud: physical names, ARNs, URLs, function environments."""

    def __init__(
        self,
        template: Template | str | Path,
        *,
        endpoint: str,
        broker_url: str = "amqp://guest:guest@127.0.0.1:5672/",
        stack: str = "ringfleet",
        region: str = "us-east-1",
    ) -> None:
        self.template = template if isinstance(template, Template) else load_template(template)
        self.endpoint = endpoint
        self.broker_url = broker_url
        self.stack = stack
        self.region = region
        self.account = ACCOUNT
        #: Added to every function's environment (the local cloud's ``--spot-traces`` replay, for the scaler).
        self.function_env: dict[str, str] = {}
        #: The broker users of each role, when the cloud has its own vhost; None: ``broker_url`` is everyone's.
        self.roles: BrokerRoles | None = None
        #: Template parameters given to this cloud (as ``sam deploy --parameter-overrides`` would); set before the
        #: first name is resolved.
        self.parameters: dict[str, Any] = {}

    # -- broker roles ----------------------------------------------------------------------------------------
    def worker_broker_environment(self) -> dict[str, str]:
        """How an agent logs in to the broker: its secret's id and the endpoint (``provision`` stores the worker
        user's login in that secret)."""
        return {
            "RINGFLEET_BROKER_SECRET_ID": WORKER_BROKER_SECRET_NAME,
            "RINGFLEET_BROKER_ENDPOINT": _broker_host_url(self.role_broker_url("worker")),
        }

    def role_broker_url(self, role: str, tenant: str | None = None) -> str:
        """The AMQP URL of ``role`` (control, worker, app with its tenant): the handlers log in as control, the
        agents as worker, an app as its tenant's user. Without per-role users, ``broker_url`` for all."""
        if self.roles is None:
            return self.broker_url
        return self.roles.role_url(role, tenant)

    def require_registered(self, tenant: str) -> None:
        """Raises ValueError, saying how to register it, when ``tenant`` is not in the cloud's tenant registry."""
        from ringfleet.intake.quotas import TenantRegistry, unregistered

        registry = TenantRegistry.from_json(self.parameter_values().get("TenantRegistry"))
        if registry.of(tenant) is None:
            known = ", ".join(sorted(registry.tenants)) or "none"
            raise ValueError(f"{unregistered(tenant)}. Registered in this local cloud: {known}")

    @property
    def control_user(self) -> str | None:
        """The user whose commands workers obey (None: whoever publishes with the one shared login)."""
        return self.roles.control_user if self.roles is not None else None

    @classmethod
    def from_state(cls, state: LocalState) -> CloudContext:
        ctx = cls(
            state.template,
            endpoint=state.endpoint,
            broker_url=state.broker_url,
            stack=state.stack,
            region=state.region,
        )
        if state.tenant_registry is not None:
            ctx.parameters["TenantRegistry"] = state.tenant_registry
        if state.broker_vhost and state.broker_seed:
            from ringfleet_local.broker_roles import BrokerRoles

            scheme, rest = state.broker_url.split("://", 1)
            host = rest.rsplit("@", 1)[-1].split("/", 1)[0]
            ctx.roles = BrokerRoles(host=host, vhost=state.broker_vhost, seed=state.broker_seed, scheme=scheme)
        return ctx

    # -- AWS clients -------------------------------------------------------------------------------------
    @property
    def aws_environment(self) -> dict[str, str]:
        """What any process needs in its environment to talk to this local cloud with boto3."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def _session(self) -> boto3.session.Session:
        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=self.region
        )

    def client(self, service: str) -> Any:
        return self._session().client(service, endpoint_url=self.endpoint)  # type: ignore[call-overload]

    def resource(self, service: str) -> Any:
        """A boto3 resource on this local cloud (``dynamodb`` for the repositories)."""
        return self._session().resource(service, endpoint_url=self.endpoint)  # type: ignore[call-overload]

    # -- names -------------------------------------------------------------------------------------------
    @property
    def broker_arn(self) -> str:
        return BROKER_ARN.format(region=self.region, account=self.account)

    @property
    def broker_secret_id(self) -> str:
        # Secrets Manager adds 6 random characters to an ARN; the name identifies the secret just as well and is
        # known before the secret exists, so attached commands resolve the same value.
        return BROKER_SECRET_NAME

    def parameter_values(self) -> dict[str, Any]:
        """Template parameters: their defaults, with the broker ones pointed at the local RabbitMQ; a
        CommaDelimitedList's value is its list."""
        values = {name: p.get("Default") for name, p in self.template.parameters.items()}
        local = {
            "MqBrokerArn": self.broker_arn,
            "MqBrokerName": self.broker_arn.split(":")[6],
            "MqSecretArn": self.broker_secret_id,
            "WorkerBrokerSecretArn": WORKER_BROKER_SECRET_NAME,
            "MqEndpoint": _broker_host_url(self.broker_url),
        }
        values.update({k: v for k, v in local.items() if k in values})
        values.update({k: v for k, v in self.parameters.items() if k in values})
        # CloudFormation gives a CommaDelimitedList parameter's Ref as a list (Fn::Join makes it a string again).
        for name, p in self.template.parameters.items():
            value = values.get(name)
            if p.get("Type") == "CommaDelimitedList" and isinstance(value, str):
                values[name] = [item.strip() for item in value.split(",")]
        return values

    @cached_property
    def resolver(self) -> Resolver:
        pseudo = {
            "AWS::StackName": self.stack,
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
            "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{self.account}:stack/{self.stack}/local",
        }
        refs: dict[str, Any] = {**pseudo, **self.parameter_values()}
        attrs: dict[str, Any] = {}
        names_only = Resolver(dict(refs), {})
        region, account = self.region, self.account
        for lid, res in self.template.resources.items():
            props = res.get("Properties", {})
            rtype = res.get("Type", "")

            def name_of(prop: str, default: str, props: Mapping[str, Any] = props, lid: str = lid) -> str:
                value = props.get(prop)
                return str(names_only(value, f"{lid}.{prop}")) if value is not None else default

            if rtype == "AWS::S3::Bucket":
                name = name_of("BucketName", f"{self.stack}-{lid.lower()}")
                refs[lid] = name
                attrs[f"{lid}.Arn"] = f"arn:aws:s3:::{name}"
                attrs[f"{lid}.DomainName"] = f"{name}.s3.amazonaws.com"
            elif rtype == "AWS::DynamoDB::Table":
                name = name_of("TableName", f"{self.stack}-{lid}")
                refs[lid] = name
                attrs[f"{lid}.Arn"] = f"arn:aws:dynamodb:{region}:{account}:table/{name}"
                attrs[f"{lid}.StreamArn"] = f"arn:aws:dynamodb:{region}:{account}:table/{name}/stream/local"
            elif rtype == "AWS::SQS::Queue":
                name = name_of("QueueName", f"{self.stack}-{lid}")
                url = f"{self.endpoint}/{account}/{name}"
                refs[lid] = url
                attrs.update(
                    {
                        f"{lid}.Arn": f"arn:aws:sqs:{region}:{account}:{name}",
                        f"{lid}.QueueName": name,
                        f"{lid}.QueueUrl": url,
                    }
                )
            elif rtype == "AWS::Events::Rule":
                name = name_of("Name", f"{self.stack}-{lid}")
                refs[lid] = name
                attrs[f"{lid}.Arn"] = f"arn:aws:events:{region}:{account}:rule/{name}"
            elif rtype == "AWS::Serverless::Function":
                name = name_of("FunctionName", f"{self.stack}-{lid}")
                refs[lid] = name
                attrs[f"{lid}.Arn"] = f"arn:aws:lambda:{region}:{account}:function:{name}"
            elif rtype == "AWS::Serverless::LayerVersion":
                refs[lid] = f"arn:aws:lambda:{region}:{account}:layer:{self.stack}-{lid}:1"
            elif rtype == "AWS::CloudWatch::Alarm":
                name = name_of("AlarmName", f"{self.stack}-{lid}")
                refs[lid] = name
                attrs[f"{lid}.Arn"] = f"arn:aws:cloudwatch:{region}:{account}:alarm:{name}"
            else:
                refs[lid] = f"{self.stack}-{lid}"
                attrs[f"{lid}.Arn"] = f"arn:aws:local:{region}:{account}:{lid}"
        return Resolver(refs, attrs, conditions=self.template.body.get("Conditions", {}))

    def resolve(self, value: Any, where: str = "template") -> Any:
        return self.resolver(value, where)

    def queue_url_for_arn(self, arn: str) -> str:
        return f"{self.endpoint}/{self.account}/{arn.rsplit(':', 1)[-1]}"

    # -- functions ---------------------------------------------------------------------------------------
    @cached_property
    def functions(self) -> dict[str, Function]:
        return self.template.functions()

    def function(self, logical_id: str) -> Function:
        if logical_id not in self.functions:
            known = ", ".join(sorted(self.functions))
            raise TemplateError(f"no function {logical_id!r} in {self.template.path}; the template has: {known}")
        return self.functions[logical_id]

    def function_environment(self, logical_id: str) -> dict[str, str]:
        """The process environment of a function: PATH and friends, AWS pointing here, the template's variables.

        The code path is what Lambda would put on sys.path: the function's CodeUri and each layer's ContentUri
        (SAM's python builder copies a layer's ContentUri into ``python/``).
        """
        fn = self.function(logical_id)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
        env.update(self.aws_environment)
        layer_dirs = []
        for layer in fn.layers:
            lid = layer.get("Ref") if isinstance(layer, dict) else None
            res = self.template.resources.get(str(lid), {})
            if res.get("Type") == "AWS::Serverless::LayerVersion":
                layer_dirs.append(str(self.template.root / res["Properties"]["ContentUri"]))
        env["PYTHONPATH"] = os.pathsep.join([str(fn.code_uri), *layer_dirs])
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": str(self.resolve({"Ref": logical_id})),
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size),
                "AWS_LAMBDA_FUNCTION_TIMEOUT": str(fn.timeout),
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{fn.runtime}",
                "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon locally
                "RINGFLEET_LOCAL_CLOUD": "1",
                **self.function_env,
            }
        )
        for key, value in fn.environment.items():
            resolved = self.resolve(value, f"{logical_id}.Environment.{key}")
            env[key] = "" if resolved is None else str(resolved)
        return env
