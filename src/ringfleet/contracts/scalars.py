"""Bounded scalar types shared by every contract: ids, counters and sizes that can never be absurd."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

__all__ = [
    "BUCKET_PATTERN",
    "JOB_ID_PATTERN",
    "Bucket",
    "FiniteFloat",
    "Generation",
    "InstanceId",
    "InstanceType",
    "JobId",
    "MetadataKey",
    "MetadataValue",
    "Rank",
    "Reason",
    "Sha256",
    "SizeBytes",
    "Step",
    "TenantId",
    "WorldSize",
]

#: A job id or tenant: usable as a DynamoDB key, an S3 prefix, a routing-key word and a DNS label.
JOB_ID_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
#: An S3 bucket name (the rules for general purpose buckets, without the rarely used dots-next-to-dashes cases).
BUCKET_PATTERN = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"

# Numbers are strict: a wire value of `true` or `"3"` is a bug in the sender, not a 1 or a 3.
JobId = Annotated[str, StringConstraints(strict=True, pattern=f"^{JOB_ID_PATTERN}$")]
TenantId = Annotated[str, StringConstraints(strict=True, pattern=f"^{JOB_ID_PATTERN}$")]
InstanceId = Annotated[str, StringConstraints(strict=True, pattern=r"^i-[0-9a-f]{8,17}$")]
#: An EC2 instance type such as ``g5.xlarge`` or ``p4d.24xlarge``.
InstanceType = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z][a-z0-9-]{0,15}\.[a-z0-9]{1,16}$")]
Bucket = Annotated[str, StringConstraints(strict=True, pattern=f"^{BUCKET_PATTERN}$")]
#: Lower-case hex, as hashlib's ``hexdigest()`` writes it.
Sha256 = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]
#: Free text for people (why a job was cancelled, a worker failed, a command was sent).
Reason = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=1024)]

#: Grows by one each time a job's membership changes; commands of an older generation are ignored.
Generation = Annotated[int, Field(strict=True, ge=0, le=10**9)]
#: An optimizer step (a global count, so it survives restarts and re-formed rings). Below 10**12, so that it fits
#: the twelve zero-padded digits of a checkpoint's prefix and S3 lists checkpoints in step order.
Step = Annotated[int, Field(strict=True, ge=0, lt=10**12)]
Rank = Annotated[int, Field(strict=True, ge=0, le=4095)]
WorldSize = Annotated[int, Field(strict=True, ge=1, le=4096)]
#: Up to 1 PiB: larger than any checkpoint we expect, small enough to catch a garbage value.
SizeBytes = Annotated[int, Field(strict=True, ge=0, le=2**50)]
#: NaN and infinities do not survive JSON; refusing them keeps encode/parse a round trip.
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]

#: A value of free-form metadata or a hyperparameter. Integers stay within what a JSON double holds exactly.
MetadataValue = (
    Annotated[str, StringConstraints(strict=True, max_length=4096)]
    | bool
    | Annotated[int, Field(strict=True, ge=-(2**53), le=2**53)]
    | FiniteFloat
)
#: Keys of metadata and hyperparameters.
MetadataKey = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=128)]
