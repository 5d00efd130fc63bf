"""When the supervisor takes, re-takes, gives and drops its hold on the listening sockets.

The mechanism is `meshctl.envoy.sockethold` (docs/reliability.md, "Crashes refuse nothing");
this is the policy around it, one decision per method:

- **take** when a generation goes LIVE (first start, upgrade, crash restart, recovery,
  adoption): its sockets become the hold, and sockets it no longer has (a listener the new
  config removed) are closed at once, not when the old generation's drain ends.
- **re-take** in steady state only where listeners change at run time (an xDS-driven config:
  LDS adds and removes them): the listening addresses are compared every second, the sockets
  re-taken when they differ and every 30 s (a listener updated in place with new socket
  options is rebound by Envoy under the same address).
- **give** after a crash: the restarted generation hot-restarts from a stand-in that hands it
  the held sockets; those it has not asked for when it goes LIVE (an xDS-driven generation
  asks once LDS answers) stay pending until `--ready-timeout-s`, then close.
- **drop** (close all) when the supervisor gives up on a crash loop, stops, fails, or (a pod
  slot) hands over to the other slot: from then on the port refuses instead of queueing
  connections that nobody will accept.

Posing as the live generation's child means binding the child's hot-restart socket. On a host,
the supervisor's loop is the only one that starts generations, so that never races. In a pod,
the other slot's supervisor starts the next generation: both take `hold.lock` in the shared
hot-restart dir (`pod_lock`), the spawner around its spawn and ledger record, the taker around
its check of the ledger and its requests.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from meshctl.clock import Clock
from meshctl.envoy.admin import AdminUnavailable
from meshctl.envoy.hotrestart import HotRestartFiles
from meshctl.envoy.sockethold import HoldError, SocketHold
from meshctl.manager.generation import Generation
from meshctl.manager.pod import GenState, PodLedger
from meshctl.manager.snapshot import HeldSocketsJSON

log = logging.getLogger("meshctl.manager.supervisor")

_CHECK_S = 1.0
"""How often an xDS-driven generation's listening addresses are compared with the hold's."""
_RETAKE_S = 30.0
"""How often its sockets are re-taken even when the addresses look the same."""
_TIMEOUT_S = 1.0
"""How long the live generation may take to answer one request (it answers in microseconds;
its main thread may be busy applying a large config)."""


def lock_path(files: HotRestartFiles) -> Path:
    """In the hot-restart dir, which a pod's two slots share."""
    return files.socket_prefix.with_name("hold.lock")


@contextlib.contextmanager
def pod_lock(path: Path | None) -> Iterator[None]:
    """Serializes, across a pod's two slots, starting a generation and posing as one."""
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


class ListenerHolding:
    def __init__(self, files: HotRestartFiles, workers: int, clock: Clock,
                 ledger: PodLedger | None, pending_s: float, enabled: bool = True) -> None:
        self.enabled = enabled
        """--no-hold-sockets: never take (a crash then refuses connections until the
        restarted generation binds its own sockets)."""
        self.files = files
        self.ledger = ledger
        self.workers = workers
        self.clock = clock
        self.lock_path = lock_path(files) if ledger is not None else None
        self.pending_s = pending_s
        self.hold = SocketHold()
        self._urls: frozenset[str] = frozenset()
        self._checked = 0.0
        self._taken = 0.0
        self._due = False

    def __len__(self) -> int:
        return len(self.hold)

    def went_live(self, gen: Generation, alive: list[Generation]) -> None:
        """`gen` is LIVE: hold its sockets (and only those)."""
        self._due = not self._take(gen, alive)

    def tick(self, gen: Generation, alive: list[Generation]) -> None:
        """Steady state (RUNNING): re-take if a take failed, or if listeners may have moved."""
        now = self.clock.monotonic()
        if not self._due and not gen.xds_driven:
            return
        if not self._due and now - self._checked < _CHECK_S:
            return
        self._checked = now
        if not self._due and now - self._taken < _RETAKE_S:
            try:
                if gen.admin.listen_urls() == self._urls:
                    return
            except AdminUnavailable:
                return
        self._due = not self._take(gen, alive)

    def _take(self, gen: Generation, alive: list[Generation]) -> bool:
        if not self.enabled:
            return True
        child_epoch = gen.epoch + 1
        # The child's socket name is shared modulo 3: never while a generation uses it.
        if any(g.epoch % 3 == child_epoch % 3 for g in alive if g is not gen):
            return False
        try:
            urls = gen.admin.listen_urls()
        except AdminUnavailable as exc:
            log.warning("epoch %d: cannot list its listeners to hold them (%s)", gen.epoch, exc)
            return False
        started = self.clock.monotonic()
        with pod_lock(self.lock_path):
            newer = self.ledger.newer(gen.epoch) if self.ledger is not None else None
            if newer is not None and newer[1].get("state") in (GenState.STARTING, GenState.LIVE):
                return True  # the other slot is starting the next generation: it takes over
            try:
                result = self.hold.take(self.files.parent_socket(gen.epoch),
                                        self.files.socket("child", child_epoch), sorted(urls),
                                        self.workers, now=self.clock.monotonic(),
                                        timeout_s=_TIMEOUT_S)
            except (HoldError, OSError) as exc:
                log.warning("epoch %d: could not take its listening sockets (%s)", gen.epoch,
                            exc)
                return False
        self._urls = urls
        self._taken = self._checked = self.clock.monotonic()
        if result.taken or result.closed:
            log.info("epoch %d: holding %d listening socket(s) (%d new, %d closed, %d "
                     "address(es) asked in %.1f ms)", gen.epoch, len(self.hold), result.taken,
                     result.closed, len(urls), 1000 * (self.clock.monotonic() - started))
        return True

    def restart_from(self, dead_epoch: int) -> bool:
        """Before a generation restarts after a crash: mark the held sockets pending for it.
        True when there is something to give (the caller binds the stand-in)."""
        if not len(self.hold):
            return False
        self.hold.expect(self.clock.monotonic() + self.pending_s)
        log.info("epoch %d died: %d held listening socket(s) go to its successor", dead_epoch,
                 len(self.hold))
        return True

    def drop(self, why: str) -> None:
        n = self.hold.close_all()
        self._urls = frozenset()
        self._due = False
        if n:
            log.info("closed %d held listening socket(s): %s", n, why)

    def status(self) -> HeldSocketsJSON:
        return {"sockets": len(self.hold), "addresses": [k.url for k in self.hold.addresses()],
                "pending": self.hold.pending(), "given": self.hold.given}
