"""Security profiles 0-3 on the charger side, end to end with real TLS on loopback: Basic
credentials (1.6 AuthorizationKey bytes, 2.x BasicAuthPassword, hashed storage), client
certificates bound to the charger id, refusals that say nothing, failed-login rate limit."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from gateway.security import basic_header, hash_password
from tests.security.conftest import Certs, gateway, tls_settings

BOOT16 = '[2,"b1","BootNotification",{"chargePointVendor":"ACME","chargePointModel":"M1"}]'
BOOT201 = '[2,"b1","BootNotification",{"reason":"PowerUp","chargingStation":{"model":"M1","vendorName":"ACME"}}]'
PW = "correct-horse-battery"  # 2.x BasicAuthPassword: 16-40 characters
KEY16 = "0001020304050607FFFFFFFFFFFFFFFFFFFFFFFF"  # J16 §6.2.2's example AuthorizationKey (20 bytes as hex)


async def boots(url: str, subprotocol: str = "ocpp2.0.1", **kw: Any) -> bool:
    """Connect, send a BootNotification, True when answered with a CALLRESULT."""
    async with connect(url, subprotocols=[subprotocol], open_timeout=5, **kw) as ws:  # type: ignore[list-item]
        await ws.send(BOOT16 if subprotocol == "ocpp1.6" else BOOT201)
        return orjson.loads(await asyncio.wait_for(ws.recv(), 5))[0] == 3


async def refused(url: str, subprotocol: str = "ocpp2.0.1", **kw: Any) -> tuple[int, bytes, dict[str, str]]:
    with pytest.raises(InvalidStatus) as info:
        await boots(url, subprotocol, **kw)
    r = info.value.response
    return r.status_code, r.body or b"", dict(r.headers.raw_items())


async def tls_refused(url: str, **kw: Any) -> None:
    """The TLS handshake fails (with TLS 1.3 the client may only see the connection dropped)."""
    try:
        await boots(url, **kw)
    except InvalidStatus as exc:
        raise AssertionError(f"HTTP {exc.response.status_code}: the TLS handshake succeeded") from None
    except (ssl.SSLError, OSError, InvalidHandshake, EOFError):
        return
    raise AssertionError("connected")


def auth(user: str, password: str | bytes) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": basic_header(user, password)}}


async def test_profile_1_basic_auth_2x(tmp_path: Path) -> None:
    async with gateway(tmp_path, websocket={"security_profile": 1, "max_auth_failures": 0},
                       chargers={"CP1": {"password": PW}, "OTHER": {"password": "another-password-123"}}) as gw:
        assert await boots(gw.url("CP1"), **auth("CP1", PW))
        failures = [
            await refused(gw.url("CP1"), **auth("CP1", PW + "x")),  # wrong password
            await refused(gw.url("CP1")),  # no credentials
            await refused(gw.url("CP1"), **auth("OTHER", "another-password-123")),  # someone else's credentials
            await refused(gw.url("NOBODY"), **auth("NOBODY", PW)),  # unknown id (allow_unknown = true)
            await refused(gw.url("CP1"), additional_headers={"Authorization": "Basic !!!"}),
            await refused(gw.url("CP1"), additional_headers={"Authorization": "Bearer " + PW}),
        ]
        for status, body, headers in failures:
            assert status == 401
            assert body == b'{"error":"authentication failed"}'  # one answer for every failure
            assert headers["WWW-Authenticate"].startswith("Basic realm=")
        assert "NOBODY" not in gw.hub.sessions


async def test_profile_1_authorization_key_16(tmp_path: Path) -> None:
    """1.6: the key is configured as hex; the charger sends the decoded bytes (J16 §6.2.2)."""
    async with gateway(tmp_path, websocket={"security_profile": 1, "max_auth_failures": 0},
                       chargers={"AL1000": {"password": KEY16}}) as gw:
        header = "Basic QUwxMDAwOgABAgMEBQYH////////////////"  # J16's own example, byte for byte
        assert basic_header("AL1000", bytes.fromhex(KEY16)) == header
        assert await boots(gw.url("AL1000"), "ocpp1.6", additional_headers={"Authorization": header})
        # the hex text itself, as many 1.6 firmwares send it (either case)
        assert await boots(gw.url("AL1000"), "ocpp1.6", **auth("AL1000", KEY16.lower()))
        status, _, _ = await refused(gw.url("AL1000"), "ocpp1.6", **auth("AL1000", bytes.fromhex(KEY16)[:-1]))
        assert status == 401
        # 2.x compares the configured string as UTF-8: the raw bytes are not it
        status, _, _ = await refused(gw.url("AL1000"), "ocpp2.0.1", **auth("AL1000", bytes.fromhex(KEY16)))
        assert status == 401
        assert await boots(gw.url("AL1000"), "ocpp2.0.1", **auth("AL1000", KEY16))


async def test_hashed_passwords(tmp_path: Path) -> None:
    hashed = hash_password(PW.encode(), iterations=1000)
    key_hash = hash_password(bytes.fromhex(KEY16), iterations=1000)  # `hash-password --hex`
    async with gateway(tmp_path, websocket={"security_profile": 1, "max_auth_failures": 0},
                       chargers={"H1": {"password": hashed}, "H16": {"password": key_hash}}) as gw:
        assert await boots(gw.url("H1"), **auth("H1", PW))
        assert (await refused(gw.url("H1"), **auth("H1", hashed)))[0] == 401  # the stored hash is not the password
        assert (await refused(gw.url("H1"), **auth("H1", PW.upper())))[0] == 401
        assert await boots(gw.url("H16"), "ocpp1.6", **auth("H16", bytes.fromhex(KEY16)))
        assert await boots(gw.url("H16"), "ocpp1.6", **auth("H16", KEY16))


async def test_failed_logins_are_rate_limited_per_address_and_per_id(tmp_path: Path) -> None:
    async with gateway(tmp_path, websocket={"security_profile": 1, "max_auth_failures": 3, "auth_failure_window": 60.0},
                       chargers={"CP1": {"password": PW}, "CP2": {"password": PW}}) as gw:
        assert await boots(gw.url("CP1"), local_addr=("127.0.0.3", 0), **auth("CP1", PW))  # CP1's own address
        for _ in range(3):
            assert (await refused(gw.url("CP1"), **auth("CP1", "guess-guess-guess")))[0] == 401
        status, body, headers = await refused(gw.url("CP1"), **auth("CP1", PW))  # even the right one, for now
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert b"authentication" not in body
        # another source address is not affected for another charger...
        assert await boots(gw.url("CP2"), local_addr=("127.0.0.2", 0), **auth("CP2", PW))
        # ...but CP1's id has no guesses left from anywhere (guessing from many addresses does not help)
        assert (await refused(gw.url("CP1"), local_addr=("127.0.0.4", 0), **auth("CP1", PW)))[0] == 429
        # except from the address CP1 last logged in from: the attacker cannot lock the charger out
        assert await boots(gw.url("CP1"), local_addr=("127.0.0.3", 0), **auth("CP1", PW))


async def test_profile_0_only_where_configured(tmp_path: Path) -> None:
    async with gateway(tmp_path, websocket={"security_profile": 1},
                       chargers={"LEGACY": {"security_profile": 0}, "CP1": {"password": PW}}) as gw:
        assert await boots(gw.url("LEGACY"))
        assert (await refused(gw.url("CP1")))[0] == 401
    async with gateway(tmp_path, websocket={"security_profile": 0, "allow_unknown": False},
                       chargers={"CP1": {}}) as gw:
        assert await boots(gw.url("CP1"))
        assert (await refused(gw.url("STRANGER")))[0] == 404  # no authentication asked: plain OCPP-J rules


async def test_profile_2_tls_and_basic(tmp_path: Path, certs: Certs) -> None:
    async with gateway(tmp_path, websocket=tls_settings(certs, 2), chargers={"CP2": {"password": PW}}) as gw:
        url = gw.url("CP2")
        assert url.startswith("wss://")
        assert await boots(url, ssl=certs.client(), **auth("CP2", PW))
        assert (await refused(url, ssl=certs.client(), **auth("CP2", "wrong-password-wrong")))[0] == 401
        assert (await refused(url, ssl=certs.client()))[0] == 401
        # a charger that does not trust the gateway's certificate does not talk to it
        with pytest.raises(ssl.SSLCertVerificationError):
            await boots(url, ssl=ssl.create_default_context(), **auth("CP2", PW))
        await tls_refused(url, ssl=ssl.create_default_context(), **auth("CP2", PW))
        # TLS below 1.2 is refused (A00.FR.312-316)
        await tls_refused(url, ssl=certs.client(maximum=ssl.TLSVersion.TLSv1_1), **auth("CP2", PW))
        # no plain WebSocket on the TLS port
        with pytest.raises(Exception):  # noqa: B017 - the handshake fails at whichever layer sees the TLS bytes first
            await boots(url.replace("wss://", "ws://"), **auth("CP2", PW))


async def test_profile_3_client_certificate_bound_to_the_id(tmp_path: Path, certs: Certs) -> None:
    async with gateway(tmp_path, websocket=tls_settings(certs, 3), chargers={"CP3": {}, "CP3B": {}}) as gw:
        assert await boots(gw.url("CP3"), ssl=certs.client("CP3"))
        # another charger's (valid) certificate for this id: 401
        status, body, _ = await refused(gw.url("CP3"), ssl=certs.client("CP3B"))
        assert status == 401 and body == b'{"error":"authentication failed"}'
        # no certificate: the TLS handshake itself fails (every charger is on profile 3)
        await tls_refused(gw.url("CP3"), ssl=certs.client())
        # a certificate from another CA, even one that says CN=CP3
        await tls_refused(gw.url("CP3"), ssl=certs.client("CP3", rogue=True))
        # a valid certificate for an id that is not configured, with allow_unknown = true: the CA vouches for it
        assert await boots(gw.url("MIX3"), ssl=certs.client("MIX3"))


async def test_profiles_2_and_3_on_one_port(tmp_path: Path, certs: Certs) -> None:
    """Site profile 2 with one charger on 3: client certificates are optional in TLS, required for it."""
    async with gateway(tmp_path, websocket={**tls_settings(certs, 2), "allow_unknown": False},
                       chargers={"CP2": {"password": PW}, "MIX3": {"security_profile": 3}}) as gw:
        assert await boots(gw.url("MIX3"), ssl=certs.client("MIX3"))
        assert (await refused(gw.url("MIX3"), ssl=certs.client(), **auth("MIX3", PW)))[0] == 401  # no cert
        assert (await refused(gw.url("MIX3"), ssl=certs.client("CP3")))[0] == 401  # someone else's
        assert await boots(gw.url("CP2"), ssl=certs.client(), **auth("CP2", PW))
        assert (await refused(gw.url("CP3"), ssl=certs.client("CP3")))[0] == 401  # not configured here


async def test_secured_site_without_tls_files_refuses_everyone(tmp_path: Path) -> None:
    async with gateway(tmp_path, websocket={"security_profile": 2}, chargers={"CP2": {"password": PW}}) as gw:
        gw.url = lambda cid: f"ws://127.0.0.1:{gw.ws_port}/ocpp/{cid}"
        status, _, _ = await refused(gw.url("CP2"), **auth("CP2", PW))
        assert status == 503


def test_basic_header_helper_is_the_rfc_form() -> None:
    assert basic_header("CP1", "pw") == "Basic " + base64.b64encode(b"CP1:pw").decode()


async def test_unreadable_tls_files_are_a_configuration_error(tmp_path: Path, certs: Certs) -> None:
    from gateway.config import ConfigError

    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="websocket.tls_cert"):
        async with gateway(tmp_path, websocket={**tls_settings(certs, 2), "tls_cert": missing}):
            pass
    with pytest.raises(ConfigError, match="upstream.ca_file"):
        async with gateway(tmp_path, upstream={"url": "wss://127.0.0.1:1/ocpp", "ca_file": missing}):
            pass


async def test_ocpp_package_chargers_over_profiles_2_and_3(tmp_path: Path, certs: Certs) -> None:
    """Chargers built with the independent `ocpp` package: 2.0.1 on profile 2, 1.6 on profile 3."""
    import contextlib

    from ocpp import v16, v201

    async def boot(cp: Any, request: Any) -> Any:
        task = asyncio.create_task(cp.start())
        try:
            return await asyncio.wait_for(cp.call(request), 5)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async with gateway(tmp_path, websocket={**tls_settings(certs, 2), "allow_unknown": False},
                       chargers={"CP2": {"password": PW}, "CP3": {"security_profile": 3}}) as gw:
        async with connect(gw.url("CP2"), subprotocols=["ocpp2.0.1"], ssl=certs.client(),  # type: ignore[list-item]
                           additional_headers={"Authorization": basic_header("CP2", PW)}) as ws:
            answer = await boot(v201.ChargePoint("CP2", ws, response_timeout=5),
                                v201.call.BootNotification(charging_station={"model": "M", "vendorName": "V"},
                                                           reason="PowerUp"))
            assert answer.status == "Accepted"
        async with connect(gw.url("CP3"), subprotocols=["ocpp1.6"], ssl=certs.client("CP3")) as ws:  # type: ignore[list-item]
            answer = await boot(v16.ChargePoint("CP3", ws, response_timeout=5),
                                v16.call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            assert answer.status == "Accepted"


async def test_refusal_time_does_not_reveal_which_ids_exist(tmp_path: Path) -> None:
    """With hashed passwords a wrong password costs a PBKDF2 check; an unknown id costs the same."""
    import time

    stored = hash_password(PW.encode(), iterations=400_000)
    async with gateway(tmp_path, websocket={"security_profile": 1, "max_auth_failures": 0},
                       chargers={"REAL": {"password": stored}}) as gw:
        async def timed(cid: str) -> float:
            t = time.monotonic()
            assert (await refused(gw.url(cid), **auth(cid, "wrong-password-123456")))[0] == 401
            return time.monotonic() - t

        await timed("REAL")  # warm up
        await timed("GHOST")  # (the decoy hash is made at the first unknown id)
        # interleaved, the fastest of ten each: a busy machine slows single samples, not all ten
        reals, ghosts = [], []
        for _ in range(10):
            reals.append(await timed("REAL"))
            ghosts.append(await timed("GHOST"))
        real, ghost = min(reals), min(ghosts)
        assert ghost > real * 0.6, (real, ghost)  # both pay for one PBKDF2 check of the same cost
