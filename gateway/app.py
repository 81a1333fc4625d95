"""The composition root: reads the settings, builds the enabled adapters and starts them through one
`AsyncExitStack`, runs until SIGTERM/SIGINT, and stops them in the reverse order of start.

The order of start, each step's undo pushed on the stack as it succeeds (so a failed start undoes
exactly what had started, and nothing else):

1. the exclusive lock of data_dir (adapters/datadir.py): a second gateway on the same data_dir
   stops here (AlreadyRunning, exit 3) having touched nothing;
2. the store is checked (adapters/store_check.py: a damaged one stops the start, StoreDamaged,
   exit 5), opened, and the install id drawn if this is the first start;
3. the hub and the transaction log;
4. every listener is bound: the charger ports (WebSocket, SOAP, HTTP binding) and the API (with
   the journal and frame log observers). A charger port that cannot be bound ends the start here
   (ListenerUnavailable, exit 4), before any outside connection; the API is optional: the gateway
   runs on without it and the log line says how to fix it;
5. the outside connections: the MQTT and InfluxDB sinks, then local control;
6. the hub loads the authorization lists and resumes the outboxes left by an earlier run (the
   first upstream dials);
7. the listeners serve: charger connections that waited in the accept queue are taken; systemd
   hears READY=1 and, with WatchdogSec, WATCHDOG=1 from then on (adapters/systemd.py).

On the way down the stack runs backwards: STOPPING=1, the listeners stop serving and the chargers
are closed (1001), then control, the telemetry observer's flush and the sinks, the transaction
log, the store, the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol

from gateway.config import Settings
from gateway.errors import ListenerUnavailable
from gateway.operator import Operator
from gateway.heap import HeapKeeper
from gateway.hub import Hub
from gateway.protocol.schemas import SchemaRegistry

if TYPE_CHECKING:
    from adapters.api import ApiServer
    from adapters.charger_auth import ChargerAuth
    from adapters.http_binding import HttpBinding
    from adapters.metrics import Metrics
    from adapters.soap.server import SoapServer
    from adapters.sqlite_store import SqliteStore
    from adapters.telemetry_sink import SpooledSink
    from adapters.picows_server import PicowsServer
    from adapters.upstream_picows import PicowsUpstreamConnector
    from adapters.upstream_ws import WsUpstreamConnector
    from adapters.websocket_server import WebSocketServer
    from gateway.control.engine import ControlEngine
    from gateway.telemetry.observer import TelemetryObserver
    from gateway.mirror import VariablesMirror
    from gateway.txlog import TransactionLog

log = logging.getLogger("gateway")

STOP_GRACE = 2.0  # s per round of closing chargers on the way down
STOP_ROUNDS = 5  # rounds before the connections still open are dropped (~10 s)


class Gateway:
    """A running gateway (use `running()`); exposes the hub and the bound ports for tests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub: Hub | None = None
        self.ws_port: int | None = None
        self.api: ApiServer | None = None  # when the API is listening
        self.soap: SoapServer | None = None  # when [soap].enabled
        self.http: HttpBinding | None = None  # when [http].enabled
        self.control: ControlEngine | None = None  # local control
        self.txlog: TransactionLog | None = None
        self.variables: VariablesMirror | None = None


class _Listener(Protocol):
    async def serve(self) -> None: ...
    async def stop(self) -> None: ...


def upstream_connector(settings: Settings) -> WsUpstreamConnector | PicowsUpstreamConnector | None:
    """The upstream leg's connector, by `[upstream].transport`: picows, unless compression is on
    (picows has no permessage-deflate: websockets carries it then); None when no upstream is set."""
    up = settings.upstream
    if not up.url:
        return None
    if up.transport == "picows":
        if not up.compression:
            from adapters.upstream_picows import PicowsUpstreamConnector
            return PicowsUpstreamConnector(settings)
        log.info("upstream links on websockets, not picows: [upstream].compression is on and picows has no "
                 "permessage-deflate")
    from adapters.upstream_ws import WsUpstreamConnector
    return WsUpstreamConnector(settings)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Gateway]:
    async with contextlib.AsyncExitStack() as stack:
        yield await _start(settings, stack)


