"""docs/configuration.md is generated from the settings model and agrees with config/gateway.example.toml."""

from __future__ import annotations

import subprocess
import sys

from gateway import configdoc
from gateway.config import ChargerSettings, Settings
from tests.harness import REPO


def test_reference_is_up_to_date() -> None:
    generated = configdoc.render(configdoc.EXAMPLE.read_text(encoding="utf-8"))
    current = configdoc.TARGET.read_text(encoding="utf-8")
    assert current == generated, (
        f"docs/configuration.md is out of date (a key, default, range or comment changed): run "
        f"`{configdoc.COMMAND}` and commit docs/configuration.md")


def test_example_file_and_model_agree() -> None:
    found = configdoc.problems(configdoc.EXAMPLE.read_text(encoding="utf-8"))
    assert not found, "\n" + "\n".join(found)


def test_every_model_key_is_in_the_reference_with_its_environment_variable() -> None:
    text = configdoc.TARGET.read_text(encoding="utf-8")
    sections = [(name, f.annotation) for name, f in Settings.model_fields.items()
                if name != "chargers" and hasattr(f.annotation, "model_fields")]
    for section, model in sections:
        assert f"\n## [{section}]\n" in text, section
        for key in model.model_fields:  # type: ignore[union-attr]
            assert f"| `{key}` |" in text and f"`OCPPGW_{section.upper()}__{key.upper()}`" in text, f"{section}.{key}"
    for key in ChargerSettings.model_fields:
        assert f"`OCPPGW_CHARGERS__{{ID}}__{key.upper()}`" in text, key


def test_problems_name_the_key_and_the_fix() -> None:
    example = configdoc.EXAMPLE.read_text(encoding="utf-8")
    lines = example.splitlines()
    without = [line for line in lines if not line.startswith("keepalive = ")]  # drop [mqtt].keepalive
    at = without.index(next(line for line in without if line.startswith("[influx]")))
    broken = "\n".join(without[:at] + ["made_up = 1                     # not a setting", ""] + without[at:])
    broken = broken.replace('journal_max_mb = 100              # the journal is rotated to <journal>.1 beyond this size',
                            "journal_max_mb = 100")
    found = configdoc.problems(broken)
    assert any(p.startswith("`mqtt.keepalive` is in the settings model but not in config/gateway.example.toml: add "
                            "`keepalive = 30  # what it does` under [mqtt]") and configdoc.COMMAND in p for p in found), found
    assert any(p.startswith("config/gateway.example.toml has `mqtt.made_up`, which the settings model") for p in found)
    assert any(p.startswith("`logging.journal_max_mb` has no comment") for p in found), found
    assert len(found) == 3, found


def test_check_command() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway.configdoc", "--check"], cwd=str(REPO), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr
