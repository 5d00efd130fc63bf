"""Disruption budgets, decided by meshctl: may this pod start its swap now, and if not, why.

A swap restarts containers of the pod, so the pod may go NotReady (docs/pod-slots.md): a pod
mid-swap counts as disrupted, like a pod being evicted. What a policy/v1
PodDisruptionBudget allows is computed here from its spec and the pods' readiness, never read
from the budget's status: the status is the disruption controller's, lags the pods, and is
absent where no controller runs. The arithmetic follows the controller
(kubernetes/kubernetes pkg/controller/disruption/disruption.go) and the eviction API's check
(pkg/registry/core/pod/storage/eviction.go):

  expected       `getExpectedPodCount`: the pods the selector matches for an integer
                 minAvailable; for maxUnavailable and a percentage minAvailable the controller
                 adds up the scale of the pods' controllers (`getExpectedScale`). Here it is
                 always the pods the selector matches (terminating ones included, as the
                 controller's pod list includes them). That equals the scale while every
                 replica exists, and is larger (so stricter) while a replaced pod is still
                 terminating; it is smaller only while a replica is missing altogether
                 (deleted, its replacement not created yet), a window of milliseconds for a
                 ReplicaSet. Reading the scale would need `get` on every kind of controller
                 (and its /scale), which no other part of a swap needs. Pods without a
                 controller are counted here; `getExpectedScale` skips them (with an
                 `UnmanagedPods` warning on the budget), so over bare pods only, a
                 maxUnavailable budget expects 0 there and allows nothing.
  desired        minAvailable as a count, or as a percentage of expected rounded up;
                 expected - maxUnavailable, maxUnavailable a percentage rounded up too
                 (`intstr.GetScaledValueFromIntOrPercent(..., true)`), never below 0. A budget
                 with neither field expects 0 pods, which allows nothing (`updatePdbStatus`:
                 no disruption while expectedCount <= 0); a spec that does not parse allows
                 nothing either, as the controller's `failSafe` sets it.
  healthy        `countHealthyPods`: Ready and not being deleted; here also not mid-swap.
  allowed        healthy - desired, at least 0.

A Ready pod may start when every budget that selects it allows at least one disruption (the
eviction API refuses a pod under two budgets; here all of them must allow). A pod that is not
Ready costs a budget nothing: the eviction API lets it go when the budget is healthy
(healthy >= desired) or its `unhealthyPodEvictionPolicy` is AlwaysAllow, and so does this.
(The eviction API also refuses an unready pod of a budget whose desired count is 0 and that
has no healthy pod, an artefact of its decrement; a budget that desires 0 protects nothing,
and here it does not block.) Selectors are read as `metav1.LabelSelectorAsSelector` reads
them for the controller's `getPodsForPdb` and eviction.go's `getPodDisruptionBudgets`: a null
selector selects no pod, an empty one (`{}`) every pod of the namespace (policy/v1; it was
none in v1beta1), one that does not parse no pod.

A Ready pod that no budget covers and that is its controller's only pod (the
`controller: true` owner reference: a ReplicaSet, a StatefulSet) is refused unless forced:
swapping it could leave its workload without a ready endpoint. When its controller has other
pods but none of them is Ready and not mid-swap, it waits for one to be (as it would for a
budget): they are most often NotReady for a moment, mid-swap or just swapped. A pod without
a controller is not held to this rule: it has no replicas to compare with, and a bare pod is
nobody's replica.
The controller is the pod's direct owner: during a Deployment's own rolling update its two
ReplicaSets are two owners (a conservative reading: each may look like a singleton).

Pure: budgets and pods in, verdicts out.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshctl.kube.policyv1 import (
    IntOrPercent,
    LabelSelector,
    Operator,
    PodDisruptionBudget,
)

PodKey = tuple[str, str]
"""(namespace, name)."""

ALWAYS_ALLOW = "AlwaysAllow"


class Verdict(enum.Enum):
    GO = "go"
    WAIT = "wait"
    """Not now: a budget (or the pod's controller) has no disruption to spare; later may."""
    REFUSE = "refuse"
    """Not without --force: the only Ready pod of its controller, and no budget covers it."""


@dataclass(frozen=True)
class Owner:
    """A pod's controller (its owner reference with `controller: true`)."""

    kind: str
    name: str
    uid: str


@dataclass(frozen=True)
class PodState:
    """What the budgets need of a pod."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ready: bool
    terminating: bool = False
    owner: Owner | None = None

    @property
    def key(self) -> PodKey:
        return self.namespace, self.name

    @classmethod
    def from_json(cls, pod: Mapping[str, Any]) -> PodState:
        metadata = pod.get("metadata") or {}
        conditions = (pod.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        owner = next((Owner(str(ref.get("kind") or ""), str(ref.get("name") or ""),
                            str(ref.get("uid") or ""))
                      for ref in metadata.get("ownerReferences") or []
                      if ref.get("controller") is True), None)
        return cls(namespace=str(metadata.get("namespace") or ""),
                   name=str(metadata.get("name") or ""),
                   labels={str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
                   ready=ready, terminating=bool(metadata.get("deletionTimestamp")),
                   owner=owner)


class BadBudget(ValueError):
    """A budget spec the controller could not use either (it then allows nothing)."""


@dataclass(frozen=True)
class BudgetCount:
    """One budget's numbers at one moment, with the pods mid-swap counted as disrupted."""

    namespace: str
    name: str
    expected: int
    desired_healthy: int
    healthy: int
    """Ready, not being deleted, not mid-swap."""
    mid_swap: int
    """Pods of the budget mid-swap now."""
    allowed: int
    """Disruptions it allows on top of those (healthy - desired, at least 0)."""
    unhealthy_always_allowed: bool = False
    error: str | None = None
    """Why its spec could not be used (then it allows nothing)."""

    @property
    def label(self) -> str:
        return f"PodDisruptionBudget {self.namespace}/{self.name}"

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.label} cannot be used ({self.error}): it allows no disruption"
        return (f"{self.label} needs {self.desired_healthy} healthy pod(s) of "
                f"{self.expected}, has {self.healthy} ({self.mid_swap} mid-swap): "
                f"{self.allowed} more disruption(s) allowed")


