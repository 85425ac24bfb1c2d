"""The examples and exit codes that end `ringfleet --help` and `ringfleet local --help`."""

from __future__ import annotations

__all__ = ["EPILOG"]

EPILOG = """\
examples:
  ringfleet local up                         start moto + router + fleet emulator in the background (RabbitMQ must
                                             answer); every instance the fleet scaler launches boots an agent
                                             here, in the directory `local up` ran from
  ringfleet local emit events/ec2_spot_interruption_warning.json --set detail.instance-id=i-0123456789abcdef0
  ringfleet local status                     endpoints, resources and the last deliveries
  ringfleet invoke NodeRecoveryFunction --event events/sqs_spot_interruption_warning.json
  eval "$(ringfleet local env)"; aws s3 ls   point the AWS CLI / boto3 at the local cloud
  ringfleet local down

jobs (against the local cloud when one is up, else RINGFLEET_BROKER_URL + RINGFLEET_JOBS_TABLE):
  ringfleet submit examples/digits/job.yaml         validate a job file and publish it (waits for admission)
  ringfleet status --tenant acme             a table of the tenant's jobs; `ringfleet status JOB` for one
  ringfleet cancel digits-demo --tenant acme
  ringfleet upgrade digits-demo --tenant acme --image acme/digits:2   replace its workers one at a time
  ringfleet events --tenant acme --follow    job events (admitted, started, interrupted, ...) as they happen
  ringfleet logs digits-demo --tenant acme -f   the job's agents' logs (local cloud only)

read commands (status, events, local status) take --output table|json; --debug shows a traceback on errors.

exit codes:
  0    done
  1    refused or failed: a job rejected by intake, a handler that failed, no answer within --timeout
  2    usage: an unknown option, a missing or malformed file (YAML errors give line and column), a bad --set,
       a job that fails validation (`submit --dry-run` checks one offline)
  3    nothing to talk to: no local cloud is running here and RINGFLEET_BROKER_URL is unset, or it does not answer
  130  interrupted (Ctrl-C)
"""
