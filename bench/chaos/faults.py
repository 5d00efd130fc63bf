"""Each fault kind of the schedule, injected into a running supervisor under load. One
function per kind; `inject` picks it. Every CLI command's exit code is checked against the
codes the README documents for what the fault does (`CliCall.expected`).

The codes allowed, and why more than one where there is more than one:
- a plain upgrade, and the one after kill_live, an idle supervisor kill, a SIGSTOP of the live
  generation: 0;
- kill_new: 8 when the kill lands before LIVE (rolled back), 1 once LIVE (Envoy died on its
  own: the upgrade is aborted and Envoy restarted), 0 when the upgrade had already finished;
- kill_old: 0, the old generation was on its way out anyway;
- kill_supervisor during an upgrade: the waiting CLI loses its supervisor: 1 or 3 (or 0 if the
  upgrade was over);
- SIGSTOP of a new generation: 0, or 8 when it cannot be LIVE before the ready timeout;
- bad binary: 6 when pre-flight sees it is not Envoy, 8 when it crashes once started;
- bad config: 6 when Envoy rejects it, 8 when its extra listener's port is taken;
- full state dir: 6 (pre-flight sees no room for the new generation) or 7 (the state dir
  cannot be used), both having started nothing; 0/8 if the upgrade got through;
- control plane down: 6 (pre-flight: the live generation is disconnected).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping

from chaos import invariants
from chaos.harness import Harness, StepLog, generation
from chaos.schedule import Fault, Step
from meshctl.manager.snapshot import StatusSnapshot

_KILL_NEW_CODES = frozenset({0, 1, 8})
_LOST_SUPERVISOR_CODES = frozenset({0, 1, 3})
_BAD_BINARY_CODES = {"not_envoy": frozenset({6}), "crashes": frozenset({8})}
_BAD_CONFIG_CODES = {"rejected": frozenset({6}), "port_in_use": frozenset({8})}
_FULL_CODES = frozenset({0, 6, 7, 8})
_WAIT_S = 30.0
"""For an event a fault waits for (a pid in status, a drain starting, a disconnection)."""


def inject(h: Harness, step: Step) -> StepLog:
    log_ = StepLog()
    _ACTIONS[step.fault](h, step, log_)
    return log_


def plain_upgrade(h: Harness, step: Step, log_: StepLog) -> None:
    h.upgrade(log_, f"upgrade to {step.binary}", {0}, binary=h.binaries[step.binary])


def kill_new(h: Harness, step: Step, log_: StepLog) -> None:
    bg = h.upgrade_in_background(f"upgrade to {step.binary}", _KILL_NEW_CODES,
                                 binary=h.binaries[step.binary])
    snap = h.wait_for(lambda s: bool(s["upgrade"] and s["upgrade"].get("to_pid")), _WAIT_S,
                      "new generation in status", log_)
    if snap is not None and snap["upgrade"] is not None:
        epoch = snap["upgrade"].get("to_epoch")
        time.sleep(step.at_s)
        now = h.status() or snap
        gen = generation(now, epoch)
        if gen is not None and h.signal_generation(gen, signal.SIGKILL, log_):
            log_.note(f"killed new epoch {epoch} pid {gen['pid']} in phase {now['phase']} "
                      f"({gen['role']})")
    bg.join(log_, h.timeouts.settle_s + 60)


def kill_old(h: Harness, step: Step, log_: StepLog) -> None:
    bg = h.upgrade_in_background(f"upgrade to {step.binary}", {0},
                                 binary=h.binaries[step.binary])
    snap = h.wait_for(lambda s: s["phase"] == "draining", _WAIT_S, "drain", log_)
    if snap is not None and snap["upgrade"] is not None:
        epoch = snap["upgrade"].get("from_epoch")
        time.sleep(step.at_s)
        now = h.status()
        gen = generation(now, epoch) if now is not None and now["phase"] == "draining" else None
        if gen is None:
            log_.note(f"missed: the drain of epoch {epoch} was over before +{step.at_s}s")
        elif h.signal_generation(gen, signal.SIGKILL, log_):
            log_.note(f"killed draining epoch {epoch} pid {gen['pid']}")
    bg.join(log_, h.timeouts.settle_s + 60)


def kill_live(h: Harness, step: Step, log_: StepLog) -> None:
    time.sleep(step.at_s)
    snap = h.status()
    live = snap["live"] if snap is not None else None
    if live is not None and h.signal_generation(live, signal.SIGKILL, log_):
        log_.note(f"killed live epoch {live['epoch']} pid {live['pid']}")
        h.wait_for(lambda s: s["phase"] == "running" and s["live"] is not None
                   and s["live"]["pid"] != live["pid"], h.timeouts.settle_s,
                   "restarted generation", log_)
    plain_upgrade(h, step, log_)


def kill_supervisor(h: Harness, step: Step, log_: StepLog) -> None:
    before = h.status()
    if step.variant == "upgrading":
        bg = h.upgrade_in_background(f"upgrade to {step.binary}", _LOST_SUPERVISOR_CODES,
                                     binary=h.binaries[step.binary])
        h.wait_for(lambda s: s["upgrade"] is not None, _WAIT_S, "upgrade in status", log_)
        time.sleep(step.at_s)
        now = h.status()
        # Only while the upgrade runs: a kill after it is the idle variant, whose own step
        # says so (and which meets a different bug: docs/reliability.md, the chaos run).
        if now is not None and now["upgrade"] is not None:
            log_.note(f"supervisor killed in phase {now['phase']}")
            h.kill_supervisor(log_)
        else:
            log_.note(f"missed: the upgrade was over before +{step.at_s}s")
        bg.join(log_, h.timeouts.settle_s + 60)
        if h.supervisor_exit() is not None and h.start_supervisor(log_):
            _check_adopted_parent(h, log_)
        return
    time.sleep(step.at_s)
    h.kill_supervisor(log_)
    if not h.start_supervisor(log_):
        return
    _check_adopted_parent(h, log_)
    after = h.status()
    old = before["live"] if before is not None else None
    new = after["live"] if after is not None else None
    if old is not None and (new is None or new["pid"] != old["pid"] or not new["adopted"]):
        log_.problem("adoption", f"live generation not adopted: was pid {old['pid']}, now "
                     f"{new and (new['pid'], new['adopted'])}")
    plain_upgrade(h, step, log_)


def _check_adopted_parent(h: Harness, log_: StepLog) -> None:
    """Right after an adoption, before anything else moves: is the live generation's parent
    socket still answered (the killed supervisor's stand-in answered it)?"""
    snap = h.status()
    if snap is not None:
        for problem in invariants.live_parent_answered(snap, h.site.state_dir):
            log_.problem("live_parent_answered", f"after the adoption: {problem}")


def stop_generation(h: Harness, step: Step, log_: StepLog) -> None:
    if step.variant == "live":
        snap = h.status()
        live = snap["live"] if snap is not None else None
        if live is not None and h.signal_generation(live, signal.SIGSTOP, log_):
            log_.note(f"stopped live epoch {live['epoch']} for {step.hold_s}s")
            try:
                time.sleep(step.hold_s)
            finally:
                h.signal_generation(live, signal.SIGCONT, log_)
        plain_upgrade(h, step, log_)
        return
    bg = h.upgrade_in_background(f"upgrade to {step.binary}", {0, 8},
                                 binary=h.binaries[step.binary])
    snap = h.wait_for(lambda s: bool(s["upgrade"] and s["upgrade"].get("to_pid")), _WAIT_S,
                      "new generation in status", log_)
    if snap is not None and snap["upgrade"] is not None:
        gen = generation(snap, snap["upgrade"].get("to_epoch"))
        if gen is not None and h.signal_generation(gen, signal.SIGSTOP, log_):
            log_.note(f"stopped new epoch {gen['epoch']} ({gen['role']}) for {step.hold_s}s")
            try:
                time.sleep(step.hold_s)
            finally:
                h.signal_generation(gen, signal.SIGCONT, log_)
    bg.join(log_, h.timeouts.settle_s + 60)


def bad_binary(h: Harness, step: Step, log_: StepLog) -> None:
    binary = h.site.not_envoy if step.variant == "not_envoy" else h.site.crashing_envoy
    h.upgrade(log_, f"upgrade to {binary.name}", _BAD_BINARY_CODES[step.variant],
              binary=binary)


def bad_config(h: Harness, step: Step, log_: StepLog) -> None:
    config = (h.site.rejected_config if step.variant == "rejected"
              else h.site.port_in_use_config)
    h.upgrade(log_, f"upgrade to {config.name}", _BAD_CONFIG_CODES[step.variant],
              binary=h.binaries[step.binary], config=config)


def full_state_dir(h: Harness, step: Step, log_: StepLog) -> None:
    written = h.site.fs.fill()
    log_.note(f"state dir's file system full ({written >> 20} MiB written)")
    try:
        before = h.status()
        call = h.upgrade(log_, f"upgrade to {step.binary} (state dir full)", _FULL_CODES,
                         binary=h.binaries[step.binary])
        after = h.status()
        if call.exit_code in (6, 7) and before is not None and after is not None:
            _refused_means_unchanged(before, after, log_)
        time.sleep(step.hold_s)
    finally:
        h.site.fs.free()
        log_.note("state dir's file system freed")


def _refused_means_unchanged(before: StatusSnapshot, after: StatusSnapshot,
                             log_: StepLog) -> None:
    """An upgrade refused (exit 6 or 7) must have started nothing: the README's promise for
    every refusal, which a script acts on (it will not wait for, nor roll back, what it was
    told never began)."""
    was = [(g["epoch"], g["pid"]) for g in before["generations"]]
    now = [(g["epoch"], g["pid"]) for g in after["generations"]]
    if now != was or after["upgrade"] is not None:
        upgrade = after["upgrade"]
        log_.problem("refused_upgrade_starts_nothing",
                     f"the CLI refused the upgrade, yet the supervisor runs upgrade "
                     f"{upgrade and upgrade['id']} (phase {after['phase']}): generations "
                     f"{was} -> {now}")


def control_plane_down(h: Harness, step: Step, log_: StepLog) -> None:
    h.site.plane.go_down()
    log_.note("control plane down")
    try:
        h.wait_for(lambda s: _connected(s) is False, _WAIT_S, "disconnection in status", log_)
        h.upgrade(log_, f"upgrade to {step.binary} (control plane down)", {6},
                  binary=h.binaries[step.binary])
    finally:
        h.site.plane.come_back()
        log_.note("control plane back")
    h.wait_for(lambda s: _connected(s) is True, _WAIT_S, "reconnection in status", log_)


def _connected(snap: Mapping[str, object]) -> object:
    xds = snap.get("xds")
    plane = xds.get("control_plane") if isinstance(xds, dict) else None
    return plane.get("connected") if isinstance(plane, dict) else None


_ACTIONS: Mapping[Fault, Callable[[Harness, Step, StepLog], None]] = {
    Fault.NONE: plain_upgrade,
    Fault.KILL_NEW: kill_new,
    Fault.KILL_OLD: kill_old,
    Fault.KILL_LIVE: kill_live,
    Fault.KILL_SUPERVISOR: kill_supervisor,
    Fault.STOP_GENERATION: stop_generation,
    Fault.BAD_BINARY: bad_binary,
    Fault.BAD_CONFIG: bad_config,
    Fault.FULL_STATE_DIR: full_state_dir,
    Fault.CONTROL_PLANE_DOWN: control_plane_down,
}
