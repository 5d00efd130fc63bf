"""The supervisor's lifecycle. One enum, one table; any other move raises."""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    STARTING = "starting"
    """The first generation is starting; nothing serves yet."""
    RUNNING = "running"
    """One generation is LIVE and alone: the only phase that accepts an upgrade."""
    UPGRADING = "upgrading"
    """A new generation is starting beside the live one and has not reached LIVE."""
    ROLLING_BACK = "rolling_back"
    """The new generation failed (exited, or not LIVE in time) and is being stopped; the old
    one never stopped serving."""
    RECOVERING = "recovering"
    """After a rollback that wedged the hot restart (Trap 1, docs/traps.md): a generation on
    the old binary and config takes over from the old one to bring its admin API back."""
    DRAINING = "draining"
    """The new generation is LIVE; the old one drains inside the drain window."""
    HANDING_OVER = "handing_over"
    """Pod slots: the other slot's generation hot-restarted from ours and is LIVE; ours drains
    inside the drain window."""
    IDLE = "idle"
    """Pod slots: handed over; no generation here. The supervisor stays (an exit would make
    the kubelet restart the container) until its container is switched to the standby image;
    an ephemeral slot's exits. A regular slot starts again if the ephemeral slot that took
    over is gone for good."""
    RESTARTING = "restarting"
    """Envoy died on its own: waiting out the backoff before a fresh generation starts."""
    STOPPING = "stopping"
    """Shutting down: the live generation drains, then every generation is ended."""
    STOPPED = "stopped"
    """Every generation has exited; the supervisor exits."""
    FAILED = "failed"
    """The supervisor gave up (first generation never LIVE, or Envoy crash-looped); it exits
    non-zero."""


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    # STARTING -> UPGRADING: adopted an old generation and its not-yet-LIVE child.
    Phase.STARTING: frozenset({Phase.RUNNING, Phase.UPGRADING, Phase.RESTARTING,
                               Phase.STOPPING, Phase.FAILED}),
    Phase.RUNNING: frozenset({Phase.UPGRADING, Phase.HANDING_OVER, Phase.RESTARTING,
                              Phase.STOPPING, Phase.FAILED}),
    Phase.HANDING_OVER: frozenset({Phase.IDLE, Phase.STOPPING, Phase.FAILED}),
    # IDLE -> STARTING: the ephemeral slot that took over died with its container, which
    # nothing restarts: the idle regular slot serves again (`PodSlotSteps._step_idle`).
    Phase.IDLE: frozenset({Phase.STARTING, Phase.STOPPING}),
    Phase.UPGRADING: frozenset({Phase.DRAINING, Phase.ROLLING_BACK, Phase.STOPPING,
                                Phase.FAILED}),
    Phase.ROLLING_BACK: frozenset({Phase.RUNNING, Phase.RECOVERING, Phase.RESTARTING,
                                   Phase.STOPPING, Phase.FAILED}),
    Phase.RECOVERING: frozenset({Phase.DRAINING, Phase.RUNNING, Phase.STOPPING,
                                 Phase.FAILED}),
    Phase.DRAINING: frozenset({Phase.RUNNING, Phase.RESTARTING, Phase.STOPPING,
                               Phase.FAILED}),
    Phase.RESTARTING: frozenset({Phase.STARTING, Phase.STOPPING, Phase.FAILED}),
    Phase.STOPPING: frozenset({Phase.STOPPED, Phase.FAILED}),
    Phase.STOPPED: frozenset(),
    Phase.FAILED: frozenset({Phase.STOPPING}),
}


class IllegalTransition(RuntimeError):
    pass


def transition(current: Phase, target: Phase) -> Phase:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current} -> {target} is not a legal transition")
    return target
