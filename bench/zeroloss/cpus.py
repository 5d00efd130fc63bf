"""Which CPUs the proxy gets, and which the instrument: the load must not take the proxy's CPU.

In production a sidecar's clients and its application do not run on the proxy's CPUs: the
proxy container has its own CPU allocation. On one machine the benchmark's load client (Python,
about 300 us of CPU per request, more than Envoy's own ~200 us for both hops) and its upstream
would otherwise share the cores with Envoy and meshctl, and every burst of the instrument's own
work (64 keep-alive lanes reconnecting at the handover, a worker catching up after a stall)
would show up as the proxy's latency. So by default the machine is split in two:

- the proxy's CPUs: the benchmark process itself and everything it starts without a prefix
  (meshctl's supervisor, its Envoy generations, the `meshctl upgrade` command and its pre-flight
  runs, the naive arm's Envoy), as in a proxy container;
- the load's CPUs: the load client's workers, the upstream and wrk, started under `taskset`.

`auto` gives the proxy the first half of the CPUs this process may use (rounded up) and the
load the rest; with a single CPU there is nothing to split and nothing is pinned.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

AUTO, NONE = "auto", "none"


@dataclass(frozen=True)
class Partition:
    proxy: tuple[int, ...] = ()
    """CPUs of the benchmark process and of what it starts unpinned; empty: not pinned."""
    load: tuple[int, ...] = ()
    """CPUs of the load client, the upstream and wrk; empty: not pinned."""

    @property
    def pinned(self) -> bool:
        return bool(self.proxy and self.load)

    def load_prefix(self) -> list[str]:
        """What to put before a load process's argv (taskset keeps the pid: it execs)."""
        return ["taskset", "-c", _cpu_list(self.load)] if self.pinned else []

    def describe(self) -> str:
        if not self.pinned:
            return "not pinned (the proxy and the load share every CPU)"
        return (f"proxy on CPU {_cpu_list(self.proxy)} (meshctl, Envoy, the upgrade command), "
                f"load on CPU {_cpu_list(self.load)} (the load client, the upstream, wrk)")

    def to_json(self) -> dict[str, list[int]]:
        return {"proxy": list(self.proxy), "load": list(self.load)}


def split(cpus: Sequence[int]) -> Partition:
    """The `auto` partition of `cpus`: the first half (rounded up) for the proxy."""
    ordered = tuple(sorted(set(cpus)))
    if len(ordered) < 2:
        return Partition()
    half = (len(ordered) + 1) // 2
    return Partition(proxy=ordered[:half], load=ordered[half:])


def parse(text: str, available: Sequence[int]) -> Partition:
    """`auto`, `none`, or `PROXY/LOAD` with CPU lists as taskset takes them (`0/1`,
    `0-1/2-3`). Raises ValueError with a message for the command line."""
    text = text.strip()
    if text == AUTO:
        return split(available)
    if text == NONE:
        return Partition()
    proxy_text, sep, load_text = text.partition("/")
    if not sep:
        raise ValueError(f"--cpus must be auto, none or PROXY/LOAD (e.g. 0/1), got {text!r}")
    proxy, load = _parse_list(proxy_text), _parse_list(load_text)
    if set(proxy) & set(load):
        raise ValueError(f"--cpus: the proxy and the load share CPU(s) "
                         f"{sorted(set(proxy) & set(load))}")
    missing = sorted((set(proxy) | set(load)) - set(available))
    if missing:
        raise ValueError(f"--cpus: CPU(s) {missing} not available to this process "
                         f"(available: {_cpu_list(sorted(available))})")
    return Partition(proxy=proxy, load=load)


def available_cpus() -> tuple[int, ...]:
    return tuple(sorted(os.sched_getaffinity(0)))


def pin_self(partition: Partition) -> None:
    """Move this process (and so everything it starts unprefixed) to the proxy's CPUs. Call it
    before starting any thread: a thread keeps the affinity it was created with."""
    if partition.pinned:
        os.sched_setaffinity(0, partition.proxy)


def _parse_list(text: str) -> tuple[int, ...]:
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ValueError(f"--cpus: {part!r} is not a CPU number or range") from None
        if first < 0 or last < first:
            raise ValueError(f"--cpus: bad CPU range {part!r}")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError(f"--cpus: empty CPU list in {text!r}")
    return tuple(sorted(cpus))


def _cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)
