"""The telemetry plane's pure part: normalised records, unit rules, OCPP payloads into records,
vendor DataTransfer decoders, and the session observer that hands records to the sinks.

Nothing here does I/O: the sinks (adapters/mqtt/, adapters/influx.py) receive records through
`TelemetrySink.offer`, which must return at once.
"""
