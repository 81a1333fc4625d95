"""Settings: file, environment overrides, errors naming the key, secrets masked, example in sync."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.config import ChargerSettings, ConfigError, Settings, load_settings, masked
from tests.harness import REPO

EXAMPLE = REPO / "config" / "gateway.example.toml"


def _walk_defaults(model: type, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for name, field in model.model_fields.items():
        if name == "chargers":
            continue
        ann = field.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            out.update(_walk_defaults(ann, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field.get_default(call_default_factory=True)
    return out


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_example_lists_every_key_with_its_default() -> None:
    example = _flatten(tomllib.loads(EXAMPLE.read_text()))
    defaults = {k: masked_value(v) for k, v in _walk_defaults(Settings).items()}
    for key in [k for k, v in defaults.items() if v is None]:  # unset by default: listed commented out
        assert f"# {key.rsplit('.', 1)[1]} = " in EXAMPLE.read_text(), key
        del defaults[key]
    assert set(example) == set(defaults), set(example) ^ set(defaults)
    for key, value in defaults.items():
        assert example[key] == value, key
    # the commented per-charger keys are the ChargerSettings fields
    text = EXAMPLE.read_text()
    for name in ChargerSettings.model_fields:
        assert f"# {name} = " in text, name


def masked_value(v: object) -> object:
    from pydantic import SecretStr

    if isinstance(v, SecretStr):
        return v.get_secret_value()
    if isinstance(v, list):
        return [getattr(x, "value", x) for x in v]
    return v


def test_example_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, source = load_settings(str(EXAMPLE))
    assert source == EXAMPLE and settings.upstream.url == ""


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "g.toml"
    f.write_text('[upstream]\nurl = "ws://a.example/ocpp"\n[websocket]\nallow_unknown = true\n'
                 '[chargers.CP001]\nupstream_password = "filepw"\n')
    monkeypatch.setenv("OCPPGW_WEBSOCKET__ALLOW_UNKNOWN", "false")
    monkeypatch.setenv("OCPPGW_WEBSOCKET__VERSIONS", '["ocpp1.6"]')
    monkeypatch.setenv("OCPPGW_CHARGERS__CP001__UPSTREAM_PASSWORD", "envpw")
    settings, _ = load_settings(str(f))
    assert settings.upstream.url == "ws://a.example/ocpp"  # from the file, untouched
    assert settings.websocket.allow_unknown is False
    assert [v.value for v in settings.websocket.versions] == ["ocpp1.6"]
    assert settings.chargers["CP001"].upstream_password.get_secret_value() == "envpw"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "other.toml"
    f.write_text('site_id = "depot-7"\n')
    monkeypatch.setenv("OCPPGW_CONFIG", str(f))
    settings, source = load_settings(None)
    assert settings.site_id == "depot-7" and source == f


@pytest.mark.parametrize(
    "text, key",
    [
        ('[websocket]\nlisten = "nonsense"\n', "websocket.listen"),
        ('[upstream]\nurl = "http://x"\n', "upstream.url"),
        ('[upstream]\noffline_mode = "maybe"\n', "upstream.offline_mode"),
        ('[websocket]\nsecurity_profile = 7\n', "websocket.security_profile"),
        ('[websocket]\nversions = ["ocpp9"]\n', "websocket.versions.0"),
        ('[websocket]\ntypo_key = 1\n', "websocket.typo_key"),
        ('[chargers."bad:id"]\n', "chargers"),
        ("site_id = 'a/b'\n", "site_id"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(str(f))
    assert key in str(info.value)


def test_bad_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCPPGW_UPSTREAM__CALL_TIMEOUT", "soon")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert "upstream.call_timeout" in str(info.value)


def test_secrets_are_masked() -> None:
    s = Settings(chargers={"CP1": {"upstream_password": "hunter2-hunter2"}}, api={"token": "tok-123"})
    shown = str(masked(s))
    assert "hunter2" not in shown and "tok-123" not in shown and "********" in shown
    assert "hunter2" not in repr(s)


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[chargers.CP1]\nupstream_password = "very-secret-pw"\n')
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(good)],
                         capture_output=True, text=True, cwd=REPO, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "very-secret-pw" not in run.stdout and '"upstream_password": "********"' in run.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[upstream]\nreconnect_max = -1\n')
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(bad)],
                         capture_output=True, text=True, cwd=REPO, timeout=30)
    assert run.returncode == 2 and "upstream.reconnect_max" in run.stderr
    missing = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(tmp_path / "nope.toml")],
                             capture_output=True, text=True, cwd=REPO, timeout=30)
    assert missing.returncode == 2 and "no such file" in missing.stderr
