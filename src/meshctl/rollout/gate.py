"""The rollout's disruption gate: which pods of a batch may start their swap now, by the
PodDisruptionBudgets that select them (or, with none, by their controller's other Ready pods),
and what the summary says of each budget.

Every admission round reads the budgets and the pods again (`meshctl.podswap.disruption.read`:
one list of budgets per namespace, plus one of its pods when a budget or a controller is
involved); nothing is carried from one round to the next, so a pod that turned Ready or
NotReady meanwhile counts as it is now. Within a round, each pod let go counts as mid-swap for
the next one, so one round never lets more go than a budget allows. The pods mid-swap are this
rollout's in flight, plus any pod whose rollout record says `upgrading` (another rollout, or a
killed one, left its swap there). The decision is `meshctl.podswap.budget`'s.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TypedDict

from meshctl.clock import Clock, Deadline
from meshctl.kube import Kube
from meshctl.podswap import disruption
from meshctl.podswap.budget import (
    BudgetCount,
    Check,
    PodKey,
    Verdict,
    max_disruptions,
    members,
)
from meshctl.rollout.record import PodPhase, decode

POLL_S = disruption.POLL_S
"""While a pod is held: how often the budgets are read again (sooner when a pod of this
rollout ends its swap)."""


class BudgetJson(TypedDict):
    """One budget in the rollout's summary."""

    namespace: str
    name: str
    allowed_at_start: int
    """Disruptions it allowed at its first read, counting its Ready pods (none of them as
    mid-swap)."""
    waits: int
    """Pods held by it (each counted once, however long it waited)."""
    max_mid_swap: int
    """The most of its pods this rollout had mid-swap at once."""


class BudgetNumbersJson(TypedDict):
    """A budget's numbers as a `budget_wait` event carries them (`budget.BudgetCount`)."""

    budget: str
    """namespace/name"""
    expected: int
    desired_healthy: int
    healthy: int
    mid_swap: int
    allowed: int


def numbers(count: BudgetCount) -> BudgetNumbersJson:
    return {"budget": f"{count.namespace}/{count.name}", "expected": count.expected,
            "desired_healthy": count.desired_healthy, "healthy": count.healthy,
            "mid_swap": count.mid_swap, "allowed": count.allowed}


@dataclass
class Held:
    """A pod a budget holds: since when, until when, and the last reason given."""

    since_s: float
    deadline: Deadline | None
    reason: str = ""


class Gate:
    """Admission by disruption budget, one fresh read per round; the per-budget tallies."""

    def __init__(self, kube: Kube, clock: Clock, *, force: bool) -> None:
        self.kube = kube
        self.clock = clock
        self.force = force
        self.budgets: dict[PodKey, BudgetJson] = {}
        self.requests = 0
        self._snapshots: dict[str, disruption.Snapshot] = {}
        self._read_s: float | None = None
        self._mid_swap_then = 0

    def due(self, mid_swap: int) -> bool:
        """Whether held pods should be looked at again: a swap of ours ended since the last
        read (a disruption freed), or POLL_S passed (a pod of the budget may be Ready now)."""
        if self._read_s is None or mid_swap < self._mid_swap_then:
            return True
        return self.clock.monotonic() - self._read_s >= POLL_S

    def admit(self, keys: Sequence[PodKey], mid_swap: Collection[PodKey], *,
              owners: bool) -> dict[PodKey, Check | None]:
        """The verdict on each pod of `keys`, in order (None: not listed any more; its start
        will find out). `owners`: some of them have a controller."""
        self._read_s = self.clock.monotonic()
        mid = set(mid_swap)
        for namespace in dict.fromkeys(ns for ns, _ in keys):
            before = self.kube.requests
            snapshot = disruption.read(self.kube, namespace, owners=owners)
            self.requests += self.kube.requests - before
            self._snapshots[namespace] = snapshot
            mid |= {key for key, pod in snapshot.raw.items() if _upgrading(pod)}
            wanted = set(keys)
            for budget in snapshot.budgets:
                known = (budget.namespace, budget.name) in self.budgets
                if known or not any(p.key in wanted for p in members(budget, snapshot.pods)):
                    continue  # the summary names the budgets over this rollout's pods only
                self.budgets[(budget.namespace, budget.name)] = BudgetJson(
                    namespace=budget.namespace, name=budget.name,
                    allowed_at_start=max_disruptions(budget, snapshot.pods),
                    waits=0, max_mid_swap=0)
        verdicts: dict[PodKey, Check | None] = {}
        for key in keys:
            check = self._snapshots[key[0]].check(key, mid, force=self.force)
            verdicts[key] = check
            if check is None or check.verdict is Verdict.GO:
                mid.add(key)
        return verdicts

    def held(self, check: Check) -> None:
        """A pod begins to wait: a wait for each budget that holds it."""
        for count in check.blocking:
            entry = self.budgets.get((count.namespace, count.name))
            if entry is not None:
                entry["waits"] += 1

    def started(self, mid_swap: Collection[PodKey]) -> None:
        """After a round's starts: how many of each budget's pods are mid-swap now (ours)."""
        self._mid_swap_then = len(mid_swap)
        for snapshot in self._snapshots.values():
            for budget in snapshot.budgets:
                entry = self.budgets.get((budget.namespace, budget.name))
                if entry is None:
                    continue
                now = sum(1 for p in members(budget, snapshot.pods) if p.key in mid_swap)
                entry["max_mid_swap"] = max(entry["max_mid_swap"], now)

    def summary(self) -> list[BudgetJson]:
        return [self.budgets[k] for k in sorted(self.budgets)]


def _upgrading(pod: dict[str, object]) -> bool:
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    record = decode(annotations) if isinstance(annotations, dict) else None
    # A handover to an ephemeral slot left `upgrading` restarts nothing: not disrupted.
    return record is not None and record.state is PodPhase.UPGRADING and not record.ephemeral
