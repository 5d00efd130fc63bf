"""The seeded schedule of a chaos run: which binary each step upgrades to, which fault it
injects, at what moment and in which variant. Pure: the same seed gives the same steps, so a
failure is reproduced by its seed alone.

A step is one upgrade (to the old or the new binary) with at most one fault. The moment
(`at_s`) counts from the fault's own trigger, which the fault kind names: the new generation's
pid seen in status (kill_new), the drain seen starting (kill_old), the step's start (the
others). Step 0 is always a plain upgrade: the run's baselines (the supervisor's fds) are
taken after it.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict


class Binary(enum.StrEnum):
    OLD = "old"
    """Envoy 1.39.3."""
    NEW = "new"
    """Envoy 1.40.0."""


class Fault(enum.StrEnum):
    NONE = "none"
    KILL_NEW = "kill_new"
    """SIGKILL of the new generation during an upgrade (initializing, or just LIVE)."""
    KILL_OLD = "kill_old"
    """SIGKILL of the old generation while it drains."""
    KILL_LIVE = "kill_live"
    """SIGKILL of the live generation between upgrades."""
    KILL_SUPERVISOR = "kill_supervisor"
    """SIGKILL of the supervisor (idle, or during an upgrade), then a new one on the same state
    dir, which adopts the running Envoy."""
    STOP_GENERATION = "stop_generation"
    """SIGSTOP of a generation (the live one, or a new one initializing) for `hold_s`."""
    BAD_BINARY = "bad_binary"
    """An upgrade to a binary that is not Envoy, or that passes pre-flight and then crashes."""
    BAD_CONFIG = "bad_config"
    """An upgrade to a config Envoy rejects, or whose extra listener's port is taken."""
    FULL_STATE_DIR = "full_state_dir"
    """The state dir's file system filled for `hold_s`, an upgrade tried meanwhile."""
    CONTROL_PLANE_DOWN = "control_plane_down"
    """The ADS server goes down, an upgrade is tried, the server comes back."""


FAULTS: tuple[Fault, ...] = tuple(f for f in Fault if f is not Fault.NONE)

# Each fault's variants and the range of its moment and hold, in seconds. The moments of the
# kills are short: with a static listener the new generation is LIVE ~0.2-1 s after its pid
# shows, and a drain under keep-alive load ends ~0.3-1.5 s after it starts (drain_min_s 0.3),
# so the range spans both sides of those events.
VARIANTS: Mapping[Fault, tuple[str, ...]] = {
    Fault.NONE: ("",),
    Fault.KILL_NEW: ("",),
    Fault.KILL_OLD: ("",),
    Fault.KILL_LIVE: ("",),
    Fault.KILL_SUPERVISOR: ("idle", "upgrading"),
    Fault.STOP_GENERATION: ("live", "new"),
    Fault.BAD_BINARY: ("not_envoy", "crashes"),
    Fault.BAD_CONFIG: ("rejected", "port_in_use"),
    Fault.FULL_STATE_DIR: ("",),
    Fault.CONTROL_PLANE_DOWN: ("",),
}
MOMENT_S: Mapping[Fault, tuple[float, float]] = {
    Fault.KILL_NEW: (0.0, 0.8),
    Fault.KILL_OLD: (0.0, 0.6),
    Fault.KILL_LIVE: (0.2, 1.5),
    Fault.KILL_SUPERVISOR: (0.0, 1.0),
}
HOLD_S: Mapping[Fault, tuple[float, float]] = {
    Fault.STOP_GENERATION: (2.0, 3.0),
    Fault.FULL_STATE_DIR: (1.0, 2.0),
}


class StepJSON(TypedDict):
    index: int
    binary: str
    fault: str
    variant: str
    at_s: float
    hold_s: float


