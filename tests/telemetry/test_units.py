"""Every measurand of OCPP 1.6, 2.0.1 and 2.1, with and without a unit, through the real normaliser
and the InfluxDB encoder: the unit of a sample comes from the OCPP rules for its version and
measurand ("Default = Wh if the (default) measurand is an Energy type"), 2.x multipliers apply,
and readings of one measurand at two locations or phases stay two readings.

The expected units are written here from the specifications' measurand descriptions, not read from
gateway code; the measurand lists come from the `ocpp` package's enums, so a measurand the package
adds and this table lacks fails the coverage test."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

import pytest
from ocpp.v16.enums import Measurand as M16
from ocpp.v201.enums import MeasurandEnumType as M201
from ocpp.v21.enums import MeasurandEnumType as M21

from adapters.influx import encode as influx_lines
from gateway.protocol.frames import OcppVersion
from gateway.protocol.schemas import SchemaRegistry
from gateway.telemetry.normalise import Normaliser
from gateway.telemetry.records import EnvironmentReading, MeterReading, reading_key

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
TS = "2025-03-01T10:00:00Z"
SCHEMAS = SchemaRegistry([OcppVersion.V16, OcppVersion.V201, OcppVersion.V21])

# measurand -> the unit of a sample that states none (OCPP 1.6 §7.45, 2.x UnitOfMeasureType: Wh for
# energy measurands only; every other measurand is in the unit its description names)
NO_UNIT = {
    "Current.Export": "A", "Current.Import": "A", "Current.Offered": "A",
    "Current.Export.Offered": "A", "Current.Export.Minimum": "A", "Current.Import.Offered": "A",
    "Current.Import.Minimum": "A",
    "Energy.Active.Export.Register": "Wh", "Energy.Active.Import.Register": "Wh",
    "Energy.Active.Export.Interval": "Wh", "Energy.Active.Import.Interval": "Wh", "Energy.Active.Net": "Wh",
    "Energy.Active.Import.CableLoss": "Wh", "Energy.Active.Import.LocalGeneration.Register": "Wh",
    "Energy.Active.Setpoint.Interval": "Wh",
    "Energy.Reactive.Export.Register": "varh", "Energy.Reactive.Import.Register": "varh",
    "Energy.Reactive.Export.Interval": "varh", "Energy.Reactive.Import.Interval": "varh", "Energy.Reactive.Net": "varh",
    "Energy.Apparent.Net": "VAh", "Energy.Apparent.Import": "VAh", "Energy.Apparent.Export": "VAh",
    "EnergyRequest.Target": "Wh", "EnergyRequest.Minimum": "Wh", "EnergyRequest.Maximum": "Wh",
    "EnergyRequest.Minimum.V2X": "Wh", "EnergyRequest.Maximum.V2X": "Wh", "EnergyRequest.Bulk": "Wh",
    "Display.PresentSOC": "Percent", "Display.MinimumSOC": "Percent", "Display.TargetSOC": "Percent",
    "Display.MaximumSOC": "Percent", "Display.RemainingTimeToMinimumSOC": "s", "Display.RemainingTimeToTargetSOC": "s",
    "Display.RemainingTimeToMaximumSOC": "s", "Display.ChargingComplete": "", "Display.BatteryEnergyCapacity": "Wh",
    "Display.InletHot": "",
    "Frequency": "Hz",
    "Power.Active.Export": "W", "Power.Active.Import": "W", "Power.Offered": "W", "Power.Active.Setpoint": "W",
    "Power.Active.Residual": "W", "Power.Export.Minimum": "W", "Power.Export.Offered": "W",
    "Power.Import.Offered": "W", "Power.Import.Minimum": "W",
    "Power.Reactive.Export": "var", "Power.Reactive.Import": "var",
    "Power.Factor": "",
    "RPM": "RPM", "SoC": "Percent", "Temperature": "Celsius",
    "Voltage": "V", "Voltage.Minimum": "V", "Voltage.Maximum": "V",
}

# a unit the charger may state for the measurand's quantity: (unit, value sent, value expected, unit expected)
_KILO = {"Wh": "kWh", "varh": "kvarh", "VAh": "kVAh", "W": "kW", "var": "kvar"}


def with_unit(version: OcppVersion, measurand: str) -> tuple[str, float, float, str] | None:
    base = NO_UNIT[measurand]
    if measurand == "Temperature":
        return ("Fahrenheit", 77.0, 25.0, "Celsius")
    if measurand == "Frequency":
        return ("Hertz" if version is OcppVersion.V16 else "Hz", 50.0, 50.0, "Hz")
    if base in _KILO:
        if version is OcppVersion.V16 and base == "VAh":
            return None
        return (_KILO[base], 7.4, 7400.0, base)
    if base in ("A", "V", "Percent") or (base in ("s", "RPM") and version is not OcppVersion.V16):
        return (base, 16.0, 16.0, base)
    return None  # no unit for it in the version's list (1.6 RPM, Power.Factor, 0/1 flags)


MEASURANDS = ([(OcppVersion.V16, m.value) for m in M16] + [(OcppVersion.V201, m.value) for m in M201]
              + [(OcppVersion.V21, m.value) for m in M21])


def test_the_table_covers_every_measurand_of_every_version() -> None:
    assert sorted({m for _, m in MEASURANDS} - set(NO_UNIT)) == []
    assert len([m for v, m in MEASURANDS if v is OcppVersion.V16]) == 22
    assert len([m for v, m in MEASURANDS if v is OcppVersion.V201]) == 25


def sampled(version: OcppVersion, measurand: str, value: float, unit: str | None, multiplier: int | None = None,
            location: str | None = None) -> dict[str, Any]:
    if version is OcppVersion.V16:
        sv: dict[str, Any] = {"value": repr(value), "measurand": measurand}
        if unit is not None:
            sv["unit"] = unit
    else:
        sv = {"value": value, "measurand": measurand}
        uom: dict[str, Any] = {}
        if unit is not None:
            uom["unit"] = unit
        if multiplier is not None:
            uom["multiplier"] = multiplier
        if uom:
            sv["unitOfMeasure"] = uom
    if location is not None:
        sv["location"] = location
    return sv


def meter_values(version: OcppVersion, samples: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    mv = [{"timestamp": TS, "sampledValue": samples}]
    request = {"connectorId": 1, "meterValue": mv} if version is OcppVersion.V16 else {"evseId": 1, "meterValue": mv}
    sent = copy.deepcopy(request)
    assert SCHEMAS.validate(version, "MeterValues", request) is None, request
    assert request == sent  # validating fills in no schema default (2.x: unitOfMeasure.unit "Wh")
    return "MeterValues", request


def normalise(version: OcppVersion, samples: list[dict[str, Any]]) -> list[Any]:
    action, request = meter_values(version, samples)
    return Normaliser().records("CP1", version.value, action, request, {}, NOW)


def only_sample(records: list[Any]) -> Any:
    meters = [r for r in records if isinstance(r, MeterReading)]
    assert len(meters) == 1 and len(meters[0].samples) == 1
    return meters[0].samples[0]


@pytest.mark.parametrize("version,measurand", MEASURANDS, ids=[f"{v.value}-{m}" for v, m in MEASURANDS])
def test_a_sample_without_unit_is_in_its_measurands_unit(version: OcppVersion, measurand: str) -> None:
    records = normalise(version, [sampled(version, measurand, 12.5, None)])
    s = only_sample(records)
    assert (s.measurand, s.value, s.unit) == (measurand, 12.5, NO_UNIT[measurand])
    assert s.location == "Outlet" and s.context == "Sample.Periodic"  # the spec's defaults, filled in
    # the InfluxDB line carries that unit as its tag (left out when the quantity has none)
    line = [x for r in records for x in influx_lines(r, "s") if x.startswith("meter_value,")][0]
    tags = dict(t.split("=", 1) for t in line.split(" ")[0].split(",")[1:])
    assert tags.get("unit") == (NO_UNIT[measurand] or None) and tags["location"] == "Outlet"
    if version is not OcppVersion.V16:  # an empty unitOfMeasure (multiplier 0) says the same
        s2 = only_sample(normalise(version, [sampled(version, measurand, 12.5, None, multiplier=0)]))
        assert (s2.value, s2.unit) == (12.5, NO_UNIT[measurand])


@pytest.mark.parametrize("version,measurand", MEASURANDS, ids=[f"{v.value}-{m}" for v, m in MEASURANDS])
def test_a_sample_with_unit_is_converted_to_the_canonical_unit(version: OcppVersion, measurand: str) -> None:
    case = with_unit(version, measurand)
    if case is None:
        pytest.skip(f"{version.value} has no unit for {measurand} in its list")
    unit, sent, expected, canonical = case
    s = only_sample(normalise(version, [sampled(version, measurand, sent, unit)]))
    assert (s.value, s.unit) == (expected, canonical)
    if version is not OcppVersion.V16 and measurand != "Temperature":
        # the multiplier multiplies the value, whatever the unit: 2 x 10^3 kW is 2 000 000 W
        s3 = only_sample(normalise(version, [sampled(version, measurand, 2.0, unit, multiplier=3)]))
        assert s3.value == pytest.approx(2000.0 * expected / sent) and s3.unit == canonical
        s4 = only_sample(normalise(version, [sampled(version, measurand, 2.0, None, multiplier=-1)]))
        assert s4.value == pytest.approx(0.2) and s4.unit == NO_UNIT[measurand]


@pytest.mark.parametrize("version", [OcppVersion.V16, OcppVersion.V201, OcppVersion.V21])
def test_readings_at_two_locations_or_phases_are_two_readings(version: OcppVersion) -> None:
    measurand = "Temperature" if version is OcppVersion.V16 else "Voltage"
    samples = [sampled(version, measurand, 40.0, None, location="Body"),
               sampled(version, measurand, 20.0, None, location="Outlet"),
               sampled(version, measurand, 30.0, None)]  # no location: Outlet, the same reading as the one above
    records = normalise(version, samples)
    meter = [r for r in records if isinstance(r, MeterReading)][0]
    keys = [reading_key(meter.evse, s) for s in meter.samples]
    assert keys == [(1, measurand, None, "Body"), (1, measurand, None, "Outlet"), (1, measurand, None, "Outlet")]
    lines = [x for r in records for x in influx_lines(r, "s") if x.startswith("meter_value,")]
    series = {x.split(" ")[0] for x in lines}
    assert len(series) == 2 and {",location=Body," in s for s in series} == {True, False}
    if version is OcppVersion.V16:  # 1.6 temperatures are environment readings too, one name per location
        env = {(e.name, e.value) for e in records if isinstance(e, EnvironmentReading)}
        assert env == {("temperature_evse1", 40.0), ("temperature_outlet_evse1", 20.0),
                       ("temperature_outlet_evse1", 30.0)}


def test_a_multiplier_out_of_range_drops_that_sample_only() -> None:
    records = normalise(OcppVersion.V201, [sampled(OcppVersion.V201, "Voltage", 230.0, "V", multiplier=400),
                                           sampled(OcppVersion.V201, "Voltage", 230.0, "V", multiplier=-400),
                                           sampled(OcppVersion.V201, "Current.Import", 16.0, None)])
    meter = [r for r in records if isinstance(r, MeterReading)][0]
    assert [(s.measurand, s.value, s.unit) for s in meter.samples] == [("Voltage", 0.0, "V"),
                                                                       ("Current.Import", 16.0, "A")]


def test_converted_values_are_rounded_to_six_decimals_at_every_size() -> None:
    """units.tidy: the binary noise of a conversion goes (16.1 kW is 16100 W, not 16100.000000000002),
    values keep six decimals, and every size rounds as round(value, 6) does where the seventh
    decimal is not a tie, including values too large for the fast form and inf / NaN."""
    import math
    import random

    from gateway.telemetry import units

    assert 16.1 * 1000 != 16100.0 and units.tidy(16.1 * 1000) == 16100.0 and units.tidy(9.87 * 0.001) == 0.00987
    assert units.tidy((100.4 - 32.0) * 5.0 / 9.0) == 38.0
    assert units.tidy(0.1234567) == 0.123457 and units.tidy(-2.5e-7) == 0.0
    assert units.tidy(123456789012.3456789) == round(123456789012.3456789, 6)  # above 1e9: round itself
    assert units.tidy(math.inf) == math.inf and math.isnan(units.tidy(math.nan))
    rng = random.Random(7)
    for _ in range(20_000):
        raw = round(rng.uniform(-1e6, 1e6), rng.randint(0, 4))  # what a meter sends: a few decimals
        for factor in (1000.0, 0.001, 1.0, 5.0 / 9.0):
            value = raw * factor
            assert abs(units.tidy(value) - value) <= 5e-7 + abs(value) * 1e-15
            if abs(value * 1e7 % 10 - 5) > 1e-3:  # no tie at the seventh decimal
                assert units.tidy(value) == round(value, 6), value


def test_the_fast_rounding_is_round_itself_below_1e9_ties_and_signs_included() -> None:
    """units.tidy below 1e9 computes round(value * 1e6) / 1e6 with a float addition instead of
    round's integer: the same float for every value, ties (half to even) and the sign of zero
    included; the normaliser's inline copy of it gives what units.tidy gives."""
    import math
    import random

    from gateway.telemetry import units

    rng = random.Random(11)
    values = [rng.uniform(-1e9, 1e9) for _ in range(50_000)] + [rng.uniform(-10.0, 10.0) for _ in range(50_000)]
    values += [k / 2e6 for k in range(-20_000, 20_000)]  # exact ties at the seventh decimal
    values += [k * 0.1 for k in range(-20_000, 20_000)] + [0.0, -0.0, 5e-7, -5e-7, 2.5e-6, 999_999_999.9999995]
    for value in values:
        want = round(value * 1e6) / 1e6
        got = units.tidy(value)
        assert got == want and math.copysign(1.0, got) == math.copysign(1.0, want), value

    normaliser = Normaliser()
    now = datetime(2026, 12, 7, tzinfo=timezone.utc)
    raws = [f"{rng.uniform(-1e5, 1e5):.{rng.randint(0, 7)}f}" for _ in range(2000)] + ["16.1", "0.0000005", "-0.0"]
    for unit, measurand, convert in (("kW", "Power.Active.Import", lambda v: v * 1000.0),
                                     ("Fahrenheit", "Temperature", lambda v: (v - 32.0) * 5.0 / 9.0),
                                     ("K", "Temperature", lambda v: v - 273.15),
                                     ("Celsius", "Temperature", lambda v: v)):
        request = {"connectorId": 1, "meterValue": [{"timestamp": "2026-12-07T10:00:00Z", "sampledValue": [
            {"value": raw, "measurand": measurand, "unit": unit} for raw in raws]}]}
        (reading,) = [r for r in normaliser.records("CP1", "ocpp1.6", "MeterValues", request, {}, now)
                      if isinstance(r, MeterReading)]
        assert [s.value for s in reading.samples] == [units.tidy(convert(float(raw))) for raw in raws], unit
