"""Slow clients on the SOAP and HTTP-binding ports (aiohttp) do not stall anyone else: with dozens of
connections sending half a request or trickling a body, a WebSocket charger, an HTTP device and a
SOAP charger are all still answered; such connections are closed after `idle_connection_timeout`,
and beyond `max_connections` a port answers 503."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import connect

from tests.harness import free_port
from tests.security.conftest import gateway

SOAP_HEARTBEAT = ('<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
                  'xmlns:o="urn://Ocpp/Cs/2015/10/" xmlns:a="http://www.w3.org/2005/08/addressing"><s:Header>'
                  '<o:chargeBoxIdentity>SOAP1</o:chargeBoxIdentity><a:Action>/Heartbeat</a:Action>'
                  '<a:MessageID>urn:uuid:1</a:MessageID><a:To>http://x/ocpp-s</a:To></s:Header><s:Body>'
                  '<o:heartbeatRequest/></s:Body></s:Envelope>')


async def http_and_soap_answer(http: aiohttp.ClientSession, gw: Any, message_id: str) -> None:
    """An HTTP device's Heartbeat and a SOAP charger's heartbeat are both answered."""
    async with http.post(f"http://127.0.0.1:{gw.http.port}/ocpp-http/DEV1",
                         json=[2, message_id, "Heartbeat", {}]) as r:
        assert r.status == 200 and (await r.json())[:2] == [3, message_id]
    async with http.post(f"http://127.0.0.1:{gw.soap.port}/ocpp-s", data=SOAP_HEARTBEAT.encode(),
                         headers={"Content-Type": "application/soap+xml; charset=utf-8"}) as r:
        assert r.status == 200 and b"heartbeatResponse" in await r.read()


async def test_slow_http_and_soap_clients_stall_no_one(tmp_path: Path) -> None:
    async with gateway(tmp_path, http={"enabled": True, "listen": f"127.0.0.1:{free_port()}"},
                       soap={"enabled": True, "listen": f"127.0.0.1:{free_port()}"}) as gw:
        slow = []
        for port, head in ((gw.http.port, b"POST /ocpp-http/SLOW HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n[2,"),
                           (gw.soap.port, b"POST /ocpp-s HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"),
                           (gw.http.port, b"GET /ocpp-http/SLOW/calls?wait=1 HTTP/1.1\r\nHo")):
            for _ in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head)
                slow.append(writer)
        try:
            t = time.monotonic()
            async with connect(gw.url("WS1"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
                await ws.send('[2,"h1","Heartbeat",{}]')
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 3))[:2] == [3, "h1"]
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                await http_and_soap_answer(http, gw, "h2")
            assert time.monotonic() - t < 8
            # trickle one byte on each slow connection: still nobody else waits
            for w in slow:
                w.write(b"x")
            async with connect(gw.url("WS1"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
                await ws.send('[2,"h3","Heartbeat",{}]')
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 3))[:2] == [3, "h3"]
        finally:
            for w in slow:
                w.close()


async def test_a_trickled_body_is_cut_off(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A client that sends its body too slowly gets an answer (HTTP 408, a SOAP Fault) instead of
    holding its connection for ever."""
    import adapters.polled

    monkeypatch.setattr(adapters.polled, "BODY_TIMEOUT", 0.5)
    async with gateway(tmp_path, http={"enabled": True, "listen": f"127.0.0.1:{free_port()}"},
                       soap={"enabled": True, "listen": f"127.0.0.1:{free_port()}"}) as gw:
        for port, head, expect in (
                (gw.http.port, b"POST /ocpp-http/SLOW2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[2,",
                 b" 408 "),
                (gw.soap.port, b"POST /ocpp-s HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"
                               b"Content-Length: 1000\r\n\r\n<s:Envelope", b"Fault")):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            try:
                answer = await asyncio.wait_for(reader.read(4096), 5)
            finally:
                writer.close()
            assert expect in answer, answer[:200]


async def test_stalled_connections_are_closed_and_the_ports_are_capped(tmp_path: Path) -> None:
    """On each port: a connection that sends half its headers, and one that sends nothing, are
    closed after idle_connection_timeout (a long poll in progress is not idle); beyond
    max_connections a new connection gets 503 at once, and once the stalled ones are gone the port
    serves again."""
    ports = {"http": {"enabled": True, "listen": f"127.0.0.1:{free_port()}", "max_connections": 4,
                      "idle_connection_timeout": 1.0},
             "soap": {"enabled": True, "listen": f"127.0.0.1:{free_port()}", "max_connections": 4,
                      "idle_connection_timeout": 1.0}}
    async with gateway(tmp_path, **ports) as gw:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for port, half in ((gw.http.port, b"POST /ocpp-http/SLOW HTTP/1.1\r\nHo"),
                               (gw.soap.port, b"POST /ocpp-s HTTP/1.1\r\nContent-Type: app")):
                stalled = []
                for i in range(4):  # half of them send half their headers, the others nothing
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    if i % 2 == 0:
                        writer.write(half)
                    stalled.append((reader, writer))
                await asyncio.sleep(0.2)  # the gateway (same event loop) accepts them
                # the port is full: the next connection is answered 503 at once
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                busy = await asyncio.wait_for(reader.read(4096), 3)
                writer.close()
                assert busy.startswith(b"HTTP/1.1 503 ") and b"too many connections" in busy, busy
                # the stalled ones are closed by the gateway (after about a second; it used to be never)
                for reader, writer in stalled:
                    assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF from the gateway
                    writer.close()
            # a long poll outlasting the idle timeout is answered (204: nothing for the device), not cut
            async with http.get(f"http://127.0.0.1:{gw.http.port}/ocpp-http/DEV9/calls", params={"wait": "2"}) as r:
                assert r.status == 204
            await http_and_soap_answer(http, gw, "h9")  # and the ports serve again