@dataclass(frozen=True)
class Step:
    index: int
    binary: Binary
    """What the step's upgrade goes to (a bad binary's step uses it for nothing)."""
    fault: Fault
    variant: str = ""
    at_s: float = 0.0
    """The fault's moment after its trigger (see the module docstring)."""
    hold_s: float = 0.0
    """How long a SIGSTOP or a full state dir lasts."""

    def describe(self) -> str:
        what = self.fault.value + (f"/{self.variant}" if self.variant else "")
        timing = (f" at +{self.at_s:.2f}s" if self.fault in MOMENT_S else "") + \
            (f" for {self.hold_s:.1f}s" if self.fault in HOLD_S else "")
        return f"step {self.index}: upgrade to {self.binary.value}, {what}{timing}"

    def to_json(self) -> StepJSON:
        return {"index": self.index, "binary": self.binary.value, "fault": self.fault.value,
                "variant": self.variant, "at_s": self.at_s, "hold_s": self.hold_s}

    @classmethod
    def from_json(cls, data: StepJSON) -> Step:
        return cls(index=data["index"], binary=Binary(data["binary"]), fault=Fault(data["fault"]),
                   variant=data["variant"], at_s=data["at_s"], hold_s=data["hold_s"])


def generate(seed: int, steps: int, *, kinds: Sequence[Fault] = FAULTS,
             fault_ratio: float = 0.7) -> list[Step]:
    """`steps` steps from `seed`: step 0 a plain upgrade; every kind in `kinds` at least once
    (at random positions); each other step a fault with probability `fault_ratio`, of a kind
    drawn from `kinds`. Raises ValueError when `steps` cannot hold every kind."""
    kinds = tuple(dict.fromkeys(kinds))
    if Fault.NONE in kinds:
        raise ValueError("kinds are faults; plain upgrades come from fault_ratio")
    if steps < len(kinds) + 1:
        raise ValueError(f"{steps} steps cannot cover {len(kinds)} fault kinds after the "
                         f"plain first step: give at least {len(kinds) + 1}")
    if not 0.0 <= fault_ratio <= 1.0:
        raise ValueError("fault_ratio is a probability")
    rng = random.Random(seed)
    covered = dict(zip(rng.sample(range(1, steps), len(kinds)), kinds, strict=True))
    out = [Step(index=0, binary=rng.choice(list(Binary)), fault=Fault.NONE)]
    for index in range(1, steps):
        binary = rng.choice(list(Binary))
        if index in covered:
            fault = covered[index]
        elif kinds and rng.random() < fault_ratio:
            fault = rng.choice(kinds)
        else:
            fault = Fault.NONE
        out.append(_draw(rng, index, binary, fault))
    return out


def _draw(rng: random.Random, index: int, binary: Binary, fault: Fault) -> Step:
    """The variant, moment and hold of one step, drawn in a fixed order (reproducible)."""
    variant = rng.choice(VARIANTS[fault])
    low, high = MOMENT_S.get(fault, (0.0, 0.0))
    at_s = round(rng.uniform(low, high), 3)
    low, high = HOLD_S.get(fault, (0.0, 0.0))
    hold_s = round(rng.uniform(low, high), 3)
    return Step(index=index, binary=binary, fault=fault, variant=variant, at_s=at_s,
                hold_s=hold_s)


def by_kind(steps: Iterable[Step]) -> dict[str, int]:
    """Faults per kind, every kind named (0 when absent), plain upgrades as `none`."""
    counts = Counter(s.fault for s in steps)
    return {f.value: counts.get(f, 0) for f in Fault}


def parse_kinds(text: str) -> tuple[Fault, ...]:
    """`kill_new,kill_old` -> the faults; `all` -> every one. ValueError names a bad one."""
    if text.strip() in ("", "all"):
        return FAULTS
    out = []
    for name in text.split(","):
        try:
            out.append(Fault(name.strip()))
        except ValueError:
            raise ValueError(f"unknown fault kind {name.strip()!r}; one of "
                             f"{', '.join(f.value for f in FAULTS)}") from None
    if Fault.NONE in out:
        raise ValueError("'none' is not a fault kind")
    return tuple(out)
