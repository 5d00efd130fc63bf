"""The fresh reads behind a disruption-budget check (`read`), and the wait of
`meshctl upgrade --pod` until its pod's budgets allow its swap (`await_budgets`).

Each check reads again, never from a cache: the namespace's PodDisruptionBudgets (one list)
and, when a budget or a controller is involved, the namespace's pods (one list), since the
pods a budget counts need not be the ones being swapped. The decision itself is
`meshctl.podswap.budget`'s (pure).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshctl import errors
from meshctl.clock import Clock, Deadline, SystemClock
from meshctl.kube import Kube, KubeError, PodDisruptionBudget
from meshctl.podswap.budget import Check, PodKey, PodState, Verdict, may_start

POLL_S = 1.0
"""Between two checks while a budget holds a pod: each costs one or two list requests."""


class BudgetWaitTimedOut(errors.Busy):
    """A budget (or the pod's controller) allowed no disruption within the timeout; nothing
    was changed (exit code 4: retry later)."""


class OnlyReadyPod(errors.PreflightFailed):
    """The only Ready pod of its controller, and no budget covers it: refused without --force
    (exit code 6); nothing was changed."""


@dataclass(frozen=True)
class Snapshot:
    """One namespace's budgets and pods, as read for one check."""

    budgets: tuple[PodDisruptionBudget, ...] = ()
    pods: tuple[PodState, ...] = ()
    raw: Mapping[PodKey, dict[str, Any]] = field(default_factory=dict)
    """The pods as listed (their annotations: a swap another meshctl has in progress)."""
    requests: int = 0

    def pod(self, key: PodKey) -> PodState | None:
        return next((p for p in self.pods if p.key == key), None)

    def check(self, key: PodKey, mid_swap: Collection[PodKey], *, force: bool) -> Check | None:
        """`budget.may_start` for the pod `key`; None when it is not in the snapshot (deleted:
        the swap's own read will say so)."""
        state = self.pod(key)
        if state is None:
            return None
        return may_start(state, self.pods, self.budgets, mid_swap, force=force)


def read(kube: Kube, namespace: str, *, owners: bool) -> Snapshot:
    """The namespace's budgets; its pods too when a budget exists or `owners` (a pod to check
    has a controller, whose other pods the rule without a budget looks at)."""
    before = kube.requests
    budgets = tuple(kube.list_pod_disruption_budgets(namespace))
    if not budgets and not owners:
        return Snapshot(requests=kube.requests - before)
    # The whole namespace (no label selector): a budget may select pods the caller's own
    # selector does not.
    listed, _ = kube.list_pods(namespace, "")
    raw = {(str((p.get("metadata") or {}).get("namespace") or namespace),
            str((p.get("metadata") or {}).get("name") or "")): p for p in listed}
    pods = tuple(PodState.from_json(p) for p in listed)
    return Snapshot(budgets, pods, raw, kube.requests - before)


def await_budgets(kube: Kube, pod: Mapping[str, Any], *, force: bool, timeout_s: float,
                  report: Callable[[str], None], clock: Clock | None = None) -> Check | None:
    """Wait until the budgets of `pod` (as last read) allow its swap (each look a fresh
    read), at most `timeout_s`. Returns the check that let it go (None: the pod is not listed
    any more; the swap's own requests report it). Raises OnlyReadyPod, or
    BudgetWaitTimedOut."""
    clock = clock or SystemClock()
    deadline = Deadline(clock, timeout_s)
    metadata = pod.get("metadata") or {}
    namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
    key = (namespace, name)
    owners = has_controller([pod])
    said = ""
    while True:
        snapshot = read(kube, namespace, owners=owners)
        state = snapshot.check(key, (), force=force)
        if state is None or state.verdict is Verdict.GO:
            return state
        where = f"pod {namespace}/{name}"
        if state.verdict is Verdict.REFUSE:
            raise OnlyReadyPod(f"{where} not swapped: {state.reason}")
        if state.reason != said:
            report(f"{where}: waiting (up to {timeout_s:g}s): {state.reason}")
            if not said:
                _held_event(kube, snapshot.raw.get(key), state.reason)
            said = state.reason
        if deadline.expired():
            raise BudgetWaitTimedOut(f"{where} not swapped: still held after {timeout_s:g}s: "
                                     f"{state.reason}; nothing was changed")
        time.sleep(min(POLL_S, deadline.remaining()))


def has_controller(pods: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any of these pods (as listed) has a controller owner reference."""
    for pod in pods:
        refs = (pod.get("metadata") or {}).get("ownerReferences") or []
        if any(ref.get("controller") is True for ref in refs):
            return True
    return False


def _held_event(kube: Kube, pod: Mapping[str, Any] | None, reason: str) -> None:
    """One Event on the pod when its swap starts to wait (`kubectl describe pod` shows why
    nothing happens yet); best effort, as every Event of a swap."""
    if pod is None:
        return
    with contextlib.suppress(KubeError):
        kube.create_event(pod, "MeshctlUpgradeHeld", f"waiting for a disruption: {reason}")
