"""The composition root: reads the settings, builds the enabled adapters, enters them in
dependency order, runs until SIGTERM/SIGINT, and stops them in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from typing import AsyncIterator

from gateway.config import Settings
from gateway.protocol.schemas import SchemaRegistry
from gateway.session import Hub

log = logging.getLogger("gateway")


class Gateway:
    """A running gateway (use `running()`); exposes the hub and the bound ports for tests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub: Hub | None = None
        self.ws_port: int | None = None


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Gateway]:
    from adapters.sqlite_store import SqliteStore
    from adapters.upstream_ws import WsUpstreamConnector
    from adapters.websocket_server import WebSocketServer

    started = time.monotonic()
    gw = Gateway(settings)
    schemas = SchemaRegistry(list(settings.websocket.versions))
    async with SqliteStore(settings.data_dir) as store, contextlib.AsyncExitStack() as sinks:
        connector = WsUpstreamConnector(settings) if settings.upstream.url else None
        hub = gw.hub = Hub(settings, store, schemas, connector)
        await hub.start()
        await _start_telemetry(settings, hub, sinks)  # stopped after the hub (the exit stack closes last)
        server = await WebSocketServer(settings, hub).start()
        gw.ws_port = server.port
        mode = f"relaying to {settings.upstream.url}" if settings.upstream.url else "standalone"
        log.info("listening for OCPP-J on %s%s/{charger_id} (%s) after %.0f ms", settings.websocket.listen,
                 settings.websocket.path, mode, (time.monotonic() - started) * 1000)
        # Compile every schema in a worker thread now that the port is open; until a schema is
        # compiled, its first use compiles it on demand.
        stopping = threading.Event()
        warm = asyncio.get_running_loop().run_in_executor(None, schemas.warm_up, None, stopping.is_set)
        try:
            yield gw
        finally:
            stopping.set()
            await server.stop()
            await hub.close()
            with contextlib.suppress(Exception):
                await warm


async def _start_telemetry(settings: Settings, hub: Hub, stack: contextlib.AsyncExitStack) -> None:
    """MQTT and InfluxDB sinks when their url is set, fed by one observer of every session."""
    from gateway.telemetry.observer import TelemetryObserver

    sinks = []
    if settings.mqtt.url.get_secret_value():
        from adapters.mqtt import MqttSink

        mqtt = await stack.enter_async_context(MqttSink(settings.mqtt, settings.data_dir, settings.site_id))
        mqtt.attach_hub(hub)
        sinks.append(mqtt)
    if settings.influx.url:
        from adapters.influx import InfluxSink

        sinks.append(await stack.enter_async_context(InfluxSink(settings.influx, settings.data_dir, settings.site_id)))
    if sinks:
        hub.observers.append(TelemetryObserver(sinks))


async def serve_forever(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running(settings):
        await stop.wait()
        log.info("stopping")
    log.info("stopped")