async def _start(settings: Settings, stack: contextlib.AsyncExitStack) -> Gateway:
    from adapters.datadir import InstanceLock, install_id, mqtt_client_id
    from adapters.sqlite_store import SqliteStore
    from adapters.credentials import CredentialBook
    from adapters.store_check import startup_check
    from adapters.systemd import Notifier
    from adapters.websocket_server import WebSocketServer
    from gateway.txlog import TransactionLog

    started = time.monotonic()
    gw = Gateway(settings)
    schemas = SchemaRegistry(list(settings.websocket.versions), cache_dir=cache_dir(settings))
    # 1. one gateway per data_dir
    stack.enter_context(InstanceLock(settings.data_dir))
    # 2. the store: checked, opened; the install id once a store exists
    await asyncio.to_thread(startup_check, settings.data_dir)
    off = settings.offline
    store = await stack.enter_async_context(SqliteStore(settings.data_dir, status_history=off.status_history,
                                                        id_map_grace=off.id_map_grace, id_map_max=off.id_map_max))
    install = await asyncio.to_thread(install_id, settings.data_dir)
    # 3. the hub and the transaction log (behind /api/v1/transactions)
    connector = upstream_connector(settings)
    hub = gw.hub = Hub(settings, store, schemas, connector)
    hub.heap = HeapKeeper()  # sessions out of the collector's full passes once they settle
    stack.callback(hub.heap.close)
    txlog = gw.txlog = TransactionLog(store)
    txlog.start()
    stack.push_async_callback(txlog.stop)
    hub.observers.append(txlog)
    # 4. every listener bound; none serves yet. The credential book (passwords the CSMS changed)
    # sees every session, checks every charger port's logins and signs the upstream links.
    credentials = CredentialBook(settings)
    stack.push_async_callback(credentials.drain)  # after the chargers are closed: their password changes are on disk
    hub.observers.append(credentials)
    if connector is not None:
        connector.credentials = credentials
    server: WebSocketServer | PicowsServer
    if settings.websocket.transport == "picows":
        from adapters.picows_server import PicowsServer

        server = PicowsServer(settings, hub, credentials)
    else:
        server = WebSocketServer(settings, hub, credentials)
    stack.push_async_callback(server.stop)  # closes the bound socket if the start fails before serving
    await server.bind()
    gw.ws_port = server.port
    legacy = await _bind_legacy(settings, hub, gw, stack, server.auth)  # one charger authentication for all ports
    operator = Operator(hub.sessions, hub.schemas)  # operator calls of REST and MQTT; control joins below
    api = _operations(settings, hub, store, stack, operator)
    gw.api = await _bind_api(api, stack)
    api.checks["websocket"] = server.serving
    _warn(settings)  # here: a start that fails before (exit 3, 4, 5) prints its one line, nothing else
    if gw.soap is not None:
        api.extra_views["soap_endpoint"] = gw.soap.endpoints.view  # every endpoint change shows in the API
    # 5. outside connections: telemetry sinks (MQTT, InfluxDB), then local control
    mqtt_id = settings.mqtt.client_id or mqtt_client_id(settings.site_id, install)
    telemetry = await _start_telemetry(settings, hub, stack, operator, mqtt_id, api.metrics)
    gw.control = operator.control = _start_control(settings, hub, stack, telemetry)
    # 5. the variables mirror (reads chargers after their boot; publishes through the telemetry plane)
    gw.variables = operator.variables = _start_variables(settings, hub, store, stack, telemetry)
    # 6. chargers known from earlier runs are listed (disconnected); outboxes left by an earlier run
    # resume (their upstream links dial now). On the way down the last states are saved after hub.close.
    stack.push_async_callback(api.known.stop)
    await api.known.start()
    stack.push_async_callback(hub.close)
    await hub.start()
    # 7. serve; on the way down this is undone first
    systemd = Notifier()
    stack.push_async_callback(_stop_serving, server, hub, legacy, gw.api)
    stack.push_async_callback(systemd.stop)  # first on the way down: STOPPING=1, no more watchdog pings
    await server.serve()
    for transport in legacy:
        await transport.serve()
    if gw.api is not None:
        await gw.api.serve()
    mode = f"relaying to {settings.upstream.url}" if settings.upstream.url else "standalone"
    log.info("listening for OCPP-J on %s%s/{charger_id} (%s) after %.0f ms", settings.websocket.listen,
             settings.websocket.path, mode, (time.monotonic() - started) * 1000)
    systemd.ready(f"serving chargers on {settings.websocket.listen}")
    systemd.start_watchdog(lambda: server.serving() and store.is_open())
    _warm_up(schemas, stack, hub.heap)
    return gw


