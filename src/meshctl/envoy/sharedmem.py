"""Envoy's hot-restart shared memory, and the one repair meshctl makes in it (Trap 1,
docs/traps.md).

A new generation sets the INITIALIZING bit when it attaches and clears it when it has
initialized. If it dies first (listener bind conflict, crash, SIGKILL, an init that hangs and
is killed), the bit stays set and every later generation exits with "previous envoy process is
still initializing": the proxy can never be upgraded again (upstream issue 33446).

Layout verified for hot-restart version "11.104" (1.36 to 1.40, x86-64, little-endian): u64 size
at 0 (=104), u64 version at 8 (=11), two pthread mutexes, atomic u64 flags at 96, bit 0 is
INITIALIZING. The hot-restart version string is "<version>.<size>", so the header says whether
this layout applies; anything else is refused rather than written blindly.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_HEADER = struct.Struct("<QQ")
_FLAGS = struct.Struct("<Q")
_FLAGS_OFFSET = 96
_INITIALIZING = 1
KNOWN_LAYOUTS = frozenset({"11.104"})


class UnknownLayout(Exception):
    """The shared memory is not a layout this module knows; it was not touched."""


def layout_of(path: Path) -> str:
    """The hot-restart version the segment was made by, "<version>.<size>"."""
    with path.open("rb") as f:
        size, version = _HEADER.unpack(f.read(_HEADER.size))
    return f"{version}.{size}"


def _checked(path: Path, expected: str) -> None:
    found = layout_of(path)
    if found != expected or found not in KNOWN_LAYOUTS:
        raise UnknownLayout(f"{path}: layout {found}, running Envoy speaks {expected}, known "
                            f"{sorted(KNOWN_LAYOUTS)}")


def is_initializing(path: Path, hot_restart_version: str) -> bool:
    _checked(path, hot_restart_version)
    with path.open("rb") as f:
        f.seek(_FLAGS_OFFSET)
        (flags,) = _FLAGS.unpack(f.read(_FLAGS.size))
    return bool(flags & _INITIALIZING)


def clear_initializing(path: Path, hot_restart_version: str) -> bool:
    """Clear a stale INITIALIZING bit; True if it was set. Only when no generation is
    initializing (the one that set it is gone, the next is not started)."""
    _checked(path, hot_restart_version)
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as mem:
            (flags,) = _FLAGS.unpack_from(mem, _FLAGS_OFFSET)
            if not flags & _INITIALIZING:
                return False
            _FLAGS.pack_into(mem, _FLAGS_OFFSET, flags & ~_INITIALIZING)
            mem.flush()
            return True
    finally:
        os.close(fd)
