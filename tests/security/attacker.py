"""The hostile device of tests/security/test_attacks.py, run as its own process so that its work
does not share the test's event loop (where the innocent charger is measured).

    python -m tests.security.attacker handshakes PORT COUNT SOURCE SECONDS
    python -m tests.security.attacker fat URL_PREFIX COUNT SOURCES SIZE SECONDS
    python -m tests.security.attacker soap URL COUNT SIZE ROUNDS

Every loop is bounded by SECONDS or ROUNDS. Progress and results are JSON lines on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any, AsyncIterator

import aiohttp
from websockets.asyncio.client import ClientConnection, connect


def say(**what: Any) -> None:
    print(json.dumps(what), flush=True)


async def handshakes(port: int, count: int, source: str, seconds: float) -> None:
    """Hold `count` half-finished handshakes from `source`, re-opening whatever the gateway closes."""
    deadline = time.monotonic() + seconds
    opened = dropped = 0

    async def one() -> None:
        nonlocal opened, dropped
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
            except OSError:
                await asyncio.sleep(0.01)
                continue
            opened += 1
            try:
                writer.write(b"GET /ocpp/ATTACK HTTP/1.1\r\nHost: x\r\n")  # and never the rest
                with contextlib.suppress(TimeoutError, OSError):
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await reader.read(1024)  # returns when the gateway closes it
                dropped += 1
            finally:
                writer.close()

    say(started=True)
    await asyncio.gather(*(one() for _ in range(count)))
    say(opened=opened, dropped=dropped)


async def _never_ending(fragments: list[str]) -> AsyncIterator[str]:
    for fragment in fragments:
        yield fragment
    await asyncio.Event().wait()


async def fat(prefix: str, count: int, sources: list[str], size: int, seconds: float) -> None:
    """`count` compressed connections (spread over `sources`), each first sending one whole small
    message (so that every inflater is warm), then - on "go" from stdin - one compressed,
    fragmented message of `size` bytes inflated whose last fragment never comes."""
    connections: list[ClientConnection] = []

    async def open_one(i: int) -> None:
        try:
            ws = await connect(f"{prefix}FAT{i}", subprotocols=["ocpp1.6"], compression="deflate",  # type: ignore[list-item]
                               max_size=None, open_timeout=20, local_addr=(sources[i % len(sources)], 0))
            await ws.send(f'[2,"w{i}","Heartbeat",{{}}]')
            await ws.recv()
        except Exception as exc:  # noqa: BLE001 - counted
            say(connect_failed=type(exc).__name__)
            return
        connections.append(ws)

    for batch in range(0, count, 20):  # 20 at a time: well within max_handshakes_per_address
        await asyncio.gather(*(open_one(i) for i in range(batch, min(count, batch + 20))))
    say(warm=len(connections))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    chunk = 65536
    head = '[2,"f","DataTransfer",{"vendorId":"x","data":"'
    fragments = [head + "A" * (chunk - len(head))] + ["A" * chunk] * (size // chunk - 1)
    tasks = [asyncio.create_task(ws.send(_never_ending(fragments))) for ws in connections]
    await asyncio.sleep(1.0)
    say(sent=len(tasks))
    await asyncio.sleep(seconds)
    closed = sum(1 for ws in connections if ws.close_code is not None)
    codes: dict[str, int] = {}
    for ws in connections:
        codes[str(ws.close_code)] = codes.get(str(ws.close_code), 0) + 1
    say(closed=closed, codes=codes)
    for task in tasks:
        task.cancel()
    for ws in connections:
        ws.transport.abort()


async def soap(url: str, count: int, size: int, rounds: int) -> None:
    """`count` concurrent SOAP requests of `size` bytes, each an envelope of empty elements, `rounds` times."""
    head = (b'<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            b'xmlns:o="urn://Ocpp/Cs/2015/10/"><s:Header><o:chargeBoxIdentity>CP1</o:chargeBoxIdentity></s:Header>'
            b"<s:Body><o:heartbeatRequest>")
    tail = b"</o:heartbeatRequest></s:Body></s:Envelope>"
    body = head + b"<a/>" * ((size - len(head) - len(tail)) // 4) + tail
    statuses: dict[str, int] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        say(started=True, size=len(body), elements=body.count(b"<a/>"))

        async def one() -> None:
            async with http.post(url, data=body, headers={"Content-Type": "application/soap+xml"}) as r:
                await r.read()
                statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1

        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(count)))
    say(statuses=statuses)


def main() -> None:
    cmd, *args = sys.argv[1:]
    if cmd == "handshakes":
        asyncio.run(handshakes(int(args[0]), int(args[1]), args[2], float(args[3])))
    elif cmd == "fat":
        asyncio.run(fat(args[0], int(args[1]), args[2].split(","), int(args[3]), float(args[4])))
    elif cmd == "soap":
        asyncio.run(soap(args[0], int(args[1]), int(args[2]), int(args[3])))
    else:
        raise SystemExit(f"unknown attack {cmd}")


if __name__ == "__main__":
    main()
