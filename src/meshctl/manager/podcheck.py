"""`meshctl pod-check`: whether a slot's handover finished, judged inside the pod from the pod
ledger (`meshctl.manager.pod`) and the slot supervisor's own status (its control socket).

Why it exists: `meshctl upgrade --pod NAME --handover ephemeral` starts the new generation in an
ephemeral container, which has no readiness (no probe, never counted), and the proxy has no
API credentials to report anything. So the CLI adds a second, short-lived ephemeral container
running this check; its exit code is the verdict, and the kubelet records it in the pod's
`ephemeralContainerStatuses`, where the CLI reads it (docs/pod-slots.md). The proxy cannot
write that status; at worst it could make its own ledger lie, which it can already do to
its readiness probe.

`judge` is pure (a ledger, who is alive, the slot's phase in, a verdict out); `wait_verdict`
polls it against a deadline.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from meshctl import errors
from meshctl.clock import Clock, Deadline, SystemClock
from meshctl.exitcodes import ExitCode
from meshctl.manager import operations
from meshctl.manager.pod import GenState, LedgerData, PodLedger

_POLL_S = 0.25
START_GRACE_S = 10.0
"""How long a slot with no supervisor and no generation may still be starting."""
_BUSY = frozenset({GenState.STARTING, GenState.LIVE, GenState.DRAINING})


class Verdict(enum.Enum):
    WAITING = "waiting"
    DONE = "done"
    """The slot's generation is LIVE, its supervisor runs, every other slot's has exited."""
    FAILED = "failed"
    """The slot's generation failed, or it never will be LIVE (its supervisor is gone)."""


EXIT_CODES = {Verdict.DONE: ExitCode.OK, Verdict.FAILED: ExitCode.ROLLED_BACK,
              Verdict.WAITING: ExitCode.TIMEOUT}


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    detail: str
    """One line: the container's termination message, and the CLI's reason."""

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.verdict]


def judge(data: LedgerData, slot: str, alive: Collection[str],
          phase: str | None, waited_s: float = START_GRACE_S) -> Judgement:
    """`alive`: the slots whose supervisor runs; `phase`: the slot's supervisor's phase (its
    status), None when it could not be read; `waited_s`: how long the check has looked."""
    gens = sorted(((int(k), v) for k, v in data["generations"].items()), key=lambda kv: kv[0])
    ours = [(e, v) for e, v in gens if v.get("slot") == slot]
    running = slot in alive
    if not ours:
        # Both containers start at about the same time: the slot's supervisor may not have
        # taken its lock yet.
        if running or waited_s < START_GRACE_S:
            return Judgement(Verdict.WAITING, f"slot {slot} has not started a generation yet")
        return Judgement(Verdict.FAILED, f"slot {slot}'s supervisor is not running and started "
                                         f"no generation")
    epoch, entry = ours[-1]
    newest = gens[-1][0]
    if newest > epoch:
        return Judgement(Verdict.FAILED, f"a newer generation (epoch {newest}, slot "
                                         f"{gens[-1][1].get('slot')}) took over from slot {slot}")
    state = entry.get("state")
    if state == GenState.FAILED:
        why = f": {entry['exit']}" if entry.get("exit") else ""
        return Judgement(Verdict.FAILED, f"epoch {epoch} in slot {slot} never became LIVE{why}; "
                                         f"the previous generation keeps serving")
    if not running:
        return Judgement(Verdict.FAILED, f"slot {slot}'s supervisor exited (epoch {epoch} "
                                         f"{state})")
    if state == GenState.STARTING:
        return Judgement(Verdict.WAITING, f"epoch {epoch} in slot {slot} is starting")
    if state != GenState.LIVE:
        return Judgement(Verdict.FAILED, f"epoch {epoch} in slot {slot} is {state}")
    busy = [(e, v) for e, v in gens if v.get("slot") != slot and v.get("state") in _BUSY
            and v.get("slot") in alive]
    if busy:
        e, v = busy[-1]
        return Judgement(Verdict.WAITING, f"epoch {epoch} in slot {slot} is LIVE; epoch {e} in "
                                          f"slot {v.get('slot')} is {v.get('state')}")
    if phase != "running":
        return Judgement(Verdict.WAITING, f"epoch {epoch} in slot {slot} is LIVE; its "
                                          f"supervisor is {phase or 'not answering'}")
    before = [(e, v) for e, v in gens if e < epoch]
    previous = (f"epoch {before[-1][0]} (slot {before[-1][1].get('slot')}) has exited"
                if before else "no previous generation")
    return Judgement(Verdict.DONE, f"epoch {epoch} in slot {slot} is LIVE; {previous}")


def look(pod_dir: Path, slot: str, waited_s: float = START_GRACE_S) -> Judgement:
    """One look at the pod dir (the ledger, the supervisors' locks, the slot's status)."""
    ledger = PodLedger(pod_dir, slot)
    data = ledger.read()
    alive = set(ledger.others_alive())
    if ledger.slot_alive(slot):
        alive.add(slot)
    phase: str | None = None
    if slot in alive:
        with contextlib.suppress(errors.MeshctlError, OSError):
            phase = operations.status(ledger.slot_dir(slot))["phase"]
    return judge(data, slot, alive, phase, waited_s)


def wait_verdict(pod_dir: Path, slot: str, timeout_s: float, *,
                 clock: Clock | None = None,
                 sleep: Callable[[float], None] | None = None) -> Judgement:
    """Look until DONE or FAILED, or the deadline (the last look, WAITING)."""
    clock = clock or SystemClock()
    deadline = Deadline(clock, timeout_s)
    nap = sleep or time.sleep
    started = clock.monotonic()
    while True:
        judgement = look(pod_dir, slot, clock.monotonic() - started)
        if judgement.verdict is not Verdict.WAITING or deadline.expired():
            return judgement
        nap(min(_POLL_S, max(0.0, deadline.remaining())))
