"""The [mqtt] and [influx] settings: bad values are refused with the key named, secrets masked."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, Settings, load_settings, masked


def test_mqtt_url_must_be_mqtt_or_mqtts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "g.toml"
    f.write_text('[mqtt]\nurl = "http://broker:1883"\n')
    with pytest.raises(ConfigError, match="mqtt.url"):
        load_settings(str(f))
    f.write_text('[mqtt]\nurl = "mqtts://gw:s3cret@broker.example:8883"\ntopic_prefix = "a/+"\n')
    with pytest.raises(ConfigError, match="mqtt.topic_prefix"):
        load_settings(str(f))


def test_influx_needs_its_target_when_enabled(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "g.toml"
    f.write_text('[influx]\nurl = "http://influx:8086"\napi = "v2"\n')
    with pytest.raises(ConfigError, match="bucket is required"):
        load_settings(str(f))
    f.write_text('[influx]\nurl = "http://influx:8086"\napi = "v1"\n')
    with pytest.raises(ConfigError, match="database is required"):
        load_settings(str(f))
    Settings(influx={"url": "", "api": "v2"})  # off: nothing required


def test_secrets_are_masked() -> None:
    s = Settings(mqtt={"url": "mqtt://gw:s3cret@broker:1883"},
                 influx={"url": "http://i:8086", "bucket": "b", "token": "t0ken"})
    shown = masked(s)
    # only the credentials inside mqtt.url are masked: the broker's address stays readable
    assert shown["mqtt"]["url"] == "mqtt://********@broker:1883" and shown["influx"]["token"] == "********"
    assert "s3cret" not in repr(s) and "t0ken" not in repr(s)


def test_an_unreadable_ca_file_is_a_configuration_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Found only while starting: `run` exits with status 2 and names the key."""
    import subprocess
    import sys

    from tests.harness import REPO, GatewayProcess, free_port

    for section, extra in (("mqtt", {"url": f"mqtts://127.0.0.1:{free_port()}"}),
                           ("influx", {"url": f"https://127.0.0.1:{free_port()}", "bucket": "b"})):
        gw = GatewayProcess(tmp_path, {section: {**extra, "ca_file": str(tmp_path / "missing.pem")}}, name=section)
        proc = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(gw.config_path)], cwd=REPO,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"{section}.ca_file" in proc.stderr + proc.stdout
