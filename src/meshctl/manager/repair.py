"""The hot-restart repair after a generation died initializing (Trap 1, docs/traps.md).

A new generation that dies before it is LIVE leaves the INITIALIZING flag set in the shared
memory (every later start is then refused by Envoy) and may have closed its parent's admin
listener. These functions clear the flag, where the layout is one meshctl knows, and say
whether the old generation needs a recovery generation (run by the supervisor).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from meshctl import errors
from meshctl.envoy import sharedmem
from meshctl.envoy.binary import probe_binary
from meshctl.envoy.hotrestart import HotRestartFiles
from meshctl.manager.generation import Generation

log = logging.getLogger("meshctl.manager.supervisor")


def hot_restart_version(gen: Generation) -> str:
    """What the generation's Envoy speaks: as it said at LIVE, else from its binary."""
    return gen.hot_restart_version or probe_binary(gen.binary).hot_restart_version


def clear_flag(shm: Path, version: str) -> bool:
    """Clear a stale INITIALIZING flag; whether it was set. Never raises: a layout meshctl
    does not know, or a file it cannot open, is logged and left alone."""
    try:
        if shm.exists() and sharedmem.clear_initializing(shm, version):
            log.warning("cleared the stale INITIALIZING flag in %s", shm)
            return True
    except (errors.MeshctlError, sharedmem.UnknownLayout, OSError) as exc:
        log.error("cannot check %s (%s): the next upgrade may be refused by Envoy", shm, exc)
    return False


def needs_recovery(files: HotRestartFiles, old: Generation) -> str | None:
    """Why the old generation cannot be left as it is after a failed child: the flag was set
    (now cleared), or its admin listener is gone. None: nothing to repair."""
    try:
        version = hot_restart_version(old)
    except errors.MeshctlError as exc:
        log.error("cannot learn epoch %d's hot-restart version (%s)", old.epoch, exc)
        version = None
    if version is not None and clear_flag(files.shared_memory, version):
        return "the failed generation left the hot-restart flag set"
    if not old.admin.is_ready():
        return f"epoch {old.epoch} lost its admin listener to the failed generation"
    return None


def clear_before_start(files: HotRestartFiles, binary: Path | None) -> None:
    """No generation runs: a flag left by one that died initializing would refuse the next
    start."""
    if binary is None or not files.shared_memory.exists():
        return
    with contextlib.suppress(errors.MeshctlError):
        clear_flag(files.shared_memory, probe_binary(binary).hot_restart_version)
