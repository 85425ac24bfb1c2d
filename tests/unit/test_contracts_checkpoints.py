"""The checkpoint layout in S3 and the manifest that makes a checkpoint exist."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ringfleet.contracts import (
    MANIFEST_NAME,
    CheckpointManifest,
    ShardEntry,
    checkpoint_prefix,
    checkpoint_uri,
    encode_manifest,
    manifest_key,
    parse_checkpoint_uri,
    parse_manifest,
    parse_manifest_key,
)
from ringfleet.contracts.checkpoints import full_object_checksum, same_s3_checksum

pytestmark = pytest.mark.unit

SHA = "a" * 64
#: S3's full-object SHA-256 checksum of a shard whose sha256 is SHA, and a composite one of 3 parts.
FULL = full_object_checksum(SHA)
COMPOSITE = "n6facfMY8yDZHBEb/YG8KYrPDOTEoLmktrQhkD6PFIM=-3"


def manifest(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format_version": 1,
        "job_id": "digits-demo",
        "step": 120,
        "generation": 3,
        "world_size": 3,
        "created_at": "2025-06-02T14:05:58.401Z",
        "compression": "zstd",
        "shards": [
            {"name": "model-rank0.pt.zst", "size": 1_048_576, "sha256": SHA},
            {"name": "optimizer-rank0.pt.zst", "size": 2_097_152, "sha256": "b" * 64},
        ],
        "metadata": {"torch": "2.13.0", "epoch": 4, "lr": 0.05, "emergency": True},
    }
    data.update(changes)
    return data


def rejected(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        parse_manifest(json.dumps(data))
    return str(exc.value)


def test_a_checkpoint_lives_under_its_job_and_zero_padded_step() -> None:
    assert checkpoint_prefix("digits-demo", 120) == "jobs/digits-demo/ckpt/000000000120/"
    assert manifest_key("digits-demo", 120) == "jobs/digits-demo/ckpt/000000000120/manifest.json"
    assert checkpoint_uri("ringfleet-checkpoints-123456789012-us-east-1", "digits-demo", 120) == (
        "s3://ringfleet-checkpoints-123456789012-us-east-1/jobs/digits-demo/ckpt/000000000120/"
    )


def test_listing_order_is_step_order() -> None:
    # S3 lists keys in lexicographic order; zero padding makes that the order of steps
    steps = [7, 120, 99, 1_000_000, 0]
    assert sorted(checkpoint_prefix("j", s) for s in steps) == [checkpoint_prefix("j", s) for s in sorted(steps)]


@pytest.mark.parametrize(("job_id", "step"), [("Digits", 1), ("a/b", 1), ("", 1), ("job", -1), ("job", 10**12)])
def test_a_prefix_is_never_built_from_bad_ids(job_id: str, step: int) -> None:
    with pytest.raises(ValueError, match=r"job_id|step"):
        checkpoint_prefix(job_id, step)


def test_a_manifest_key_parses_back_to_job_and_step() -> None:
    assert parse_manifest_key("jobs/digits-demo/ckpt/000000000120/manifest.json") == ("digits-demo", 120)


@pytest.mark.parametrize(
    "key",
    [
        "jobs/digits-demo/ckpt/000000000120/model-rank0.pt.zst",  # a shard, not the manifest
        "jobs/digits-demo/ckpt/120/manifest.json",  # not zero padded
        "jobs/digits-demo/ckpt/000000000120/sub/manifest.json",
        "backup/jobs/digits-demo/ckpt/000000000120/manifest.json",
        "jobs/Digits/ckpt/000000000120/manifest.json",
        "jobs/digits-demo/ckpt/000000000120/manifest.json.tmp",
    ],
)
def test_other_keys_are_not_manifests(key: str) -> None:
    assert parse_manifest_key(key) is None


@given(job_id=st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,62}\Z"), step=st.integers(0, 10**12 - 1))
def test_keys_and_uris_round_trip(job_id: str, step: int) -> None:
    assert parse_manifest_key(manifest_key(job_id, step)) == (job_id, step)
    assert parse_checkpoint_uri(checkpoint_uri("bucket-1", job_id, step)) == ("bucket-1", job_id, step)


def test_a_manifest_round_trips_and_locates_its_shards() -> None:
    # given a manifest as a worker writes it
    written = parse_manifest(json.dumps(manifest()))
    # when it is stored and read back
    read = parse_manifest(encode_manifest(written))
    # then it is the same, and names where its shards are
    assert read == written
    assert read.key == "jobs/digits-demo/ckpt/000000000120/" + MANIFEST_NAME
    assert read.shard_key("model-rank0.pt.zst") == "jobs/digits-demo/ckpt/000000000120/model-rank0.pt.zst"
    assert read.total_size == 3 * 1_048_576
    assert read.metadata["emergency"] is True and isinstance(read.metadata["epoch"], int)


def test_a_shard_not_in_the_manifest_has_no_key() -> None:
    with pytest.raises(KeyError):
        parse_manifest(json.dumps(manifest())).shard_key("model-rank1.pt.zst")


def test_a_manifest_is_built_in_code_with_its_defaults() -> None:
    built = CheckpointManifest(
        job_id="digits-demo",
        step=1,
        generation=0,
        world_size=1,
        created_at=datetime(2025, 6, 2, tzinfo=UTC),
        shards=[ShardEntry(name="model.pt.zst", size=10, sha256=SHA)],
    )
    assert json.loads(encode_manifest(built))["format_version"] == 1
    assert built.compression == "zstd"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"format_version": 2}, "format_version"),
        ({"compression": "gzip"}, "compression"),
        ({"shards": []}, "shards"),
        ({"shards": [{"name": f"s{i}", "size": 1, "sha256": SHA} for i in range(4097)]}, "shards"),
        ({"shards": [{"name": "a", "size": 1, "sha256": SHA}] * 2}, "shards"),
        ({"shards": [{"name": "manifest.json", "size": 1, "sha256": SHA}]}, "name"),
        ({"shards": [{"name": "..", "size": 1, "sha256": SHA}]}, "name"),
        ({"shards": [{"name": "a/b", "size": 1, "sha256": SHA}]}, "name"),
        ({"shards": [{"name": "a", "size": -1, "sha256": SHA}]}, "size"),
        ({"shards": [{"name": "a", "size": 1, "sha256": SHA.upper()}]}, "sha256"),
        ({"shards": [{"name": "a", "size": 1, "sha256": "ab"}]}, "sha256"),
        ({"shards": [{"name": "a", "size": 1, "sha256": SHA, "checksum_sha256": SHA}]}, "checksum_sha256"),
        ({"shards": [{"name": "a", "size": 1, "sha256": SHA, "checksum_sha256": FULL + "-0"}]}, "checksum_sha256"),
        ({"shards": [{"name": "a", "size": 1, "sha256": SHA, "checksum_sha256": FULL + "-10001"}]}, "checksum_sha256"),
        # a full-object checksum is the sha256 itself: one that is not says two different things about the shard
        ({"shards": [{"name": "a", "size": 1, "sha256": "b" * 64, "checksum_sha256": FULL}]}, "checksum_sha256"),
        ({"created_at": "2025-06-02T14:05:58"}, "created_at"),
        ({"world_size": 0}, "world_size"),
        ({"owner": "alice"}, "owner"),
    ],
)
def test_a_malformed_manifest_is_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    assert field in rejected(manifest(**changes))


def test_a_shard_names_the_checksum_s3_keeps_full_object_or_composite_and_old_manifests_still_parse() -> None:
    # given shards uploaded in one PUT, in 3 parts, and one listed by a writer before S3 checksums
    shards = [
        {"name": "one-put", "size": 1, "sha256": SHA, "checksum_sha256": FULL},
        {"name": "three-parts", "size": 1, "sha256": "b" * 64, "checksum_sha256": COMPOSITE},
        {"name": "old-writer", "size": 1, "sha256": SHA},
    ]
    # when the manifest is read
    read = parse_manifest(json.dumps(manifest(shards=shards)))
    # then each says which kind of checksum it has, and the old one has none
    assert [(s.checksum_sha256, s.checksum_parts) for s in read.shards] == [(FULL, None), (COMPOSITE, 3), (None, None)]
    assert FULL == "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqo="


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (COMPOSITE, COMPOSITE, True),
        # S3's HeadObject may leave out a composite's part count: the digest decides
        (COMPOSITE, COMPOSITE.removesuffix("-3"), True),
        (COMPOSITE, COMPOSITE.replace("-3", "-4"), False),
        (FULL, COMPOSITE, False),
        (FULL, "", False),
        ("", "", False),
    ],
)
def test_s3_checksums_compare_by_digest_and_by_part_count_where_both_have_one(a: str, b: str, same: bool) -> None:
    assert same_s3_checksum(a, b) is same and same_s3_checksum(b, a) is same
