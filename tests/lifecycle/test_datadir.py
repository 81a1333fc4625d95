"""data_dir's own files on a full disk: the lock still holds (only the pid cannot be written) and
the install id is drawn for this run, with a warning, instead of a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from adapters.datadir import InstanceLock, install_id, read_install_id
from gateway.errors import AlreadyRunning
from tests.uplink.netns import Tmpfs, skip_reason


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Tmpfs]:
    reason = skip_reason("mount", "umount")
    if reason:
        pytest.skip(reason)
    disk = Tmpfs(tmp_path / "disk", size="1m")
    try:
        yield disk.mount()
    finally:
        disk.unmount()


def test_lock_and_install_id_on_a_full_disk(full_disk: Tmpfs, caplog: pytest.LogCaptureFixture) -> None:
    data = full_disk.path / "data"
    data.mkdir()
    full_disk.fill()

    with InstanceLock(data):
        with pytest.raises(AlreadyRunning, match=r"another gateway \(another process\) is running"):
            InstanceLock(data).acquire()  # held all the same
        drawn = install_id(data)

    assert drawn.isalnum() and read_install_id(data) is None  # not kept
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("cannot write the pid into" in w for w in warnings), warnings
    assert any("cannot keep the install id" in w and "No space left on device" in w for w in warnings), warnings
    full_disk.make_room()
    assert install_id(data) == read_install_id(data)  # kept once there is room
