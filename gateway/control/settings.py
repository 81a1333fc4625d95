"""The configuration of local control: `[site]`, `[control]`, `[derating]` and the per-charger
`[chargers.ID].derating` rule. Kept here (and referenced from gateway.config.Settings) so the
control keys and their checks live beside the code that uses them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from typing import Literal


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SiteSettings(_Section):
    """The site's grid connection, shared among active transactions (fair share)."""

    enabled: bool = False
    max_current_a: float = Field(0.0, ge=0)  # per phase; 0 = use max_power_w
    max_power_w: float = Field(0.0, ge=0)  # converted to current with voltage and phases
    phases: int = Field(3, ge=1, le=3)
    voltage: float = Field(230.0, gt=0)  # phase-to-neutral volts
    min_per_session: float = Field(6.0, ge=0)  # A per phase; a session that cannot get this is paused

    @model_validator(mode="after")
    def _limit(self) -> "SiteSettings":
        if self.enabled and self.max_current_a <= 0 and self.max_power_w <= 0:
            raise ValueError("enabled needs max_current_a or max_power_w above 0")
        return self

    def current_limit(self) -> float | None:
        """The site limit in A per phase, or None when the site limit is off."""
        if not self.enabled:
            return None
        if self.max_current_a > 0:
            return self.max_current_a
        return self.max_power_w / (self.voltage * self.phases)


class ControlSettings(_Section):
    """How the gateway's charging profiles coexist with the CSMS's (docs/local-control.md)."""

    pause_enabled: bool = True  # operator pause/resume (REST, MQTT)
    profile_id_base: int = Field(900_000_000, ge=1, le=2_000_000_000)  # gateway profile ids: base .. base+99999
    stack_level: int = Field(8, ge=0)  # above the CSMS's TxProfiles (the highest stack level wins)
    fallback: Literal["availability", "stop", "none"] = "availability"  # pause when a charger rejects profiles
    respect_csms_limits: bool = True  # never send a limit above the lowest one the CSMS set for that EVSE
    call_timeout: float = Field(10.0, gt=0)  # s a charger has to answer the gateway's profile calls


class DeratingRule(_Section):
    """Thresholds with hysteresis (°C): above reduce_above the limit is reduced_current_a, above
    pause_above charging pauses; each step is released once the temperature falls below its
    threshold minus hysteresis."""

    reduce_above: float = 50.0
    pause_above: float = 60.0
    hysteresis: float = Field(5.0, ge=0)
    reduced_current_a: float = Field(10.0, ge=0)  # A per phase
    sensors: list[str] = Field(default_factory=list)  # environment reading names; empty = every temperature
    max_age: float = Field(900.0, ge=0)  # s a sensor's last reading counts once newer ones come from others; 0 = for ever

    @model_validator(mode="after")
    def _order(self) -> "DeratingRule":
        if self.pause_above < self.reduce_above:
            raise ValueError("pause_above must not be below reduce_above")
        return self


class DeratingSettings(DeratingRule):
    """The site-wide rule (a charger's own `[chargers.ID].derating` replaces it for that charger)."""

    enabled: bool = False