def _warm_up(schemas: SchemaRegistry, stack: contextlib.AsyncExitStack, heap: HeapKeeper) -> None:
    """Compile every schema in a worker thread now that the ports are open; until a schema is
    compiled, its first use compiles it on demand. Stopped (between two schemas) on the way down."""
    stopping = threading.Event()
    began = time.monotonic()
    warm = asyncio.get_running_loop().run_in_executor(None, schemas.warm_up, None, stopping.is_set)

    def ready(done: asyncio.Future[int]) -> None:
        if not done.cancelled() and done.exception() is None:
            log.info("schemas ready after %.0f ms: %d validators, %d from the cache, %d compiled",
                     (time.monotonic() - began) * 1000, done.result(), schemas.from_cache, schemas.compiled)
        heap.started()

    warm.add_done_callback(ready)

    async def stop() -> None:
        stopping.set()
        with contextlib.suppress(Exception):
            await warm

    stack.push_async_callback(stop)


async def _stop_serving(server: WebSocketServer | PicowsServer, hub: Hub, legacy: list[_Listener], api: ApiServer | None) -> None:
    """The API and the SOAP/HTTP transports stop; then the charger listener: the server's stop
    waits for every connection handler to return, and a handler returns only when its charger's
    socket closes, so: stop listening, close the sessions (1001 to each charger), then wait. A
    charger that slipped in meanwhile is closed too; one that will not finish is dropped."""
    if api is not None:
        await api.stop()
        _unobserve(hub, api.observers)
    for transport in reversed(legacy):
        await transport.stop()
    stopped = asyncio.create_task(server.stop(), name="websocket:stop")
    try:
        await hub.close()
        for _ in range(STOP_ROUNDS):
            if (await asyncio.wait({stopped}, timeout=STOP_GRACE))[0]:
                break
            await hub.close()
        else:
            log.warning("%d connections still open after %.0f s; dropping them", server.abort_connections(),
                        STOP_ROUNDS * STOP_GRACE)
    finally:
        await stopped


def cache_dir(settings: Settings) -> Path:
    """Where compiled schema validators are kept: `cache_dir`, else data_dir/cache."""
    return Path(settings.cache_dir or Path(settings.data_dir) / "cache")


def _warn(settings: Settings) -> None:
    """What `check-config` warns about, logged once where the operator looks."""
    from gateway.security import configuration_warnings

    for warning in configuration_warnings(settings):
        log.warning("configuration: %s", warning)


async def _start_telemetry(settings: Settings, hub: Hub, stack: contextlib.AsyncExitStack,
                           operator: Operator, mqtt_client_id: str, metrics: Metrics) -> TelemetryObserver | None:
    """MQTT and InfluxDB sinks when their url is set, fed by one observer of every session (which
    it returns; None without sinks), their figures shown by `metrics`. MQTT commands are operator calls."""
    from gateway.telemetry.observer import GATHER, TelemetryObserver

    sinks: list[SpooledSink[Any]] = []
    if settings.mqtt.url.get_secret_value():
        from adapters.mqtt import MqttSink

        mqtt = await stack.enter_async_context(MqttSink(settings.mqtt, settings.data_dir, settings.site_id,
                                                         client_id=mqtt_client_id))
        mqtt.attach_operator(operator)
        sinks.append(mqtt)
    if settings.influx.url:
        from adapters.influx import InfluxSink

        sinks.append(await stack.enter_async_context(InfluxSink(settings.influx, settings.data_dir, settings.site_id)))
    if sinks:
        observer = TelemetryObserver(sinks, gather=GATHER)
        hub.observers.append(observer)
        metrics.sinks = tuple(sinks)
        stack.callback(observer.flush)  # on the way down: what it kept reaches the sinks before they stop
        return observer
    return None


