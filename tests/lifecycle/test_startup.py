"""Start and stop through one exit stack: a start that fails undoes exactly what had started
(nothing left running: no task, no open store, no bound port), and a clean run leaves no task."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from gateway.app import running
from gateway.config import Settings
from gateway.errors import ListenerUnavailable
from tests.harness import free_port


def _own_tasks() -> set[str]:
    me = asyncio.current_task()
    return {t.get_name() for t in asyncio.all_tasks() if t is not me and not t.done()}


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_a_taken_charger_port_undoes_the_start(tmp_path: Path) -> None:
    """The charger port is taken: the start ends with ListenerUnavailable naming the key, the
    address and the variable to change it; the transaction log's task is gone, the store is closed
    (its WAL removed) and the API port the gateway had bound is free again."""
    before = _own_tasks()
    api_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(data_dir=str(tmp_path / "data"), websocket={"listen": f"127.0.0.1:{port}"},
                            api={"listen": f"127.0.0.1:{api_port}"}, soap={"enabled": True, "listen": f"127.0.0.1:{free_port()}"})
        with pytest.raises(ListenerUnavailable) as info:
            async with running(settings):
                pytest.fail("started on a taken port")

    message = str(info.value)
    assert message == (f"websocket.listen 127.0.0.1:{port}: address already in use (another program, or another "
                       "gateway, listens there); change [websocket].listen or set OCPPGW_WEBSOCKET__LISTEN=HOST:PORT")
    assert isinstance(info.value.__cause__, OSError)  # the cause is kept
    await asyncio.sleep(0)
    assert _own_tasks() - before == set()
    assert (tmp_path / "data" / "gateway.sqlite3").exists()
    assert not (tmp_path / "data" / "gateway.sqlite3-wal").exists()  # closed cleanly
    assert _bindable(api_port)


async def test_listeners_are_bound_before_any_outside_connection(tmp_path: Path) -> None:
    """A taken SOAP port (a charger port) ends the start before the MQTT broker is dialled: a
    listening socket standing in for the broker never sees a connection."""
    with socket.socket() as broker, socket.socket() as taken:
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        broker.setblocking(False)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(data_dir=str(tmp_path / "data"), websocket={"listen": f"127.0.0.1:{free_port()}"},
                            api={"listen": f"127.0.0.1:{free_port()}"},
                            soap={"enabled": True, "listen": f"127.0.0.1:{taken.getsockname()[1]}"},
                            mqtt={"url": f"mqtt://127.0.0.1:{broker.getsockname()[1]}"})
        with pytest.raises(ListenerUnavailable, match=r"^soap\.listen .*OCPPGW_SOAP__LISTEN=HOST:PORT$"):
            async with running(settings):
                pytest.fail("started on a taken port")
        await asyncio.sleep(0.2)
        with pytest.raises(BlockingIOError):
            broker.accept()  # nobody connected


async def test_a_clean_run_leaves_no_task_behind(tmp_path: Path) -> None:
    before = _own_tasks()
    settings = Settings(data_dir=str(tmp_path / "data"), websocket={"listen": f"127.0.0.1:{free_port()}"},
                        api={"listen": f"127.0.0.1:{free_port()}"},
                        soap={"enabled": True, "listen": f"127.0.0.1:{free_port()}"},
                        http={"enabled": True, "listen": f"127.0.0.1:{free_port()}"})
    async with running(settings) as gw:
        assert gw.api is not None and gw.soap is not None and gw.http is not None
        assert "txlog" in _own_tasks()
        ports = [gw.ws_port, gw.api.port, gw.soap.port, gw.http.port]

    await asyncio.sleep(0)
    assert _own_tasks() - before == set()
    assert all(_bindable(p) for p in ports if p is not None)


async def test_chargers_and_an_absent_csms_leave_no_task_behind(tmp_path: Path) -> None:
    """Sessions, their upstream keepers (retrying a CSMS that is not there) and the outbox are all
    stopped by the way down: no task of the gateway outlives `running()`."""
    from tests.api.helpers import charger

    before = _own_tasks()
    settings = Settings(data_dir=str(tmp_path / "data"), websocket={"listen": f"127.0.0.1:{free_port()}"},
                        api={"listen": f"127.0.0.1:{free_port()}"},
                        upstream={"url": f"ws://127.0.0.1:{free_port()}/csms", "reconnect_min": 0.05, "reconnect_max": 0.1})
    async with running(settings) as gw:
        async with charger(f"ws://127.0.0.1:{gw.ws_port}/ocpp/T-1", "T-1") as cp, \
                charger(f"ws://127.0.0.1:{gw.ws_port}/ocpp/T-2", "T-2") as cp2:
            await cp.boot()
            await cp2.boot()
            started = await cp.start_tx(1)
            await cp.meter(1, started.transaction_id, 1000.0, 1.0)
            await asyncio.sleep(0.3)  # a few dials fail meanwhile
            assert {"upstream:T-1", "upstream:T-2"} <= _own_tasks()

    await asyncio.sleep(0)
    assert _own_tasks() - before == set()
