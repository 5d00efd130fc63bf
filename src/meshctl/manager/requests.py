"""What the CLI asks of a supervisor over the control socket, typed at both ends.

The CLI builds an `UpgradeArgs` (`meshctl upgrade`'s options) and sends it as JSON; the
supervisor reads it back with `parse_upgrade`, which checks every field as if a stranger had
written it (the socket is the user's own, but the bytes are still input): a bad field is
BadInput (exit 5) with one line, never a supervisor error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from meshctl import errors
from meshctl.drain.policy import DrainPolicy

MAX_TIMEOUT_S = 24 * 3600.0
"""No wait meshctl manages is longer than a day; a longer one is a typo (or nan, inf)."""
POLICY_KEYS = ("drain_min_s", "drain_max_s", "strategy", "stop_grace_s")


class UpgradeArgs(TypedDict, total=False):
    """The `upgrade` request on the control socket (JSON). Absent: the supervisor's own."""

    binary: str
    config: str
    drain_min_s: float
    drain_max_s: float
    strategy: str
    stop_grace_s: float
    ready_timeout_s: float
    listener_change_ok: bool


class StopArgs(TypedDict, total=False):
    graceful: bool


@dataclass(frozen=True)
class UpgradeRequest:
    """An upgrade request, checked."""

    binary: Path
    config: Path
    policy: DrainPolicy
    ready_timeout_s: float
    listener_change_ok: bool = False


def parse_upgrade(args: Mapping[str, Any], *, binary: Path, config: Path, drain: DrainPolicy,
                  ready_timeout_s: float) -> UpgradeRequest:
    """`args` (an `UpgradeArgs` as received) over the live generation's binary and config
    and the supervisor's drain policy and ready timeout."""
    wanted = {k: args[k] for k in POLICY_KEYS if args.get(k) is not None}
    try:
        policy = drain.with_overrides(wanted)
    except (ValueError, TypeError) as exc:
        raise errors.BadInput(f"bad drain policy: {exc}") from exc
    listener_change_ok = args.get("listener_change_ok", False)
    if not isinstance(listener_change_ok, bool):
        raise errors.BadInput(f"listener_change_ok must be true or false, not "
                              f"{listener_change_ok!r}")
    return UpgradeRequest(
        binary=existing_file(args.get("binary"), binary, "Envoy binary"),
        config=existing_file(args.get("config"), config, "config file"),
        policy=policy,
        ready_timeout_s=seconds(args.get("ready_timeout_s"), ready_timeout_s, "ready timeout"),
        listener_change_ok=listener_change_ok,
    )


def existing_file(raw: Any, default: Path, what: str) -> Path:
    if raw is None:
        return default
    if not isinstance(raw, str) or not raw:
        raise errors.BadInput(f"{what} must be a path, not {raw!r}")
    path = Path(raw)
    if not path.is_file():
        raise errors.BadInput(f"{what} not found: {path}")
    return path


def seconds(raw: Any, default: float, what: str) -> float:
    """A duration: a finite number of seconds above 0 and at most a day."""
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise errors.BadInput(f"{what} must be a number of seconds, not {raw!r}")
    value = float(raw)
    if not math.isfinite(value) or value <= 0 or value > MAX_TIMEOUT_S:
        raise errors.BadInput(f"{what} must be above 0 and at most {MAX_TIMEOUT_S:g} "
                              f"seconds, not {raw!r}")
    return value
