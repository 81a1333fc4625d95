"""OCPP-S charger-facing transport: the CentralSystemService for OCPP 1.5 and 1.6 on one endpoint.

`POST http://HOST:PORT{soap.path}` (aiohttp). Each request is a SOAP 1.2 envelope; the version is the
namespace of the body's element (`urn://Ocpp/Cs/2012/06/` = 1.5, `urn://Ocpp/Cs/2015/10/` = 1.6).
The charger is named by the `chargeBoxIdentity` header (matched case-insensitively); its own
ChargePointService endpoint is `[chargers.ID].soap_endpoint`, else learned from `wsa:From` under the
rules of `adapters/soap/endpoints.py` (kept in `data_dir/soap-endpoints.json`). Commands to it are
posted without following redirects.

Hostile traffic (docs/security.md): with HTTP Basic credentials the charger is authenticated (the
Basic user is the charger id) before any XML is parsed, and the envelope must then name that id;
a request without credentials is refused unparsed unless some charger may be on profile 0. Parsing
and decoding run in a small worker pool (`SOAP_WORKERS` threads) under the codec's element, depth
and size limits, so no SOAP traffic stalls the relay on the event loop.

A SOAP charger is a charger session like any other (`gateway.session`): its requests enter the
session as OCPP-J 1.6 CALLs, so upstream it is an OCPP 1.6J charger; the session's CALLs for it
(CSMS commands, the gateway's own) are turned into SOAP requests to its endpoint (zeep builds and
reads the bodies, aiohttp carries them, nothing blocks the event loop) and the answers go back into
the session. Session policy: see `adapters/polled.py`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import aiohttp
from aiohttp import web

from adapters import listen
from adapters.charger_auth import AuthRefusal, ChargerAuth
from adapters.polled import CappedRunner, LinkRegistry, PolledLink, TooLarge, TooSlow, new_call_id, read_limited
from adapters.soap import codec, convert
from adapters.soap.codec import SoapError
from adapters.soap.contract import CP, CS, V15, Operation, contract
from adapters.soap.endpoints import EndpointBook, is_endpoint
from gateway.config import Settings
from gateway.errors import LinkClosed, LinkFailed
from gateway.identity import validate_charger_id
from gateway.security import parse_basic
from gateway.protocol import frames as F
from gateway.protocol.frames import ErrorCode, OcppVersion, parse_error_code
from gateway.ports import ChargerIngress

log = logging.getLogger("gateway.soap")
_T = TypeVar("_T")
_BASIC = {"WWW-Authenticate": 'Basic realm="ocpp", charset="UTF-8"'}

# CALLERROR code (from the session or the CSMS) -> SOAP Fault (S16 §4; O16 errata maps
# PropertyConstraintViolation to Sender/ProtocolError and NotSupported to Receiver/NotSupported)
_FAULTS = {
    ErrorCode.NOT_IMPLEMENTED: ("Receiver", "NotSupported"),
    ErrorCode.NOT_SUPPORTED: ("Receiver", "NotSupported"),
    ErrorCode.SECURITY_ERROR: ("Sender", "SecurityError"),
    ErrorCode.PROTOCOL_ERROR: ("Sender", "ProtocolError"),
    ErrorCode.FORMAT_VIOLATION: ("Sender", "ProtocolError"),
    ErrorCode.PROPERTY_CONSTRAINT_VIOLATION: ("Sender", "ProtocolError"),
    ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION: ("Sender", "ProtocolError"),
    ErrorCode.TYPE_CONSTRAINT_VIOLATION: ("Sender", "ProtocolError"),
}

# SOAP Fault sub-code from a charger -> CALLERROR code for the CSMS
_ERRORS = {
    "NotSupported": ErrorCode.NOT_SUPPORTED,
    "SecurityError": ErrorCode.SECURITY_ERROR,
    "IdentityMismatch": ErrorCode.SECURITY_ERROR,
    "ProtocolError": ErrorCode.PROTOCOL_ERROR,
    "InternalError": ErrorCode.INTERNAL_ERROR,
}


_is_endpoint = is_endpoint
SOAP_WORKERS = 2  # threads that parse and decode SOAP bodies: at most this many compete with the event loop


@dataclass
class _Request:
    headers: codec.Addressing
    version: str
    op: Operation
    payload: dict[str, Any]


def _read_request(data: bytes) -> _Request:
    """Parse and decode a charger's request (in the worker pool). A SoapError carries the namespace
    and message id read so far, for its Fault."""
    namespace, relates_to = contract(CS, "1.6").namespace, None
    try:
        env = codec.parse_envelope(data)
        headers = codec.read_headers(env)
        relates_to = headers.message_id
        c, op, is_response, _ = codec.lookup(CS, env)
        namespace = c.namespace
        if is_response:
            raise SoapError("Sender", "ProtocolError", f"{op.response.name} is not a request")
        payload = codec.decode(CS, c.version, op, False, env)
        if c.version == V15:
            payload = convert.up(op.name, payload, False)
        return _Request(headers, c.version, op, payload)
    except SoapError as exc:
        exc.namespace, exc.relates_to = namespace, relates_to  # type: ignore[attr-defined]
        raise


def _read_answer(data: bytes, action: str) -> tuple[str, Any]:
    """A charger's answer to `action` (in the worker pool): ("fault", Fault) or ("result", payload)."""
    renv = codec.parse_envelope(data)
    fault = codec.read_fault(renv)
    if fault is not None:
        return "fault", fault
    rc, rop, is_response, _ = codec.lookup(CP, renv)
    if rop.name != action or not is_response:
        raise SoapError("Sender", "ProtocolError", f"expected {action}Response")
    result = codec.decode(CP, rc.version, rop, True, renv)
    if rc.version == V15:
        result = convert.up(action, result, True)
    return "result", result


