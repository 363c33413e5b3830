"""How to reach the lake: local folders, or S3 (and S3-compatible stores) configured like every AWS tool.

The S3 settings are the standard AWS environment variables (``AWS_ENDPOINT_URL``, ``AWS_REGION`` or
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ALLOW_HTTP``), or the same fields from the Dagster layer's ``S3Resource``. They become deltalake
storage options (with the commit-safety option of docs/DESIGN.md §2 "S3") and pyarrow ``S3FileSystem``
arguments. Secrets are never logged: ``S3Config``'s repr hides them, as ``LakeLocation``'s hides options.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow.fs as pafs

#: delta-rs commits a log entry with a conditional put (``If-None-Match: *``): the second writer of a version
#: gets 412 and retries on the next version after its conflict check. docs/DESIGN.md §2 "S3".
COMMIT_SAFETY_OPTIONS = {"AWS_CONDITIONAL_PUT": "etag"}
_TRUE = {"1", "true", "yes", "on"}


def is_s3(root: str) -> bool:
    return root.startswith(("s3://", "s3a://"))


def bucket_of(root: str) -> str:
    return root.split("://", 1)[1].split("/", 1)[0]


@dataclass(frozen=True)
class S3Config:
    """Where S3 is and who we are; empty fields fall back to the AWS SDK's own defaults (instance roles, ...)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    allow_http: bool = False

    def __repr__(self) -> str:  # never print credentials
        return f"S3Config(endpoint_url={self.endpoint_url!r}, region={self.region!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Config:
        env = os.environ if environ is None else environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        return cls(
            endpoint_url=endpoint,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            allow_http=(env.get("AWS_ALLOW_HTTP") or "").strip().lower() in _TRUE,
        )

    @property
    def plain_http(self) -> bool:
        """True for an ``http://`` endpoint (or ``AWS_ALLOW_HTTP=true``): no TLS to the store."""
        return self.allow_http or bool(self.endpoint_url and self.endpoint_url.startswith("http://"))

    def storage_options(self) -> dict[str, str]:
        """deltalake (object_store) storage options."""
        options = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region or ("us-east-1" if self.endpoint_url else None),
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
            "AWS_ALLOW_HTTP": "true" if self.plain_http else None,
        }
        return {**{k: v for k, v in options.items() if v}, **COMMIT_SAFETY_OPTIONS}


def s3_uri(root: str) -> str:
    """``s3://bucket/prefix`` (deltalake and pyarrow do not know ``s3a://``), without a trailing slash."""
    return "s3://" + root.split("://", 1)[1].rstrip("/")


def filesystem(uri: str, storage_options: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem for ``uri`` with the same endpoint and credentials as deltalake, and the path in it."""
    if not is_s3(uri):
        return pafs.FileSystem.from_uri(uri)
    options = {k.upper(): v for k, v in (storage_options or {}).items()}
    endpoint = options.get("AWS_ENDPOINT_URL")
    plain_http = (options.get("AWS_ALLOW_HTTP") or "").lower() in _TRUE
    plain_http = plain_http or bool(endpoint and endpoint.startswith("http:"))
    arguments: dict[str, object] = {
        "access_key": options.get("AWS_ACCESS_KEY_ID"),
        "secret_key": options.get("AWS_SECRET_ACCESS_KEY"),
        "session_token": options.get("AWS_SESSION_TOKEN"),
        "region": options.get("AWS_REGION"),
    }
    if endpoint:
        arguments["endpoint_override"] = endpoint.split("://", 1)[-1]
        arguments["scheme"] = "http" if plain_http else "https"
        arguments["force_virtual_addressing"] = False
    s3fs = pafs.S3FileSystem(**{k: v for k, v in arguments.items() if v is not None})
    return s3fs, s3_uri(uri).split("://", 1)[1].rstrip("/")


def describe_access_error(root: str, storage_options: Mapping[str, str], error: BaseException) -> str:
    """A message for an unreachable lake: which bucket, which endpoint, and what to check. No secrets."""
    endpoint = storage_options.get("AWS_ENDPOINT_URL") or "the AWS default endpoint"
    full = str(error)
    known = [(("NoSuchBucket",), "the bucket does not exist"),
             (("SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "403 Forbidden"),
              "the store refused the credentials")]  # fmt: skip
    reasons = [reason for codes, reason in known if any(code in full for code in codes)]
    text = reasons[0] if reasons else (full.splitlines()[0][:300] if full else type(error).__name__)
    return (
        f"cannot reach the lake at {root} (bucket '{bucket_of(root)}', endpoint {endpoint}): {text}. "
        "Check that the bucket exists and that AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the S3 resource's "
        "credentials), AWS_REGION and AWS_ENDPOINT_URL are right."
    )


#: The tuning guide's S3A settings (Hadoop names), for the Spark engine on an S3 lake.
S3A_TUNING = {
    "fs.s3a.connection.maximum": "200",
    "fs.s3a.threads.max": "64",
    "fs.s3a.max.total.tasks": "64",
    "fs.s3a.multipart.size": "128M",
    "fs.s3a.multipart.threshold": "64M",
    "fs.s3a.fast.upload": "true",
    "fs.s3a.block.size": "128M",
    "fs.s3a.connection.timeout": "200000",
    "fs.s3a.connection.establish.timeout": "5000",
}


def spark_path(uri: str) -> str:
    """The table URI as Hadoop's S3A connector names it (``s3://`` -> ``s3a://``); local paths unchanged."""
    return "s3a://" + uri.split("://", 1)[1] if is_s3(uri) else uri


def s3a_conf(storage_options: Mapping[str, str]) -> dict[str, str]:
    """Hadoop ``fs.s3a.*`` settings equivalent to the deltalake storage options, plus the guide's tuning.

    A custom endpoint gets path-style access (S3-compatible stores); SSL is off only for plain-http endpoints.
    """
    options = {k.upper(): v for k, v in storage_options.items()}
    endpoint = options.get("AWS_ENDPOINT_URL")
    plain_http = (options.get("AWS_ALLOW_HTTP") or "").lower() in _TRUE
    plain_http = plain_http or bool(endpoint and endpoint.startswith("http:"))
    conf = dict(S3A_TUNING)
    conf["fs.s3a.connection.ssl.enabled"] = "false" if plain_http else "true"
    if endpoint:
        conf["fs.s3a.endpoint"] = endpoint
        conf["fs.s3a.path.style.access"] = "true"
    if options.get("AWS_REGION"):
        conf["fs.s3a.endpoint.region"] = options["AWS_REGION"]
    if options.get("AWS_ACCESS_KEY_ID"):
        conf["fs.s3a.access.key"] = options["AWS_ACCESS_KEY_ID"]
        conf["fs.s3a.secret.key"] = options.get("AWS_SECRET_ACCESS_KEY", "")
        provider = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        if options.get("AWS_SESSION_TOKEN"):
            conf["fs.s3a.session.token"] = options["AWS_SESSION_TOKEN"]
            provider = "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
        conf["fs.s3a.aws.credentials.provider"] = provider
    return conf