def _start_control(settings: Settings, hub: Hub, stack: contextlib.AsyncExitStack,
                   telemetry: TelemetryObserver | None) -> ControlEngine:
    """Local control (pause/resume, site limit, derating): an observer of every session whose
    changes are telemetry records; REST and MQTT reach it through gateway.operator."""
    from gateway.control.engine import ControlEngine

    # its changes are records of the telemetry plane: the observer hands them to the sinks in order
    engine = ControlEngine(settings, hub, telemetry.records if telemetry is not None else None,
                           state_file=Path(settings.data_dir) / "control-state.json")
    hub.observers.append(engine)
    hub.control = engine
    stack.push_async_callback(engine.close)
    return engine


def _start_variables(settings: Settings, hub: Hub, store: SqliteStore, stack: contextlib.AsyncExitStack,
                     telemetry: TelemetryObserver | None) -> VariablesMirror:
    """The variables mirror: an observer of every session, reached by REST, CLI, MQTT (through
    gateway.operator) and local control as `hub.variables`; what it reads are telemetry records
    (MQTT retained topics, Home Assistant entities)."""
    from gateway.mirror import VariablesMirror

    mirror = VariablesMirror(settings, hub, store, telemetry.records if telemetry is not None else None)
    hub.observers.append(mirror)
    hub.variables = mirror
    stack.push_async_callback(mirror.close)
    return mirror


def _operations(settings: Settings, hub: Hub, store: SqliteStore, stack: contextlib.AsyncExitStack,
                operator: Operator) -> ApiServer:
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
    api = ApiServer(settings, hub, checks={"store": store.health}, operator=operator)
    hub.observers.extend(api.observers)  # the status page and the metrics
    stack.callback(_unobserve, hub, api.observers)
    return api


def _unobserve(hub: Hub, observers: tuple[Any, ...]) -> None:
    """The API's observers leave with it (before the sessions close on the way down)."""
    for observer in observers:
        if observer in hub.observers:
            hub.observers.remove(observer)


async def _bind_legacy(settings: Settings, hub: Hub, gw: Gateway, stack: contextlib.AsyncExitStack,
                       auth: ChargerAuth) -> list[_Listener]:
    """The SOAP (OCPP-S 1.5/1.6) and HTTP-binding charger transports, when enabled: bound."""
    bound: list[_Listener] = []
    if settings.soap.enabled:
        from adapters.soap.server import SoapServer

        soap = gw.soap = SoapServer(settings, hub, auth)
        stack.push_async_callback(soap.stop)
        await soap.bind()
        bound.append(soap)
        log.info("listening for OCPP-S on %s%s", settings.soap.listen, settings.soap.path)
    if settings.http.enabled:
        from adapters.http_binding import HttpBinding

        http = gw.http = HttpBinding(settings, hub, auth)
        stack.push_async_callback(http.stop)
        await http.bind()
        bound.append(http)
        log.info("listening for OCPP-J over HTTP on %s%s/{charger_id}", settings.http.listen, settings.http.path)
    return bound


async def _bind_api(api: ApiServer, stack: contextlib.AsyncExitStack) -> ApiServer | None:
    """The relay does not depend on the operations API: if its port cannot be bound, say so loudly
    (and how to move it) and keep serving chargers (/healthz then fails, which is what a
    supervisor watches)."""
    stack.push_async_callback(api.stop)
    try:
        return await api.bind()
    except ListenerUnavailable as exc:
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
