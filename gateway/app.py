"""The composition root: reads the settings, builds the enabled adapters, enters them in
dependency order, runs until SIGTERM/SIGINT, and stops them in reverse order."""

from __future__ import annotations

import asyncio
import gc
import contextlib
import logging
import signal
import threading
import time
from typing import Any, AsyncIterator

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
        self.api: Any = None  # adapters.api.ApiServer (its .port), when the API is listening
        self.soap: Any = None  # adapters.soap.server.SoapServer (its .port), when [soap].enabled
        self.http: Any = None  # adapters.http_binding.HttpBinding (its .port), when [http].enabled
        self.control: Any = None  # gateway.control.engine.ControlEngine (local control)
        self.txlog: Any = None  # gateway.txlog.TransactionLog


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
        from gateway.txlog import TransactionLog

        txlog = gw.txlog = TransactionLog(store)  # behind /api/v1/transactions
        txlog.start()
        hub.observers.append(txlog)
        await _start_telemetry(settings, hub, sinks)  # stopped after the hub (the exit stack closes last)
        gw.control = _start_control(settings, hub, sinks)
        api = _operations(settings, hub, store, sinks)  # observers first: they see every charger
        server = await WebSocketServer(settings, hub).start()
        gw.ws_port = server.port
        api.checks["websocket"] = lambda: server._server is not None and server._server.is_serving()
        gw.api = await _start_api(api)
        legacy = await _start_legacy(settings, hub, gw)
        mode = f"relaying to {settings.upstream.url}" if settings.upstream.url else "standalone"
        log.info("listening for OCPP-J on %s%s/{charger_id} (%s) after %.0f ms", settings.websocket.listen,
                 settings.websocket.path, mode, (time.monotonic() - started) * 1000)
        # Compile every schema in a worker thread now that the port is open; until a schema is
        # compiled, its first use compiles it on demand.
        stopping = threading.Event()
        warm = asyncio.get_running_loop().run_in_executor(None, schemas.warm_up, None, stopping.is_set)
        warm.add_done_callback(_freeze_heap)
        try:
            yield gw
        finally:
            stopping.set()
            await api.stop()
            for transport in reversed(legacy):
                await transport.stop()
            # The server's stop waits for every connection handler to return, and a handler
            # returns only when its charger's socket closes: stop listening, close the sessions
            # (1001 to each charger), then wait. A charger that slipped in meanwhile is closed too.
            stopped = asyncio.ensure_future(server.stop())
            await hub.close()
            for _ in range(5):  # bounded: a connection that will not finish is dropped after ~10 s
                if (await asyncio.wait({stopped}, timeout=2.0))[0]:
                    break
                await hub.close()
            else:
                log.warning("%d connections still open after 10 s; dropping them", server.abort_connections())
            await stopped
            await txlog.stop()
            with contextlib.suppress(Exception):
                await warm


def _freeze_heap(_: Any = None) -> None:
    """Once started (modules, settings, every compiled schema: tens of thousands of objects that
    live as long as the process), move what exists into the collector's permanent generation, so
    its full collections stop scanning it again and again while frames flow (gc.freeze). No
    gc.collect() first: that full pass would stall the event loop for as long as the heap is big
    (an embedding process, such as the test runner, may hold a large one)."""
    gc.freeze()


async def _start_telemetry(settings: Settings, hub: Hub, stack: contextlib.AsyncExitStack) -> None:
    """MQTT and InfluxDB sinks when their url is set, fed by one observer of every session."""
    from gateway.telemetry.observer import GATHER, TelemetryObserver

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
        observer = TelemetryObserver(sinks, gather=GATHER)
        hub.observers.append(observer)
        stack.callback(observer.flush)  # on the way down: what it kept reaches the sinks before they stop


def _start_control(settings: Settings, hub: Hub, stack: contextlib.AsyncExitStack) -> Any:
    """Local control (pause/resume, site limit, derating): an observer of every session that
    publishes its changes through the telemetry sinks; REST and MQTT reach it as `hub.control`."""
    from pathlib import Path

    from gateway.control.engine import ControlEngine
    from gateway.telemetry.observer import TelemetryObserver

    sinks = [s for o in hub.observers if isinstance(o, TelemetryObserver) for s in o.sinks]
    engine = ControlEngine(settings, hub, sinks, state_file=Path(settings.data_dir) / "control-state.json")
    hub.observers.append(engine)
    hub.control = engine
    stack.push_async_callback(engine.close)
    return engine


def _operations(settings: Settings, hub: Hub, store: Any, stack: contextlib.AsyncExitStack) -> Any:
    """The REST API (with its metrics and status observers), the traffic journal and the debug
    frame log. The journal closes with the exit stack, after the hub."""
    from adapters.api import ApiServer
    from gateway.logs import FrameLog

    if settings.logging.journal:
        from adapters.journal import Journal

        journal = Journal(settings.logging.journal, settings.logging.journal_max_mb * 1024 * 1024)
        stack.callback(journal.close)
        hub.observers.append(journal)
    frames = FrameLog()
    if frames.enabled():
        hub.observers.append(frames)
    return ApiServer(settings, hub, checks={"store": lambda: store._db is not None})


async def _start_legacy(settings: Settings, hub: Hub, gw: Gateway) -> list[Any]:
    """The SOAP (OCPP-S 1.5/1.6) and HTTP-binding charger transports, when enabled."""
    started: list[Any] = []
    if settings.soap.enabled:
        from adapters.soap.server import SoapServer

        gw.soap = await SoapServer(settings, hub).start()
        started.append(gw.soap)
        log.info("listening for OCPP-S on %s%s", settings.soap.listen, settings.soap.path)
    if settings.http.enabled:
        from adapters.http_binding import HttpBinding

        gw.http = await HttpBinding(settings, hub).start()
        started.append(gw.http)
        log.info("listening for OCPP-J over HTTP on %s%s/{charger_id}", settings.http.listen, settings.http.path)
    return started


async def _start_api(api: Any) -> Any:
    """The relay does not depend on the operations API: if its port cannot be bound, say so loudly
    and keep serving chargers (/healthz then fails, which is what a supervisor watches)."""
    try:
        return await api.start()
    except OSError as exc:
        log.error("REST API not available: %s", exc)
        return None


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
