"""Where the lake's bytes live: the one owner of object-storage settings.

A lake URI is a local path (or ``file://``) or an object-store URI such as
``s3://bucket/prefix``. For ``s3://`` lakes the storage options (endpoint, allow_http,
keys, region) come from ``lake.storage_options`` in the config, over the standard AWS
environment variables; they are passed to every open of the lake (lancedb, pylance, Ray
tasks). Secrets never leave this process in clear: :func:`redact` / :func:`redact_text`
replace them with ``***`` wherever settings or messages are shown or recorded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from lake.errors import ConfigError

MASK = "***"

# storage option -> the AWS environment variables that give it (first set one wins)
AWS_ENV: dict[str, tuple[str, ...]] = {
    "endpoint": ("AWS_ENDPOINT", "AWS_ENDPOINT_URL"),
    "allow_http": ("AWS_ALLOW_HTTP",),
    "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "aws_session_token": ("AWS_SESSION_TOKEN",),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}

# option names (and their aliases) whose values are credentials
SECRET_KEYS = frozenset(
    {
        "aws_secret_access_key", "secret_access_key", "aws_session_token", "session_token",
        "token", "aws_access_key_id", "access_key_id",
        "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
    }
)  # fmt: skip

_KEY_ID = ("aws_access_key_id", "access_key_id")
_SECRET = ("aws_secret_access_key", "secret_access_key")


def scheme(uri: object) -> str:
    """The URI's scheme (``s3``, ``gs``, ...), ``""`` for a local path or ``file://``."""
    parsed = urlparse(str(uri))
    if parsed.scheme == "file" or len(parsed.scheme) <= 1:  # one letter: a Windows drive
        return ""
    return parsed.scheme


def is_remote(uri: object) -> bool:
    """Whether the lake at ``uri`` is on object storage rather than local disk."""
    return bool(scheme(uri))


def is_s3(uri: object) -> bool:
    """Whether ``uri`` is an S3 (or S3-compatible) URI."""
    return scheme(uri) in ("s3", "s3a", "s3+ddb")


def _cfg_get(lake_cfg: Any, key: str) -> Any:
    if lake_cfg is None:
        return None
    if isinstance(lake_cfg, Mapping):
        return lake_cfg.get(key)
    return getattr(lake_cfg, key, None)


def storage_options(lake_cfg: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The storage options of the lake configured by ``lake_cfg`` (``uri``, ``storage_options``).

    Local lakes: ``lake.storage_options`` as given (usually empty). ``s3://`` lakes: the
    AWS environment variables, overridden key by key by ``lake.storage_options``; raises
    :class:`ConfigError` when no access key and secret come from either, since the AWS
    credential chain would then ask the cloud metadata service.
    """
    uri = str(_cfg_get(lake_cfg, "uri") or "")
    given = _cfg_get(lake_cfg, "storage_options") or {}
    if hasattr(given, "items"):
        given = {str(k): str(v) for k, v in given.items() if v is not None}
    else:
        raise ConfigError(f"lake.storage_options must be a mapping, got {type(given).__name__}")
    if not is_s3(uri):
        return dict(given)
    env = os.environ if environ is None else environ
    options: dict[str, str] = {}
    for key, names in AWS_ENV.items():
        value = next((env[n] for n in names if env.get(n)), None)
        if value is not None:
            options[key] = value
    options.update(given)
    check_credentials(uri, options)
    return options


def check_credentials(uri: str, options: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` unless ``options`` carry an access key id and secret."""
    if any(options.get(k) for k in _KEY_ID) and any(options.get(k) for k in _SECRET):
        return
    raise ConfigError(
        f"lake {uri} is on S3 but no credentials were given: set lake.storage_options."
        "aws_access_key_id and lake.storage_options.aws_secret_access_key (and endpoint, "
        "allow_http, region for an S3-compatible server), or the environment variables "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, "
        "AWS_REGION); lakeloom never falls back to the cloud metadata service"
    )


def join_uri(base: object, *parts: str) -> str:
    """``base`` joined with ``parts`` by ``/``: for a URI (``s3://bucket/prefix``) without
    pathlib, which would collapse ``//``; for a local path as :class:`pathlib.Path` does."""
    if "://" not in str(base):
        from pathlib import Path

        return str(Path(str(base)).joinpath(*parts))
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def guard_metadata_service(uri: object) -> None:
    """Before opening an ``s3://`` lake, forbid the AWS metadata-service credential lookup."""
    if is_s3(uri):
        # a missing or rejected key would otherwise make the AWS SDK ask 169.254.169.254,
        # an address outside this machine (a hang of seconds, or a contact we never want)
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def redact(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``mapping`` (nested mappings too) with every secret value replaced by ``***``."""
    out: dict[str, Any] = {}
    for key, value in (mapping or {}).items():
        if str(key) in SECRET_KEYS or str(key).lower() in SECRET_KEYS:
            out[key] = MASK if value not in (None, "") else value
        elif isinstance(value, Mapping):
            out[key] = redact(value)
        else:
            out[key] = value
    return out


def redact_text(text: str, options: Mapping[str, Any] | None) -> str:
    """``text`` with every secret value of ``options`` replaced by ``***``."""
    secrets = [
        str(v)
        for k, v in (options or {}).items()
        if (str(k) in SECRET_KEYS or str(k).lower() in SECRET_KEYS) and v not in (None, "")
    ]
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def join(uri: str, *parts: str) -> str:
    """``uri`` with path ``parts`` appended (``/``-separated for every scheme)."""
    return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(uri: str, options: Mapping[str, str] | None = None) -> tuple[Any, str]:
    """A pyarrow filesystem reaching ``uri`` and the path of ``uri`` inside it.

    ``s3://`` gets an ``S3FileSystem`` built from the same storage options Lance gets
    (endpoint, keys, region); other object stores use pyarrow's defaults for their scheme.
    """
    import pyarrow.fs as pafs

    if not is_remote(uri):
        parsed = urlparse(str(uri))
        path = parsed.path if parsed.scheme == "file" else str(uri)
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    if not is_s3(uri):
        fs, path = pafs.FileSystem.from_uri(str(uri))
        return fs, path
    opts = dict(options or {})
    check_credentials(str(uri), opts)
    kwargs: dict[str, Any] = {
        "access_key": opts.get("aws_access_key_id") or opts.get("access_key_id"),
        "secret_key": opts.get("aws_secret_access_key") or opts.get("secret_access_key"),
        "session_token": opts.get("aws_session_token") or opts.get("session_token"),
        "region": opts.get("region") or opts.get("aws_region") or "us-east-1",
    }
    endpoint = opts.get("endpoint") or opts.get("aws_endpoint")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or endpoint
        kwargs["scheme"] = parsed.scheme or "https"
    parsed = urlparse(str(uri))
    return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")


def file_sizes(uri: str, options: Mapping[str, str] | None = None) -> dict[str, int]:
    """Every file under ``uri`` (recursive) -> its size in bytes, by ``/``-relative path;
    empty when ``uri`` does not exist. One listing, also on object storage."""
    import pyarrow.fs as pafs

    fs, base = filesystem(uri, options)
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    out: dict[str, int] = {}
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            out[info.path[len(base) :].lstrip("/")] = int(info.size or 0)
    return out


def remove_tree(uri: str, options: Mapping[str, str] | None = None) -> None:
    """Delete ``uri`` and everything under it (nothing when it does not exist)."""
    import pyarrow.fs as pafs

    fs, base = filesystem(uri, options)
    if fs.get_file_info(base).type != pafs.FileType.NotFound:
        fs.delete_dir(base)
