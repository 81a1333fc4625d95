from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.uplink.netns import Netns, Tmpfs, skip_reason


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A network namespace for the CSMS, joined to the test's by a veth pair; removed afterwards."""
    reason = skip_reason("ip", "tc")
    if reason:
        pytest.skip(reason)
    ns = Netns()
    try:
        yield ns.create()
    finally:
        ns.destroy()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 4 MiB tmpfs for `data_dir`; unmounted afterwards."""
    reason = skip_reason("mount", "umount")
    if reason:
        pytest.skip(reason)
    disk = Tmpfs(tmp_path / "disk")
    try:
        yield disk.mount()
    finally:
        disk.unmount()
