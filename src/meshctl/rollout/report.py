"""What a rollout run knows of each selected pod (`PodRun`: its phase, plan, record, timings
and requests) and what it reports at the end (`RolloutReport`): the summary `meshctl rollout`
prints, as a table or one JSON document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

from meshctl.clock import Deadline
from meshctl.podswap.ephemeral import EphemeralPlan
from meshctl.podswap.plan import SwapPlan
from meshctl.podswap.readiness import NotReadyJson, ReadyWindow
from meshctl.rollout import plan as rp
from meshctl.rollout.gate import BudgetJson
from meshctl.rollout.plan import Batch, Counts, PodKey, RolloutResult, RolloutSpec
from meshctl.rollout.record import PodPhase, RolloutRecord


class PodResultJson(TypedDict):
    """One pod of the summary."""

    namespace: str
    pod: str
    result: str
    """A `PodPhase` value."""
    batch: int | None
    canary: bool
    api_requests: int
    from_image: str | None
    to_image: str | None
    from_slot: str | None
    to_slot: str | None
    duration_s: float | None
    detail: str | None
    resumed: NotRequired[bool]
    reason_code: NotRequired[str]
    budget_wait_s: NotRequired[float]
    """How long a disruption budget held its start."""
    not_ready: NotRequired[NotReadyJson]
    """The pod's Ready condition through its swap (`meshctl.podswap.readiness`)."""
    handover: NotRequired[str]
    """"ephemeral" when the new image went into an ephemeral slot (absent: two-slot)."""
    serving_slot: NotRequired[str]
    """The slot that serves at the end, when known: the new one if upgraded, the old one if
    rolled back."""


class BatchJson(TypedDict):
    index: int
    kind: str
    pods: list[str]
    outcome: NotRequired[dict[str, int]]


class ApiRequestsJson(TypedDict):
    total: int
    per_pod: float | None
    pods_started: int
    for_pods: int
    for_budgets: int
    """The disruption budget checks' lists (`rollout.gate`)."""
    list_and_watch: int
    watch_connections: int


class ReportJson(TypedDict):
    """`meshctl rollout --output json`: the summary on stdout."""

    rollout: dict[str, Any]
    """The spec (`RolloutSpec.describe()`)."""
    result: str
    exit_code: int
    message: str
    counts: dict[str, int]
    batches: list[BatchJson]
    pods: list[PodResultJson]
    api_requests: ApiRequestsJson
    elapsed_s: float
    cpu_s: float
    plan: NotRequired[dict[str, Any]]
    """A dry run's plan."""
    budgets: NotRequired[list[BudgetJson]]
    """The PodDisruptionBudgets over the pods started (or held): waits, most mid-swap."""


@dataclass
class PodRun:
    """One selected pod in this run."""

    key: PodKey
    phase: PodPhase
    batch: int | None = None
    canary: bool = False
    resumed: bool = False
    swap: SwapPlan | None = None
    handover: EphemeralPlan | None = None
    """The ephemeral handover (`--handover ephemeral`, or a pod left mid-handover); when set,
    `swap` is None."""
    record: RolloutRecord | None = None
    generation: int | None = None
    deadline: Deadline | None = None
    started_s: float | None = None
    ended_s: float | None = None
    requests: int = 0
    """API requests made for this pod (its patches, a re-read on conflict, its Event)."""
    detail: str = ""
    reason_code: str | None = None
    retire_tries: int = 0
    planned_version: str | None = None
    """The resourceVersion `swap` was planned from: unchanged at the start, no re-plan."""
    held_s: float | None = None
    """How long a disruption budget held its start (None: not held)."""
    readiness: ReadyWindow | None = None
    """The pod's Ready condition from its start patch on (None: not started)."""

    def to_dict(self) -> PodResultJson:
        swap = self.swap or self.handover
        record: PodResultJson = {
            "namespace": self.key[0], "pod": self.key[1], "result": self.phase.value,
            "batch": self.batch, "canary": self.canary, "api_requests": self.requests,
            "from_image": swap.from_image if swap else None,
            "to_image": swap.to_image if swap else None,
            "from_slot": swap.old_slot if swap else None,
            "to_slot": swap.new_slot if swap else None,
            "duration_s": (round(self.ended_s - self.started_s, 3)
                           if self.started_s is not None and self.ended_s is not None
                           else None),
            "detail": self.detail or None,
        }
        if self.resumed:
            record["resumed"] = True
        if self.reason_code:
            record["reason_code"] = self.reason_code
        if self.held_s is not None:
            record["budget_wait_s"] = round(self.held_s, 3)
        if self.readiness is not None:
            record["not_ready"] = self.readiness.to_json(self.ended_s)
        if self.handover is not None:
            record["handover"] = "ephemeral"
        if swap is not None and self.phase in (PodPhase.UPGRADED, PodPhase.ROLLED_BACK):
            record["serving_slot"] = (swap.new_slot if self.phase is PodPhase.UPGRADED
                                      else swap.old_slot)
        return record


@dataclass
class RolloutReport:
    spec: RolloutSpec
    result: RolloutResult
    message: str
    counts: Counts
    pods: list[PodRun]
    batches: list[Batch]
    api_requests: int
    pod_requests: int
    watch_connections: int
    elapsed_s: float
    cpu_s: float
    plan: dict[str, Any] | None = None
    batch_outcomes: dict[int, dict[str, int]] = field(default_factory=dict)
    budgets: list[BudgetJson] = field(default_factory=list)
    budget_requests: int = 0

    @property
    def exit_code(self) -> rp.RolloutExit:
        return self.result.exit_code

    @property
    def started(self) -> int:
        return sum(1 for p in self.pods if p.started_s is not None)

    def to_dict(self) -> ReportJson:
        started = self.started
        record: ReportJson = {
            "rollout": self.spec.describe(),
            "result": self.result.value, "exit_code": int(self.exit_code),
            "message": self.message, "counts": self.counts.to_dict(),
            "batches": [self._batch(b) for b in self.batches],
            "pods": [p.to_dict() for p in self.pods],
            "api_requests": {
                "total": self.api_requests,
                "per_pod": round(self.api_requests / started, 2) if started else None,
                "pods_started": started,
                "for_pods": self.pod_requests,
                "for_budgets": self.budget_requests,
                "list_and_watch": self.api_requests - self.pod_requests - self.budget_requests,
                "watch_connections": self.watch_connections,
            },
            "elapsed_s": round(self.elapsed_s, 3),
            "cpu_s": round(self.cpu_s, 3),
        }
        if self.plan is not None:
            record["plan"] = self.plan
        if self.budgets:
            record["budgets"] = self.budgets
        return record

    def _batch(self, batch: Batch) -> BatchJson:
        entry: BatchJson = {"index": batch.index, "kind": batch.kind.value,
                            "pods": [f"{ns}/{name}" for ns, name in batch.pods]}
        if batch.index in self.batch_outcomes:
            entry["outcome"] = self.batch_outcomes[batch.index]
        return entry
