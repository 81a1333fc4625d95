"""The CLI around the lifecycle: check-config masks only the credentials in mqtt.url; store check
on a data_dir without a store; the exit codes the docs list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import mask_url_credentials
from tests.harness import REPO, write_toml
from tests.lifecycle.conftest import run_once


@pytest.mark.parametrize(("url", "shown"), [
    ("mqtt://broker.lan:1883", "mqtt://broker.lan:1883"),
    ("mqtts://gw:s3cret@broker.lan:8883", "mqtts://********@broker.lan:8883"),
    ("mqtt://token-only@10.0.0.2", "mqtt://********@10.0.0.2"),
    ("mqtt://u:p%40ss@[::1]:1883/", "mqtt://********@[::1]:1883/"),
    ("", ""),
])
def test_mask_url_credentials(url: str, shown: str) -> None:
    assert mask_url_credentials(url) == shown


def test_check_config_shows_the_broker_but_not_its_password(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    write_toml(config, {"mqtt": {"url": "mqtt://gw:hunter2-pw@broker.lan:1883"}})

    result = run_once(config, command="check-config")

    shown = json.loads(result.stdout.split("\n", 1)[1])
    assert result.returncode == 0, result
    assert shown["mqtt"]["url"] == "mqtt://********@broker.lan:1883"
    assert "hunter2" not in result.stdout + result.stderr


def test_store_check_without_a_store(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    write_toml(config, {"data_dir": str(tmp_path / "data")})

    result = run_once(config, "check", command="store")

    assert result.returncode == 0
    assert result.stdout.strip() == f"no store yet at {tmp_path / 'data' / 'gateway.sqlite3'} (the first start creates it)"


def test_every_exit_code_is_documented() -> None:
    """The exit-code table in the docs lists what gateway.errors defines."""
    from gateway import errors

    table = (REPO / "docs" / "troubleshooting.md").read_text()
    for code, name in ((errors.EXIT_OK, "0"), (errors.EXIT_UNEXPECTED, "1"), (errors.EXIT_CONFIG, "2"),
                       (errors.EXIT_ALREADY_RUNNING, "3"), (errors.EXIT_LISTENER, "4"), (errors.EXIT_STORE_DAMAGED, "5")):
        assert f"\n| {code} |" in table, name
