"""Unit rules: every value leaves the gateway in one canonical unit per quantity.

A sample without a unit is in its measurand's own unit (`default_unit`). OCPP 1.6 (§7.45
SampledValue.unit) and 2.0.1/2.1 (UnitOfMeasureType.unit) both say "Default = Wh if the (default)
measurand is an Energy type": Wh is the default of energy measurands only, not of every sample.

| measurand (1.6, 2.0.1, 2.1)                                    | unit when none is sent |
|----------------------------------------------------------------|------------------------|
| Energy.Active.* (Register, Interval, Net, CableLoss, ...)      | Wh                     |
| Energy.Reactive.*                                              | varh                   |
| Energy.Apparent.* (2.x)                                        | VAh                    |
| EnergyRequest.*, Display.BatteryEnergyCapacity (2.1)           | Wh                     |
| Current.* (Import, Export, Offered, ...Minimum, ...Offered)    | A                      |
| Voltage, Voltage.Minimum, Voltage.Maximum                      | V                      |
| Power.Active.*, Power.Offered, Power.Import.*, Power.Export.*  | W                      |
| Power.Reactive.*                                               | var                    |
| Power.Factor                                                   | "" (a ratio)           |
| Frequency                                                      | Hz                     |
| SoC, Display.*SOC (2.1)                                        | Percent                |
| Display.RemainingTimeTo*SOC (2.1)                              | s                      |
| Display.ChargingComplete, Display.InletHot (2.1)               | "" (0 or 1)            |
| Temperature (1.6)                                              | Celsius                |
| RPM (1.6)                                                      | RPM                    |
| any other                                                      | "" (none stated)       |

Then every value is converted to the canonical unit of its quantity:

| charger sent                                  | canonical  | conversion                 |
|-----------------------------------------------|------------|----------------------------|
| Wh, kWh                                       | Wh         | kWh x 1000                 |
| W, kW                                         | W          | kW x 1000                  |
| varh, kvarh / var, kvar / VA, kVA / VAh, kVAh | varh/var/VA/VAh | k... x 1000           |
| Celsius, Celcius (1.6 schema typo), Fahrenheit, K | Celsius | (F - 32) x 5/9, K - 273.15 |
| RH, %RH, Percent on a humidity variable       | RH         | (percent relative humidity)|
| Hertz (1.6 schema), Hz                        | Hz         |                            |
| anything else (A, V, Percent, s, ...)         | as sent    |                            |

OCPP 2.x `unitOfMeasure.multiplier` (a power of ten; "it only multiplies the value") is applied
first: {"value": 7.4, "unitOfMeasure": {"unit": "W", "multiplier": 3}} is 7400 W, and with "kW" it
is 7 400 000 W. Values round to 6 decimals after conversion, so that 77 °F is exactly 25.0.
"""

from __future__ import annotations

import math

CELSIUS = "Celsius"
HUMIDITY = "RH"
ENERGY_DEFAULT = "Wh"

# measurand -> its unit when the charger sends none (the table above); prefixes after exact names
_DEFAULT_EXACT = {
    "Power.Factor": "", "Frequency": "Hz", "SoC": "Percent", "Temperature": CELSIUS, "RPM": "RPM",
    "Display.BatteryEnergyCapacity": "Wh", "Display.ChargingComplete": "", "Display.InletHot": "",
}
_DEFAULT_PREFIX = (
    ("Energy.Reactive.", "varh"), ("Energy.Apparent.", "VAh"), ("Energy", "Wh"),  # Energy.*, EnergyRequest.*
    ("Current.", "A"), ("Voltage", "V"), ("Power.Reactive.", "var"), ("Power.", "W"),
    ("Display.RemainingTimeTo", "s"), ("Display.", "Percent"),  # Display.PresentSOC, ...MinimumSOC, ...
)
_defaults: dict[str, str] = {}

_SCALE = {
    "kWh": ("Wh", 1000.0), "Wh": ("Wh", 1.0),
    "kW": ("W", 1000.0), "W": ("W", 1.0),
    "kvarh": ("varh", 1000.0), "varh": ("varh", 1.0),
    "kvar": ("var", 1000.0), "var": ("var", 1.0),
    "kVA": ("VA", 1000.0), "VA": ("VA", 1.0),
    "kVAh": ("VAh", 1000.0), "VAh": ("VAh", 1.0),
    "Hertz": ("Hz", 1.0), "Hz": ("Hz", 1.0),
    "%RH": (HUMIDITY, 1.0), "RH": (HUMIDITY, 1.0),
}
_TEMPERATURE_UNITS = {"celsius": "C", "celcius": "C", "degc": "C", "°c": "C", "c": "C",
                      "fahrenheit": "F", "degf": "F", "°f": "F", "f": "F",
                      "k": "K", "kelvin": "K"}