def _xml_attr(text: str) -> bytes:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").encode("utf-8")


class SoapChargerLink(PolledLink):
    transport = "soap"

    def __init__(self, server: "SoapServer", charger_id: str, remote: str) -> None:
        super().__init__(charger_id, remote)
        self.server = server
        self.soap_version = "1.6"
        self.gateway_address: str | None = None  # where the charger reached us: our wsa:From towards it

    def on_closed(self) -> None:
        self.server.registry.forget(self)

    async def deliver_call(self, text: str, frame: list[Any]) -> None:
        if len(frame) != 4 or not isinstance(frame[2], str) or not isinstance(frame[3], dict):
            return
        self.busy += 1
        self.spawn(self._call(frame[1], frame[2], frame[3]))

    async def _call(self, message_id: str, action: str, payload: dict[str, Any]) -> None:
        try:
            reply = await self._soap_call(message_id, action, payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is an answer for the caller
            log.exception("%s: %s to the charger failed", self.charger_id, action)
            reply = F.call_error(OcppVersion.V16, message_id, ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}")
        finally:
            self.busy -= 1
        if self.closed or self.session is None:
            return
        self.touch()
        await self.session.from_charger(reply)

    async def _soap_call(self, message_id: str, action: str, payload: dict[str, Any]) -> str:
        v16 = OcppVersion.V16
        version = self.soap_version
        if version == V15 and action in convert.NOT_IN_15:
            return F.call_error(v16, message_id, ErrorCode.NOT_SUPPORTED, f"{action} does not exist in OCPP 1.5")
        c = contract(CP, version)
        op = c.operations.get(action)
        if op is None:
            code = ErrorCode.NOT_SUPPORTED if self.server.hub.schemas.knows(v16, action) else ErrorCode.NOT_IMPLEMENTED
            return F.call_error(v16, message_id, code, f"{action} is not an OCPP-S operation")
        violation = self.server.hub.schemas.validate(v16, action, payload)
        if violation is not None:  # what a 1.6J charger would answer; zeep is never given a bad payload
            return F.call_error(v16, message_id, violation.code, violation.description)
        endpoint = self.server.endpoints.get(self.charger_id)
        if not endpoint:
            return F.call_error(v16, message_id, ErrorCode.GENERIC_ERROR,
                                "the charger's endpoint is unknown (it sent no wsa:From that could be taken)")
        body = convert.down(action, payload, False) if version == V15 else payload
        try:
            env = codec.encode(CP, version, op, False, body)
        except (ValueError, TypeError) as exc:
            return F.call_error(v16, message_id, ErrorCode.FORMAT_VIOLATION, f"cannot express in OCPP-S: {exc}")
        request_id = codec.new_message_id()
        codec.add_headers(env, c.namespace, action=op.action, message_id=request_id, identity=self.charger_id,
                          from_address=self.gateway_address, reply_to=codec.WSA_ANONYMOUS, to=endpoint)
        data = codec.to_bytes(env)
        # inside the session's own deadline for this call, so that the answer is never late
        timeout = max(0.5, self.server.settings.websocket.call_timeout * 0.9)
        try:
            async with self.server.http.post(
                endpoint, data=data, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False,
                headers={"Content-Type": f'{codec.CONTENT_TYPE}; action="{op.action}"'},
            ) as resp:
                if 300 <= resp.status < 400:  # never followed: the command goes to the endpoint or nowhere
                    log.warning("%s: %s to %s answered HTTP %d (a redirect): not followed", self.charger_id, action,
                                endpoint, resp.status)
                    return F.call_error(v16, message_id, ErrorCode.GENERIC_ERROR,
                                        f"the charger's endpoint answered a redirect (HTTP {resp.status}), not followed")
                answer = await read_limited(resp.content, self.server.settings.soap.max_body_size)
        except TooLarge:
            return F.call_error(v16, message_id, ErrorCode.PROTOCOL_ERROR, "the charger's answer is too large")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("%s: %s to %s failed: %s", self.charger_id, action, endpoint, exc or type(exc).__name__)
            return F.call_error(v16, message_id, ErrorCode.GENERIC_ERROR,
                                f"charger endpoint unreachable or silent: {type(exc).__name__}")
        try:
            kind, value = await self.server.in_pool(_read_answer, answer, action)
        except SoapError as exc:
            log.warning("%s: bad answer to %s: %s", self.charger_id, action, exc)
            return F.call_error(v16, message_id, ErrorCode.PROTOCOL_ERROR, f"bad SOAP answer: {exc.reason}")
        if kind == "fault":
            code = _ERRORS.get(value.subcode, ErrorCode.GENERIC_ERROR)
            return F.call_error(v16, message_id, code, f"SOAP Fault {value.code}/{value.subcode}: {value.reason}")
        return F.call_result(message_id, value)


class SoapServer:
    def __init__(self, settings: Settings, hub: ChargerIngress, auth: ChargerAuth | None = None) -> None:
        self.settings = settings
        self.hub = hub
        self.path = settings.soap.path
        self.registry = LinkRegistry(hub, settings.soap.idle_timeout)
        self.auth = auth if auth is not None else ChargerAuth(settings, hub)  # app.py shares the WebSocket port's
        self.endpoints = EndpointBook(settings)  # who may move a charger's endpoint (adapters/soap/endpoints.py)
        self._pool = ThreadPoolExecutor(SOAP_WORKERS, thread_name_prefix="soap")
        self._open_profile = settings.websocket.security_profile == 0 or any(
            c.security_profile == 0 for c in settings.chargers.values())  # may a request come without credentials?
        self._runner: web.AppRunner | None = None
        self._sockets: list[socket.socket] = []
        self._port: int | None = None
        self.http: aiohttp.ClientSession = None  # type: ignore[assignment]
        self._warm: asyncio.Future[None] | None = None

    # -- endpoints and the worker pool -------------------------------------------------------------

    async def in_pool(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run XML work in the SOAP worker pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _learn_endpoint(self, charger_id: str, address: str | None, source: str) -> None:
        if not self.endpoints.offer(charger_id, address, source):
            return
        try:
            await asyncio.to_thread(self.endpoints.save)
        except OSError as exc:
            log.warning("could not save SOAP endpoints: %s", exc)

    # -- requests ----------------------------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.soap.max_body_size
        if request.content_length is not None and request.content_length > limit and \
                request.headers.get("Content-Encoding", "identity").strip().lower() == "identity":
            raise SoapError("Sender", "ProtocolError", "request body too large")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate", ""):
            raise SoapError("Sender", "ProtocolError", f"unsupported Content-Encoding {encoding!r}")
        try:
            # aiohttp undoes gzip and deflate (S16 §6.1) while streaming: no more than the limit is kept
            return await read_limited(request.content, limit)
        except TooLarge as exc:
            raise SoapError("Sender", "ProtocolError", "request body too large") from exc
        except TooSlow as exc:
            raise SoapError("Sender", "ProtocolError", str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - aiohttp raises its own errors for a corrupt body
            raise SoapError("Sender", "ProtocolError", f"cannot decode the {encoding} body: {exc}") from exc

    async def _handle(self, request: web.Request) -> web.Response:
        namespace = contract(CS, "1.6").namespace
        relates_to = None
        charger_id = None
        try:
            data = await self._read_body(request)
            # authentication before any XML is parsed: the Basic user is the charger id
            authorization = request.headers.get("Authorization")
            creds = parse_basic(authorization)
            user = creds[0].decode("utf-8", "replace") if creds is not None else None
            if user is not None and validate_charger_id(user) is None:
                refusal = await self.auth.check(user, request.remote or "?", authorization, port="SOAP")
                if refusal is not None:
                    return self._refused(refusal, namespace, None)
            elif not self._open_profile:  # every charger must authenticate: nothing to parse
                return self._refused(AuthRefusal(401, "no Basic credentials", dict(_BASIC)), namespace, None)
            try:
                req = await self.in_pool(_read_request, data)
            except SoapError as exc:
                namespace = getattr(exc, "namespace", namespace)
                relates_to = getattr(exc, "relates_to", None)
                raise
            headers, op, payload = req.headers, req.op, req.payload
            c = contract(CS, req.version)
            namespace = c.namespace
            relates_to = headers.message_id
            if headers.action and headers.action != op.action:
                log.warning("wsa:Action %r does not match the body %s", headers.action[:80], op.request.name)
            charger_id = headers.identity
            if not charger_id:
                raise SoapError("Sender", "ProtocolError", "the chargeBoxIdentity header is missing")
            problem = validate_charger_id(charger_id)
            if problem:
                raise SoapError("Sender", "ProtocolError", f"chargeBoxIdentity: {problem}")
            if user is not None and charger_id != user:
                raise SoapError("Sender", "IdentityMismatch", "chargeBoxIdentity is not the authenticated charger")
            if user is None:  # profile 0 possible: the id is known only now
                refusal = await self.auth.check(charger_id, request.remote or "?", authorization, port="SOAP")
                if refusal is not None:
                    return self._refused(refusal, namespace, relates_to)
            if not self.hub.admits(charger_id):
                raise SoapError("Sender", "SecurityError", "unknown charge box")
            try:
                link = await self._link(charger_id, request, headers, req.version)
            except LinkFailed as exc:
                raise SoapError("Receiver", "InternalError", f"the CSMS is unreachable (strict mode): {exc}") from exc
            message_id = new_call_id("s")
            timeout = self.settings.upstream.call_timeout * 2 + 5
            try:
                reply = await link.request(message_id, F.call(message_id, op.name, payload), timeout)
            except (asyncio.TimeoutError, LinkClosed) as exc:
                raise SoapError("Receiver", "InternalError", f"no answer: {type(exc).__name__}") from exc
            if reply[0] != 3:
                code = parse_error_code(str(reply[2])) or ErrorCode.INTERNAL_ERROR
                fcode, sub = _FAULTS.get(code, ("Receiver", "InternalError"))
                raise SoapError(fcode, sub, f"{reply[2]}: {reply[3] if len(reply) > 3 else ''}")
            result = reply[2]
            if op.name == "BootNotification" and isinstance(result.get("interval"), int):
                link.heartbeat_interval = result["interval"]
            if c.version == V15:
                result = convert.down(op.name, result, True)
            out = codec.encode(CS, req.version, op, True, result)
            codec.add_headers(out, c.namespace, action=op.action + "Response", message_id=codec.new_message_id(),
                              relates_to=headers.message_id, to=codec.WSA_ANONYMOUS)
            return web.Response(body=codec.to_bytes(out), content_type="application/soap+xml", charset="utf-8")
        except Exception as exc:  # noqa: BLE001 - e.g. an answer zeep cannot express: still a SOAP Fault
            if isinstance(exc, SoapError):
                err = exc
            else:
                log.exception("SOAP request from %s failed", charger_id or request.remote)
                err = SoapError("Receiver", "InternalError", f"internal error ({type(exc).__name__})")
            log.warning("SOAP Fault %s/%s for %s from %s: %s", err.code, err.subcode, charger_id or "?",
                        request.remote, err.reason, extra={"charger_id": charger_id} if charger_id else {})
            return web.Response(status=err.http_status, body=codec.fault(err, namespace, relates_to),
                                content_type="application/soap+xml", charset="utf-8")

    def _refused(self, refusal: AuthRefusal, namespace: str, relates_to: str | None) -> web.Response:
        # OCPP-S has no authentication of its own: HTTP Basic, as for OCPP-J (docs/chargers.md, "SOAP chargers")
        err = SoapError("Sender", "SecurityError", refusal.body)
        return web.Response(status=refusal.status, headers=refusal.headers, body=codec.fault(err, namespace, relates_to),
                            content_type="application/soap+xml", charset="utf-8")

    async def _link(self, charger_id: str, request: web.Request, headers: codec.Addressing,
                    version: str) -> SoapChargerLink:
        link = await self.registry.get(charger_id, lambda: SoapChargerLink(self, charger_id, request.remote or "?"))
        assert isinstance(link, SoapChargerLink)
        link.soap_version = version
        link.remote = request.remote or link.remote
        link.gateway_address = headers.to if _is_endpoint(headers.to) else str(request.url)
        await self._learn_endpoint(charger_id, headers.from_address, request.remote or "?")
        return link

    async def _get(self, request: web.Request) -> web.Response:
        """`GET {path}?wsdl` (1.6) or `?wsdl=1.5`: the gateway's own generated contract."""
        if "wsdl" not in request.query:
            return web.Response(status=405, text="OCPP-S: POST a SOAP 1.2 envelope\n", headers={"Allow": "POST"})
        version = request.query.get("wsdl") or "1.6"
        if version not in ("1.5", "1.6"):
            return web.Response(status=404, text="versions: 1.5, 1.6\n")
        text = contract(CS, version).wsdl().replace(b"http://localhost/ocpp-s", _xml_attr(str(request.url.with_query(None))))
        return web.Response(body=text, content_type="text/xml", charset="utf-8")

    # -- lifecycle ---------------------------------------------------------------------------------

    async def bind(self) -> "SoapServer":
        """Bind `[soap].listen` (requests wait until `serve`); ListenerUnavailable names the key."""
        self._sockets = listen.bind("soap.listen", self.settings.soap.listen)
        self._port = int(self._sockets[0].getsockname()[1])
        return self

    async def start(self) -> "SoapServer":
        await self.bind()
        await self.serve()
        return self

    async def serve(self) -> None:
        app = web.Application(client_max_size=self.settings.soap.max_body_size + 1024)
        app.router.add_post(self.path, self._handle)
        app.router.add_get(self.path, self._get)
        self.http = aiohttp.ClientSession(auto_decompress=True)
        cfg = self.settings.soap
        self._runner = CappedRunner(app, max_connections=cfg.max_connections, idle_timeout=cfg.idle_connection_timeout,
                                    name="SOAP")
        await self._runner.setup()
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            await web.SockSite(self._runner, sock).start()
        self.registry.start()
        # load the generated contracts into zeep now, off the event loop
        self._warm = asyncio.get_running_loop().run_in_executor(None, codec.warm_up)

    @property
    def port(self) -> int:
        assert self._port is not None, "not bound"
        return self._port

    async def stop(self) -> None:
        if self._warm is not None:
            try:
                await self._warm
            except Exception:  # noqa: BLE001 - a contract that failed to load fails its requests instead
                log.exception("loading the OCPP-S contracts failed")
        await self.registry.stop()
        runner, self._runner = self._runner, None
        await listen.release(runner, self._sockets)
        if self.http is not None:
            await self.http.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
