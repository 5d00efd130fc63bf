"""The proxy slots of a pod, seen from one slot's supervisor: the pod ledger.

In a pod, slots `a` and `b` are two containers, each with its own supervisor, sharing an
emptyDir (the pod dir); an ephemeral handover (docs/pod-slots.md) adds slots `e1`, `e2`, ...,
each an ephemeral container with its own supervisor on the same dir:

    <pod dir>/pod.json    the ledger: base id, and every generation: epoch, slot, state
    <pod dir>/pod.lock    flock held while the ledger is read and rewritten
    <pod dir>/hr/         Envoy's hot-restart sockets, shared by both slots' generations
    <pod dir>/slot-a/     slot a's supervisor state dir (its lock, state, control socket, logs)
    <pod dir>/slot-b/     the same for slot b (and slot-e<N>/ for ephemeral slot e<N>)

A slot whose supervisor starts while another slot's generation is live hot-restarts from
it (the next epoch); that slot's supervisor sees a newer generation live in the ledger,
drains its own and goes idle (a regular slot does not exit: the kubelet would restart it; an
ephemeral one does: it is never restarted). Whether another slot's supervisor is still there
is not guessed from timestamps: each holds its state dir's flock for its whole life, and
flock works across the containers of a pod.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

from meshctl.errors import StateDirError

SLOTS = ("a", "b")
"""The regular slots: containers of the pod spec, restarted by the kubelet when they exit."""
_EPHEMERAL = re.compile(r"e[1-9][0-9]{0,5}")
"""Ephemeral slots `e1`, `e2`, ...: ephemeral containers, started once, never restarted. The
bound keeps `slot-<name>` short: the hot-restart and control socket paths are limited to
108 bytes."""
SLOT_NAMES = "a, b or e<N> (N = 1-999999)"
_KEEP = 12  # generations kept in the ledger


class GenState(enum.StrEnum):
    STARTING = "starting"
    LIVE = "live"
    DRAINING = "draining"
    EXITED = "exited"
    FAILED = "failed"
    """Never became LIVE: the other slot may have to repair the hot restart
    (Trap 1, docs/traps.md)."""


class LedgerEntry(TypedDict, total=False):
    """One generation in the pod ledger (pod.json), written by the slot that started it."""

    slot: str
    state: str
    """A `GenState` value."""
    pid: int
    binary: str
    version: str | None
    exit: str


class LedgerData(TypedDict):
    generations: dict[str, LedgerEntry]
    """By epoch (JSON keys are strings)."""


def is_slot(slot: str) -> bool:
    return slot in SLOTS or _EPHEMERAL.fullmatch(slot) is not None


def is_ephemeral(slot: str) -> bool:
    """An ephemeral slot's supervisor exits once idle: nothing restarts its container, and
    its exit frees its memory (the pod's cgroup holds it, docs/pod-slots.md)."""
    return _EPHEMERAL.fullmatch(slot) is not None


def other_slot(slot: str) -> str:
    """The regular slot paired with `slot` (a <-> b): where a two-slot swap starts the next
    generation. Other slots (ephemeral ones) may run beside both: `PodLedger.others_alive`."""
    return SLOTS[1 - SLOTS.index(slot)]


class PodLedger:
    def __init__(self, pod_dir: Path, slot: str) -> None:
        if not is_slot(slot):
            raise ValueError(f"slot must be one of {SLOT_NAMES}, not {slot!r}")
        self.pod_dir = pod_dir
        self.slot = slot
        self.path = pod_dir / "pod.json"
        self.lock_path = pod_dir / "pod.lock"

    def slot_dir(self, slot: str) -> Path:
        return self.pod_dir / f"slot-{slot}"

    @contextlib.contextmanager
    def locked(self) -> Iterator[LedgerData]:
        """The ledger, for reading and changing; written back atomically on exit."""
        try:
            fd = os.open(self.lock_path,
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StateDirError(f"cannot open {self.lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._write(data)
        finally:
            os.close(fd)  # drops the flock

    def read(self) -> LedgerData:
        with self.locked() as data:
            copy: LedgerData = json.loads(json.dumps(data))
            return copy

    def _read(self) -> LedgerData:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {"generations": {}}
        except (OSError, ValueError) as exc:
            raise StateDirError(f"{self.path} cannot be read ({exc}); move it aside") from exc
        gens = data.get("generations") if isinstance(data, dict) else None
        if not isinstance(gens, dict) or not all(
                isinstance(k, str) and k.isdigit() and isinstance(v, dict)
                for k, v in gens.items()):
            raise StateDirError(f"{self.path} is not a meshctl pod ledger; move it aside")
        ledger: LedgerData = data
        return ledger

    def _write(self, data: LedgerData) -> None:
        gens = data["generations"]
        for key in sorted(gens, key=int)[:-_KEEP]:
            del gens[key]
        tmp = self.path.with_name(f".pod.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.rename(tmp, self.path)

    def slot_alive(self, slot: str) -> bool:
        """Is the supervisor of `slot` running? (It holds its lock for its whole life.)"""
        lock = self.slot_dir(slot) / "supervisor.lock"
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def others_alive(self) -> list[str]:
        """The other slots whose supervisor runs (any slot that ever had a state dir here)."""
        found = [p.name.removeprefix("slot-") for p in self.pod_dir.glob("slot-*")]
        return sorted(s for s in found
                      if s != self.slot and is_slot(s) and self.slot_alive(s))

    # ---- what a supervisor records and asks

    def record(self, epoch: int, state: GenState, *, pid: int | None = None,
               binary: str | None = None, version: str | None = None,
               exit: str | None = None) -> None:
        with self.locked() as data:
            entry = data["generations"].setdefault(str(epoch), {"slot": self.slot})
            entry["slot"], entry["state"] = self.slot, str(state)
            if pid is not None:
                entry["pid"] = pid
            if binary is not None:
                entry["binary"] = binary
            if version is not None:
                entry["version"] = version
            if exit is not None:
                entry["exit"] = exit

    def other_live(self) -> tuple[int, LedgerEntry] | None:
        """Another slot's live generation (the newest), if its supervisor is running."""
        data = self.read()
        for key in sorted(data["generations"], key=int, reverse=True):
            entry = data["generations"][key]
            if entry.get("slot") != self.slot and entry.get("state") == GenState.LIVE:
                if self.slot_alive(str(entry["slot"])):
                    return int(key), entry
                return None
        return None

    def newer(self, epoch: int) -> tuple[int, LedgerEntry] | None:
        """The newest generation after `epoch` started by another slot, if any."""
        data = self.read()
        found = [(int(k), v) for k, v in data["generations"].items()
                 if int(k) > epoch and v.get("slot") != self.slot]
        return max(found, key=lambda kv: kv[0]) if found else None

    def orphaned_by(self) -> str | None:
        """The ephemeral slot whose generation is the newest, when no other slot's supervisor
        runs: its container ended (a supervisor crash, a crash loop given up) and nothing
        restarts an ephemeral container, so nothing will serve unless this slot does. None
        otherwise (a regular slot's container the kubelet restarts)."""
        gens = self.read()["generations"]
        if not gens:
            return None
        slot = str(gens[max(gens, key=int)].get("slot"))
        if slot == self.slot or not is_ephemeral(slot) or self.others_alive():
            return None
        return slot

    def state_of(self, epoch: int) -> str | None:
        entry = self.read()["generations"].get(str(epoch))
        return None if entry is None else str(entry.get("state"))
