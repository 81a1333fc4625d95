"""Unit rules: every value leaves the gateway in one canonical unit per quantity.

| charger sent                                  | canonical  | conversion                 |
|-----------------------------------------------|------------|----------------------------|
| Wh, kWh                                       | Wh         | kWh x 1000                 |
| W, kW                                         | W          | kW x 1000                  |
| varh, kvarh / W, kW / VA, kVA / var, kvar     | varh/var/VA| k... x 1000                |
| Celsius, Celcius (1.6 schema typo), Fahrenheit, K | Celsius | (F - 32) x 5/9, K - 273.15 |
| RH, %RH, Percent on a humidity variable       | RH         | (percent relative humidity)|
| Hertz, Hz, none on Frequency                  | Hz         |                            |
| anything else                                 | as sent    |                            |

OCPP 2.x `unitOfMeasure.multiplier` (a power of ten) is applied before the conversion. A 1.6 sample
without a unit is in Wh (O16 §7.45 default) except Frequency (Hz, O16 §7.31 note) and Temperature
(Celsius). Values round to 6 significant decimals after conversion, so that 77 °F is exactly 25.0.
"""

from __future__ import annotations

import math

CELSIUS = "Celsius"
HUMIDITY = "RH"

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


def tidy(value: float) -> float:
    """Round away binary noise from conversions (6 decimals), keep it a float."""
    return float(round(value, 6))


def canonical(value: float, unit: str | None, *, measurand: str = "", multiplier: int = 0) -> tuple[float, str]:
    """(value, unit) in canonical units. Raises ValueError for non-finite values."""
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    if multiplier:
        value = value * (10.0 ** multiplier)
    if unit and measurand != "Temperature" and measurand != "Humidity":  # the common case, first
        scaled = _SCALE.get(unit)
        if scaled is not None:
            return (tidy(value * scaled[1]) if scaled[1] != 1.0 else float(value)), scaled[0]
    if measurand == "Temperature" or is_temperature_unit(unit):
        return to_celsius(value, unit), CELSIUS
    if unit is None or unit == "":
        if measurand == "Frequency":
            return float(value), "Hz"
        if measurand in ("SoC", "Power.Factor"):
            return float(value), "Percent" if measurand == "SoC" else ""
        unit = "Wh"
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
