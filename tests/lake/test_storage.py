"""lake.storage: where storage options come from, secrets masked, no keys -> ConfigError."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from lake.errors import ConfigError
from lake.storage import is_remote, redact, redact_text, storage_options
from lake.store import Lake

KEYS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "s3cr3t-value"}


def test_is_remote() -> None:
    assert is_remote("s3://bucket/lake")
    assert is_remote("gs://bucket/lake")
    assert not is_remote("data/lake")
    assert not is_remote("/abs/lake")
    assert not is_remote("file:///abs/lake")
    assert not is_remote("C:/lake")


def test_local_lake_ignores_the_environment() -> None:
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    assert storage_options({"uri": "data/lake", "storage_options": {}}, env) == {}


def test_s3_options_come_from_env_overridden_by_config() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "env-id",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_SESSION_TOKEN": "tok",
    }
    cfg = OmegaConf.create({"uri": "s3://b/p", "storage_options": {"aws_access_key_id": "cfg-id"}})
    assert storage_options(cfg, env) == {
        "endpoint": "http://127.0.0.1:1",
        "allow_http": "true",
        "aws_access_key_id": "cfg-id",
        "aws_secret_access_key": "env-secret",
        "aws_session_token": "tok",
        "region": "eu-west-1",
    }
    # AWS_ENDPOINT wins over AWS_ENDPOINT_URL, AWS_REGION over AWS_DEFAULT_REGION
    env |= {"AWS_ENDPOINT": "http://127.0.0.1:2", "AWS_REGION": "us-east-1"}
    got = storage_options({"uri": "s3://b/p", "storage_options": {}}, env)
    assert (got["endpoint"], got["region"]) == ("http://127.0.0.1:2", "us-east-1")


def test_s3_lake_without_keys_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        storage_options({"uri": "s3://b/p", "storage_options": {"endpoint": "http://x"}}, {})
    text = str(err.value)
    assert "aws_access_key_id" in text and "AWS_SECRET_ACCESS_KEY" in text
    with pytest.raises(ConfigError, match="storage_options must be a mapping"):
        storage_options({"uri": "s3://b/p", "storage_options": "oops"}, {})


def test_redact_masks_secrets_only() -> None:
    options = {"endpoint": "http://h:1", "region": "r", **KEYS, "nested": dict(KEYS)}
    masked = redact(options)
    assert masked["endpoint"] == "http://h:1" and masked["region"] == "r"
    assert masked["aws_access_key_id"] == masked["aws_secret_access_key"] == "***"
    assert masked["nested"]["aws_secret_access_key"] == "***"
    assert options["aws_secret_access_key"] == "s3cr3t-value"  # a copy
    text = "failed for AKIDEXAMPLE with s3cr3t-value at http://h:1"
    assert redact_text(text, options) == "failed for *** with *** at http://h:1"


def test_job_without_keys_fails_fast_with_config_error(tmp_path) -> None:
    """`lakeloom stats` on an s3 lake with no keys: exit 2 and the reason, no hang."""
    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if not k.startswith("AWS_") or k == "AWS_EC2_METADATA_DISABLED"
    }
    env |= {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lake.stats", "lake.uri=s3://lake/nokeys"],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "no credentials" in proc.stderr + proc.stdout
    assert time.monotonic() - start < 60


def test_lake_handle_without_keys_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    lake = Lake("s3://lake/nokeys", {"endpoint": "http://127.0.0.1:1", "allow_http": "true"})
    with pytest.raises(ConfigError, match="no credentials"):
        lake.table_names()


def test_from_config_passes_options(s3) -> None:
    lake = Lake.from_config(
        OmegaConf.create({"uri": s3.uri("lake"), "storage_options": s3.storage_options})
    )
    assert lake.storage_options == s3.storage_options
    assert lake.table_names() == []
