"""The client commands yield the CPU to the proxy they manage.

`meshctl upgrade`, `status`, `rollout` and the others are clients: they start a Python
interpreter, run the new Envoy binary for the pre-flight checks and wait on the supervisor. In
a sidecar they run in the proxy's own container (`kubectl exec`), under the pod's CPU limit,
beside the Envoy that is serving; measured on 2 cores, one `meshctl upgrade --wait` costs
0.6-1.0 CPU-s, most of it before the supervisor is asked anything. That CPU must not come out
of the serving proxy's latency, so the client lowers its own scheduling priority (a nice value,
10 by default) before it imports anything heavy. Raising one's nice value needs no privilege.

The commands that *are* the serving path keep their priority: `run` (the supervisor, whose
Envoy children inherit its nice value), `standby` (the standby slot's stand-in, which becomes
a supervisor's sibling) and `demo` (which starts a supervisor).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

NICE_ENV = "MESHCTL_NICE"
"""The nice value the client commands run at: 0-19, 0 to keep the caller's priority."""
DEFAULT_NICE = 10
SERVING_COMMANDS = frozenset({"run", "standby", "demo"})
REFUSED_EXIT = {"rollout": 3}
"""Commands with exit codes of their own for bad input: `rollout`'s 3 is "refused before
starting" (RolloutExit.REFUSED, kept out of this module's imports: it runs before any)."""


class BadNice(ValueError):
    """MESHCTL_NICE is not an integer from 0 to 19."""


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand: the first argument that is not an option (the app has no global
    options, so it is argv[1] in practice), or None for `meshctl`, `meshctl --help`."""
    for arg in argv[1:]:
        if not arg.startswith("-"):
            return arg
    return None


def wanted_nice(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """The nice value this invocation should run at (0: leave it alone)."""
    if command_of(argv) in SERVING_COMMANDS:
        return 0
    raw = environ.get(NICE_ENV, "").strip()
    if not raw:
        return DEFAULT_NICE
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise BadNice(f"{NICE_ENV} must be an integer from 0 to 19 (0: do not lower the "
                      f"priority), got {raw!r}")
    return value


def lower_priority(nice: int) -> int:
    """Raise this process's nice value to `nice` (never lower it: that would need privilege
    and would override the caller's choice). Returns the nice value now in effect."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        return nice
    return current