def default_unit(measurand: str) -> str:
    """The unit of a sample of `measurand` that states none (OCPP: Wh only for energy measurands)."""
    unit = _defaults.get(measurand)
    if unit is None:
        unit = _DEFAULT_EXACT.get(measurand)
        if unit is None:
            unit = next((u for prefix, u in _DEFAULT_PREFIX if measurand.startswith(prefix)), "")
        if len(_defaults) < 1024:  # measurands come from chargers: keep the table bounded
            _defaults[measurand] = unit
    return unit


def is_temperature_unit(unit: str | None) -> bool:
    return unit is not None and unit.strip().lower() in _TEMPERATURE_UNITS


def temperature_kind(unit: str | None) -> str | None:
    """"C", "F" or "K" for a temperature unit (None means Celsius, the OCPP default); None otherwise."""
    return _TEMPERATURE_UNITS.get((unit or "Celsius").strip().lower())


def to_celsius(value: float, unit: str | None) -> float:
    """A temperature in Celsius; `unit` None means Celsius (the OCPP default)."""
    kind = temperature_kind(unit)
    if kind == "F":
        value = (value - 32.0) * 5.0 / 9.0
    elif kind == "K":
        value = value - 273.15
    elif kind is None:
        raise ValueError(f"not a temperature unit: {unit!r}")
    return tidy(value)


# 1.5 * 2**52: a float between -2**51 and 2**51 plus this lands where the spacing of floats is 1,
# so the sum is rounded to a whole number (half to even, as `round`); taking it away again is exact
ROUNDER = 6755399441055744.0


def tidy(value: float) -> float:
    """Round away binary noise from conversions (6 decimals), keep it a float.

    Below 1e9 in size it is `round(value * 1e6) / 1e6`, computed as `(value * 1e6 + ROUNDER -
    ROUNDER) / 1e6` (the same float, without `round`'s integer: a seventh of `round(value, 6)`'s
    cost, which goes through decimal text; it runs for most sampled values; the normaliser has it
    inline). It agrees with `round(value, 6)` but where the seventh decimal is a 5 (a value with
    more decimals than any meter sends): then they may round it to opposite sides, both within 1e-6."""
    if -1e9 < value < 1e9:
        return (value * 1e6 + ROUNDER - ROUNDER) / 1e6
    return float(round(value, 6))  # larger, and inf or NaN


def canonical(value: float, unit: str | None, *, measurand: str = "", multiplier: int = 0) -> tuple[float, str]:
    """(value, unit) in canonical units; a missing unit is the measurand's own (`default_unit`; no
    measurand: the OCPP default, Energy.Active.Import.Register). Raises ValueError for non-finite
    values."""
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    if multiplier:
        try:  # any integer is schema-valid: a value that overflows is not a number we can keep
            value = value * (10.0 ** multiplier)
        except OverflowError as exc:
            raise ValueError(f"multiplier {multiplier} out of range") from exc
        if not math.isfinite(value):
            raise ValueError(f"multiplier {multiplier} out of range")
    if unit and measurand != "Temperature" and measurand != "Humidity":  # the common case, first
        scaled = _SCALE.get(unit)
        if scaled is not None:
            return (tidy(value * scaled[1]) if scaled[1] != 1.0 else float(value)), scaled[0]
    if measurand == "Temperature" or is_temperature_unit(unit):
        return to_celsius(value, unit), CELSIUS
    if unit is None or unit == "":
        unit = default_unit(measurand or "Energy.Active.Import.Register")
    if measurand == "Humidity" and unit in ("Percent", "%"):
        return float(value), HUMIDITY
    scaled = _SCALE.get(unit)
    if scaled is not None:
        return tidy(value * scaled[1]) if scaled[1] != 1.0 else float(value), scaled[0]
    return float(value), unit


def parse_number(text: object) -> float | None:
    """A finite float from an OCPP value (1.6: a decimal string; 2.x: a number), else None."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    elif isinstance(text, str):
        try:
            value = float(text.strip())
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None
