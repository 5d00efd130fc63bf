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
    DRAINING = "draining"
    """The new generation is LIVE; the old one drains inside the drain window."""
    STOPPING = "stopping"
    """Shutting down: the live generation drains, then every generation is ended."""
    STOPPED = "stopped"
    """Every generation has exited; the supervisor exits."""
    FAILED = "failed"
    """The supervisor gave up (first generation never LIVE, or Envoy died); it exits non-zero."""


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.RUNNING, Phase.STOPPING, Phase.FAILED}),
    Phase.RUNNING: frozenset({Phase.UPGRADING, Phase.STOPPING, Phase.FAILED}),
    Phase.UPGRADING: frozenset({Phase.DRAINING, Phase.RUNNING, Phase.STOPPING, Phase.FAILED}),
    Phase.DRAINING: frozenset({Phase.RUNNING, Phase.STOPPING, Phase.FAILED}),
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
