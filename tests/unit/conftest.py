"""Fixtures shared by the unit tests. Nothing here starts Envoy or the supervisor."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for Unix sockets: a socket path must fit in 108 bytes, which a deep
    pytest tmp_path (long test names, --basetemp) does not guarantee."""
    path = Path(tempfile.mkdtemp(prefix="mcu-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
