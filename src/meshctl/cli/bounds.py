"""The bounds of every numeric option: a `Bound` in the option's `Annotated` type, checked by
the error boundary (`meshctl.cli.boundary`) before the command's body runs.

click checks that `--drain-max-s` is a float; a `Bound` checks that it is a usable one:
finite (click takes `nan` and `inf`), positive where it is a duration, below what Envoy or
the kernel accepts. A value out of bounds is `BadInput` (exit 5, or `rollout`'s 3), the same
code as a settings file holding it.

    timeout_s: Annotated[float, typer.Option("--timeout"), Bound(0.1, DAY_S)] = 300.0
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshctl import errors
from meshctl.drain.policy import DrainPolicy

DAY_S = 86_400.0
"""The longest drain, timeout or window: Envoy takes --drain-time-s and
--parent-shutdown-time-s as 32-bit seconds, and a `--drain-max-s 5e9` reached Envoy and
failed there (exit 9); a day is past any pod's termination grace period."""
HOUR_S = 3_600.0


@dataclass(frozen=True)
class Bound:
    """A closed range `low` .. `high` for a numeric option (an int or a float)."""

    low: float
    high: float
    unit: str = "seconds"
    prefix: str = ""
    """Put before the message (`bad drain options: `)."""

    def check(self, flag: str, value: float) -> None:
        # math.isfinite refuses NaN and infinities, which click takes as floats.
        if isinstance(value, bool) or not (math.isfinite(value) and
                                           self.low <= value <= self.high):
            raise errors.BadInput(f"{self.prefix}{flag} must be a number of {self.unit} from "
                                  f"{self.low:g} to {self.high:g}, not {value!r}")


DRAIN_BOUNDS = {"drain_min_s": Bound(0, DAY_S), "drain_max_s": Bound(0.1, DAY_S),
                "stop_grace_s": Bound(0, HOUR_S)}
"""The drain settings' bounds, for flags and settings files alike."""
DRAIN_MIN, DRAIN_MAX, STOP_GRACE = (replace(b, prefix="bad drain options: ")
                                    for b in DRAIN_BOUNDS.values())
"""The same, for the flags."""


def check_drain(policy: DrainPolicy, where: str) -> DrainPolicy:
    """A drain policy (defaults, settings file, flags) within bounds; `where` names its
    source in the message (`--drain-max-s`, a settings file)."""
    for name, bound in DRAIN_BOUNDS.items():
        bound.check(f"{where}{name}", getattr(policy, name))
    return policy


Checks = dict[str, tuple[str, Bound]]
"""A command's bounded parameters: parameter name -> (its flag, its bound)."""


def of_function(func: Callable[..., Any]) -> Checks:
    """The `Bound` of each parameter of a typer command, with the option's first flag."""
    checks: Checks = {}
    hints = typing.get_type_hints(func, include_extras=True)
    for name in inspect.signature(func).parameters:
        hint = hints.get(name)
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        extras = typing.get_args(hint)[1:]
        # In `Annotated`, typer.Option's first argument is a flag, kept as its `default`.
        decls = [d for extra in extras
                 for d in (getattr(extra, "default", None), *(getattr(extra, "param_decls", ())
                                                             or ()))]
        flags = [d for d in decls if isinstance(d, str) and d.startswith("--")]
        for extra in extras:
            if isinstance(extra, Bound):
                checks[name] = (flags[0] if flags else name, extra)
    return checks


def check(checks: Checks, values: Mapping[str, Any]) -> None:
    for name, (flag, bound) in checks.items():
        value = values.get(name)
        if value is not None:
            bound.check(flag, value)
