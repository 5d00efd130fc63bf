"""The client commands yield the CPU to the proxy they manage.

`meshctl upgrade`, `status` and the other clients start a Python interpreter, run the new Envoy
binary for the pre-flight checks and wait on the supervisor. In a sidecar they run in the
proxy's own container (`kubectl exec`), under the pod's CPU limit, beside the Envoy that is
serving: measured on 2 cores, one `meshctl upgrade --wait` costs 0.35-0.5 CPU-s, most of it
before the supervisor is asked anything. That CPU must not come out of the serving proxy's
latency, so the client changes its own scheduling before it imports anything heavy (neither
change needs privilege):

- local commands run under SCHED_IDLE (`meshctl.cpu`): only on CPU nothing else wants, and any
  waking Envoy thread preempts them at once. A nice value is not enough: measured under load,
  nice 10 still doubled the p99 latency while the command ran (bench/proof.py);
- but SCHED_IDLE can starve: on a CPU that is saturated it gets ~0.3 % of a core. So when the
  CPU is already under pressure (PSI `some avg10` of this cgroup or of the machine at or above
  `SATURATED_PCT`), or the pressure cannot be read, they take nice 10 instead, which still
  gets a share and finishes;
- `rollout` and `upgrade --pod` run on an operator's machine or a CI runner, not in the proxy,
  with wall-clock deadlines of their own: nice 10, never SCHED_IDLE.

`MESHCTL_NICE` overrides: `idle`, or a nice value 0-19 (0 keeps the caller's priority).
The commands that *are* the serving path keep their priority: `run` (the supervisor, whose
Envoy children inherit its scheduling), `standby` (the standby slot's stand-in, which becomes
a supervisor's sibling) and `demo` (which starts a supervisor).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from meshctl import cpu

NICE_ENV = "MESHCTL_NICE"
"""`idle`, or the nice value the client commands run at: 0-19, 0 to keep the caller's."""
IDLE = "idle"
DEFAULT_NICE = 10
SATURATED_PCT = cpu.SATURATED_PCT
SERVING_COMMANDS = frozenset({"run", "standby", "demo"})
REMOTE_COMMANDS = frozenset({"rollout"})
"""Commands that talk to the Kubernetes API from outside the proxy (so does `upgrade --pod`)."""
REFUSED_EXIT = {"rollout": 3}
"""Commands with exit codes of their own for bad input: `rollout`'s 3 is "refused before
starting" (RolloutExit.REFUSED, kept out of this module's imports: it runs before any)."""


class BadNice(ValueError):
    """MESHCTL_NICE is neither `idle` nor an integer from 0 to 19."""


@dataclass(frozen=True)
class Priority:
    nice: int = 0
    """The nice value to run at (0: leave it alone)."""
    idle: bool = False
    """SCHED_IDLE (the nice value then does not matter)."""
    why: str = ""


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand: the first argument that is not an option (the app has no global
    options, so it is argv[1] in practice), or None for `meshctl`, `meshctl --help`."""
    for arg in argv[1:]:
        if not arg.startswith("-"):
            return arg
    return None


def _remote(argv: Sequence[str]) -> bool:
    if command_of(argv) in REMOTE_COMMANDS:
        return True
    return any(arg == "--pod" or arg.startswith("--pod=") for arg in argv[1:])


def wanted(argv: Sequence[str], environ: Mapping[str, str],
           pressure: Callable[[], float | None]) -> Priority:
    """How this invocation should be scheduled. `pressure` is called only when the choice
    depends on it (the local commands' default)."""
    if command_of(argv) in SERVING_COMMANDS:
        return Priority(why="serving command")
    raw = environ.get(NICE_ENV, "").strip()
    if raw.lower() == IDLE:
        return Priority(idle=True, why=f"{NICE_ENV}=idle")
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if not 0 <= value <= 19:
            raise BadNice(f"{NICE_ENV} must be 'idle' or an integer from 0 to 19 (0: do not "
                          f"lower the priority), got {raw!r}")
        return Priority(nice=value, why=f"{NICE_ENV}={value}")
    if _remote(argv):
        return Priority(nice=DEFAULT_NICE, why="runs outside the proxy")
    some = pressure()
    if some is None:
        return Priority(nice=DEFAULT_NICE, why="CPU pressure unknown")
    if some >= SATURATED_PCT:
        return Priority(nice=DEFAULT_NICE, why=f"CPU pressure {some:g} %")
    return Priority(idle=True, why=f"CPU pressure {some:g} %")


def lower_priority(nice: int) -> int:
    """Raise this process's nice value to `nice` (never lower it: that would need privilege
    and would override the caller's choice). Returns the nice value now in effect."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        return nice
    return current


applied: Priority | None = None
"""What `apply` put this process under (reported in `upgrade -o json` as `client_scheduling`)."""


def apply(wish: Priority) -> Priority:
    """Put this process where `wish` says; what it got (SCHED_IDLE refused: nice 10 then)."""
    global applied  # noqa: PLW0603  (set once, before the app is imported)
    if wish.idle and not cpu.set_idle(0):
        wish = Priority(nice=DEFAULT_NICE, why=f"{wish.why}; SCHED_IDLE refused")
    if not wish.idle and wish.nice:
        lower_priority(wish.nice)
    applied = wish
    return wish


def describe() -> str:
    """`idle (CPU pressure 3 %)`, `nice 10 (runs outside the proxy)`, or `unchanged`."""
    if applied is None:
        return "unchanged"
    what = "idle" if applied.idle else f"nice {applied.nice}" if applied.nice else "unchanged"
    return f"{what} ({applied.why})" if applied.why else what