@dataclass(frozen=True)
class Check:
    """The verdict on one pod, the budgets that cover it, and the reason."""

    verdict: Verdict
    reason: str
    budgets: tuple[BudgetCount, ...] = ()
    """Every budget that selects the pod, with its numbers."""
    blocking: tuple[BudgetCount, ...] = ()
    """The budgets that said no (empty for GO, and when the controller rule decided)."""


def selects(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelectorAsSelector(selector).Matches(labels): a null selector matches
    nothing, an empty one everything, one that does not parse nothing (eviction.go skips a
    budget whose selector does not convert)."""
    if selector is None or not selector.valid:
        return False
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for requirement in selector.match_expressions:
        present = requirement.key in labels
        value = labels.get(requirement.key)
        match requirement.operator:
            case Operator.IN:
                ok = present and value in requirement.values
            case Operator.NOT_IN:
                ok = not present or value not in requirement.values
            case Operator.EXISTS:
                ok = present
            case Operator.DOES_NOT_EXIST:
                ok = not present
        if not ok:
            return False
    return True


def scaled(value: IntOrPercent, total: int) -> int:
    """intstr.GetScaledValueFromIntOrPercent(value, total, roundUp=true): a count as is, a
    percentage of `total` rounded up. Raises BadBudget for a string that is not a
    percentage, as the controller's parser does."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if not text.endswith("%"):
        raise BadBudget(f"{value!r} is neither a count nor a percentage")
    try:
        percent = int(text[:-1])
    except ValueError as exc:
        raise BadBudget(f"{value!r} is not a percentage") from exc
    return math.ceil(percent * total / 100)


def members(budget: PodDisruptionBudget, pods: Iterable[PodState]) -> list[PodState]:
    """The pods of the budget's namespace its selector matches."""
    return [p for p in pods
            if p.namespace == budget.namespace and selects(budget.selector, p.labels)]


def count(budget: PodDisruptionBudget, pods: Iterable[PodState],
          mid_swap: Collection[PodKey]) -> BudgetCount:
    """The budget's numbers, the pods in `mid_swap` counted as disrupted."""
    chosen = members(budget, pods)
    healthy = sum(1 for p in chosen if p.ready and not p.terminating and p.key not in mid_swap)
    swapping = sum(1 for p in chosen if p.key in mid_swap)
    always = budget.unhealthy_pod_eviction_policy == ALWAYS_ALLOW
    try:
        expected, desired = _expected_and_desired(budget, len(chosen))
    except BadBudget as exc:
        return BudgetCount(budget.namespace, budget.name, len(chosen), 0, healthy, swapping, 0,
                           always, error=str(exc))
    allowed = max(0, healthy - desired) if expected > 0 else 0
    return BudgetCount(budget.namespace, budget.name, expected, desired, healthy, swapping,
                       allowed, always)


def max_disruptions(budget: PodDisruptionBudget, pods: Iterable[PodState]) -> int:
    """How many of the budget's pods may be disrupted at once, now: what it allows with none
    of them mid-swap."""
    return count(budget, pods, ()).allowed


def may_start(pod: PodState, pods: Sequence[PodState], budgets: Iterable[PodDisruptionBudget],
              mid_swap: Collection[PodKey], *, force: bool = False) -> Check:
    """Whether `pod` may start its swap now, with the pods of `mid_swap` disrupted already.
    `pods` is every pod of the namespace (the budgets' and the controller's), `pod`
    included."""
    counts = tuple(count(b, pods, mid_swap) for b in budgets
                   if b.namespace == pod.namespace and selects(b.selector, pod.labels))
    if counts:
        blocking = tuple(c for c in counts if not _allows(c, pod))
        if blocking:
            return Check(Verdict.WAIT, "; ".join(c.describe() for c in blocking), counts,
                         blocking)
        return Check(Verdict.GO, "; ".join(c.describe() for c in counts), counts)
    return _controller_rule(pod, pods, mid_swap, force=force)


def _allows(budget: BudgetCount, pod: PodState) -> bool:
    if budget.error is not None:
        return False
    if not pod.ready or pod.terminating:
        # Not counted as healthy: swapping it lowers nothing (eviction.go's unhealthy pod
        # rule, with unhealthyPodEvictionPolicy).
        return budget.unhealthy_always_allowed or budget.healthy >= budget.desired_healthy
    return budget.allowed >= 1


def _controller_rule(pod: PodState, pods: Sequence[PodState], mid_swap: Collection[PodKey],
                     *, force: bool) -> Check:
    if pod.owner is None or not pod.ready:
        return Check(Verdict.GO, "no PodDisruptionBudget covers it")
    if force:
        return Check(Verdict.GO, "no PodDisruptionBudget covers it (--force: its controller's "
                                 "other pods not looked at)")
    siblings = [p for p in pods if p.owner is not None and p.owner.uid == pod.owner.uid
                and p.key != pod.key and not p.terminating]
    owner = f"{pod.owner.kind} {pod.namespace}/{pod.owner.name}"
    if not siblings:
        return Check(Verdict.REFUSE,
                     f"the only Ready pod of {owner}, and no PodDisruptionBudget covers it: "
                     f"its swap could leave {owner} without a ready pod (--force swaps it "
                     f"anyway)")
    available = [p for p in siblings if p.ready and p.key not in mid_swap]
    if not available:
        # Its siblings exist but none serves now: mid-swap, or NotReady for a moment (a pod
        # whose swap just ended is Ready again only at the kubelet's next status update). A
        # wait, not a refusal: they come back.
        return Check(Verdict.WAIT,
                     f"the other pod(s) of {owner} are not Ready or are mid-swap, and no "
                     f"PodDisruptionBudget covers it")
    return Check(Verdict.GO, f"no PodDisruptionBudget covers it; {owner} has "
                             f"{len(available)} other Ready pod(s)")


def _expected_and_desired(budget: PodDisruptionBudget, selected: int) -> tuple[int, int]:
    if budget.max_unavailable is not None:
        unavailable = scaled(budget.max_unavailable, selected)
        return selected, max(0, selected - unavailable)
    if budget.min_available is not None:
        return selected, scaled(budget.min_available, selected)
    return 0, 0
