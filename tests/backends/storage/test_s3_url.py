"""Parsing the ``s3://`` storage URL: what is accepted, defaults, and refusals that never echo secrets."""

from __future__ import annotations

import pytest

from backends.storage.s3.url import DEFAULT_PART_SIZE, S3Location, parse_s3_url

MiB = 1024 * 1024


def test_bucket_only_takes_the_defaults() -> None:
    assert parse_s3_url("s3://my-bucket") == S3Location(bucket="my-bucket")
    assert parse_s3_url("s3://my-bucket").region == "us-east-1"
    assert parse_s3_url("s3://my-bucket").part_size == DEFAULT_PART_SIZE


def test_every_parameter_is_read() -> None:
    location = parse_s3_url(
        "s3://data.example/wml/files?endpoint=http://minio:9000/&region=eu-central-1"
        f"&part_size={16 * MiB}&concurrency=8&max_attempts=5&presign_endpoint=https://s3.example.org"
    )

    assert location == S3Location(
        bucket="data.example",
        endpoint="http://minio:9000",
        region="eu-central-1",
        prefix="wml/files/",
        part_size=16 * MiB,
        concurrency=8,
        max_attempts=5,
        presign_endpoint="https://s3.example.org",
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://ab", "bucket name"),
        ("s3://Bucket", "bucket name"),
        ("s3://bucket/../x", "key prefix"),
        ("s3://bucket?endpoint=minio:9000", "endpoint must be"),
        ("s3://bucket?endpoint=http://minio:9000/path", "bare server URL"),
        ("s3://bucket?region=EU%20west", "region"),
        ("s3://bucket?part_size=1024", "part_size must be between"),
        ("s3://bucket?part_size=big", "part_size must be an integer"),
        ("s3://bucket?concurrency=0", "concurrency must be between"),
        ("s3://bucket?region=a&region=b", "given twice"),
        ("s3://bucket?colour=blue", "unknown parameter 'colour'"),
        ("s3://bucket#frag", "fragment"),
    ],
)
def test_refusals_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_s3_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKID:hunter2@bucket",
        "s3://bucket?endpoint=http://AKID:hunter2@minio:9000",
        "s3://bucket?presign_endpoint=https://AKID:hunter2@s3.example.org",
    ],
)
def test_credentials_in_the_url_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(ValueError, match="credentials do not belong") as caught:
        parse_s3_url(url)

    assert "hunter2" not in str(caught.value)
