"""The rollout's pods under `--handover ephemeral`: where each one's handover is started,
followed on the rollout's one watch, and ended (`meshctl.rollout.run` hands its ephemeral pods
here; the decisions are `meshctl.rollout.ephemeral`'s, the containers and the verdict
`meshctl.podswap.ephemeral`'s, as for `meshctl upgrade --pod --handover ephemeral`).

Per pod: the record (one patch) -> the slot's container `meshctl-e<N>` (the subresource) ->
the watch sees it run -> the check container `meshctl-check-<N>` -> the watch sees it exit:
0 one patch switches the annotations and marks the record upgraded; 8 (or the slot ended
first) one patch marks it rolled back; anything else is incomplete. 4 requests for an
upgraded pod (two-slot: 2).

No disruption budget is asked and none is taken: nothing restarts, the pod's Ready condition
never moves, so the pod is never disrupted (the eviction API's sense, which budgets count).
The single-pod path decided the same (`meshctl.podswap.ephemeral_swap`).

Nothing can be set back: an ephemeral container cannot be removed, and the old slot serves
until the new generation is LIVE. So at the deadline, on a signal, or past --pod-timeout, a
pod in flight keeps its record `upgrading` (its handover goes on in the pod) and the same
command follows it to its verdict.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from meshctl.clock import Clock
from meshctl.kube import Conflict, Kube, KubeError, NotFound
from meshctl.podswap import ephemeral
from meshctl.podswap.ephemeral import EphemeralPlan
from meshctl.rollout import ephemeral as decisions
from meshctl.rollout.ephemeral import Next, Written
from meshctl.rollout.plan import PodKey, RolloutSettings, RolloutSpec
from meshctl.rollout.record import PodPhase
from meshctl.rollout.report import PodRun

T = TypeVar("T")

_RETRIES = 3
"""Adds of the check container tried when another ephemeral container was added meanwhile."""


class Host(Protocol):
    """What the rollout (`meshctl.rollout.run._Rollout`) lends: its client, its view of the
    pods, its request count per pod, and its way to end a pod (phase, Event, progress)."""

    kube: Kube
    spec: RolloutSpec
    settings: RolloutSettings
    clock: Clock
    latest: dict[PodKey, dict[str, Any]]

    def _request(self, run: PodRun, call: Callable[[], T]) -> T: ...

    def _end(self, run: PodRun, phase: PodPhase, detail: str) -> None: ...

    def _now_iso(self) -> str: ...


class EphemeralHandovers:
    """The handovers in flight, each with how far this run's own writes went."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.written: dict[PodKey, Written] = {}
        self.tries: dict[PodKey, int] = {}

    def start(self, run: PodRun, handover: EphemeralPlan, pod: dict[str, Any]) -> dict[str, Any]:
        """The record, then the slot's container. Returns the pod as the add left it. Raises
        the KubeError of either request (Conflict: another ephemeral container was added since
        `pod` was read; re-read and re-plan), the record undone when the add failed."""
        host, (ns, name) = self.host, run.key
        record = decisions.record_for(handover, host.spec, canary=run.canary, time=host._now_iso())
        recorded = host._request(run, functools.partial(
            host.kube.patch_pod, ns, name, decisions.record_ops(pod, handover, record)))
        try:
            added = host._request(run, functools.partial(
                host.kube.add_ephemeral_container, ns, name,
                ephemeral.add_patch(recorded, ephemeral.slot_container(recorded, handover))))
        except KubeError as exc:
            with contextlib.suppress(KubeError):
                host._request(run, functools.partial(host.kube.patch_pod, ns, name,
                                                     decisions.unrecord_ops(pod)))
            if isinstance(exc, NotFound):
                host._request(run, functools.partial(host.kube.get_pod, ns, name))  # gone?
                raise KubeError(
                    "the API server does not serve pods/ephemeralcontainers (Kubernetes "
                    "before 1.23, or the feature off); use --handover two-slot") from exc
            raise
        run.record = record
        self.written[run.key] = Written.SLOT
        return added

    def resume(self, run: PodRun, pod: dict[str, Any]) -> None:
        """A pod an earlier run left mid-handover: how far it got is read from the pod."""
        assert run.handover is not None
        self.written[run.key] = decisions.written_in(pod, run.handover)
        self.on_pod(run, pod)

    def on_pod(self, run: PodRun, pod: dict[str, Any]) -> None:
        """A state of the pod (the watch's, or an answer): take the step it asks for."""
        handover, record = run.handover, run.record
        assert handover is not None and record is not None
        written = self.written.get(run.key, Written.RECORD)
        if decisions.written_in(pod, handover) >= written:
            self.host.latest[run.key] = pod  # our next patch's `test`s are built on it
        decision = decisions.decide(pod, handover, written)
        match decision.next:
            case Next.WAIT:
                run.detail = decision.detail
            case Next.ADD_SLOT:
                self._add(run, ephemeral.slot_container(pod, handover), Written.SLOT)
            case Next.ADD_CHECK:
                remaining = (run.deadline.remaining() if run.deadline is not None
                             else self.host.settings.pod_timeout_s)
                check = ephemeral.check_container(pod, handover,
                                                  ephemeral.check_timeout_s(remaining))
                self._add(run, check, Written.CHECK)
            case Next.FINISH:
                self._finish(run, decisions.done_ops(pod, handover, record, self.host._now_iso()),
                             PodPhase.UPGRADED,
                             f"{handover.to_image} serves in ephemeral slot "
                             f"{handover.new_slot}: {decision.detail}")
            case Next.ROLL_BACK:
                self._finish(run, decisions.rolled_back_ops(pod, handover, record,
                                                     self.host._now_iso(), decision.detail),
                             PodPhase.ROLLED_BACK,
                             f"{decision.detail}; slot {handover.old_slot} keeps serving "
                             f"{handover.from_image}")
            case Next.NOT_CONFIRMED:
                self._incomplete(run, f"the handover check could not judge: "
                                      f"{decision.detail}")

    def deadline(self, run: PodRun) -> None:
        """--pod-timeout passed without a verdict."""
        assert run.handover is not None
        self._incomplete(run, f"slot {run.handover.new_slot} not confirmed within "
                              f"{self.host.settings.pod_timeout_s:g}s: {run.detail}")

    def interrupt(self, run: PodRun, reason: str) -> None:
        """At the deadline or on a signal: nothing to set back; the next run follows it."""
        assert run.handover is not None
        self.host._end(run, PodPhase.INTERRUPTED,
                       f"left mid-handover to slot {run.handover.new_slot} ({reason}); slot "
                       f"{run.handover.old_slot} serves until it is LIVE; the same command "
                       f"follows it")

    def _add(self, run: PodRun, container: dict[str, Any], written: Written) -> None:
        host, (ns, name) = self.host, run.key
        pod = host.latest[run.key]
        try:
            pod = host._request(run, functools.partial(
                host.kube.add_ephemeral_container, ns, name,
                ephemeral.add_patch(pod, container)))
        except Conflict:
            # Another ephemeral container was added since our read: read, and try again.
            self.tries[run.key] = self.tries.get(run.key, 0) + 1
            if self.tries[run.key] > _RETRIES:
                self._incomplete(run, f"the pod kept changing while {container['name']} was "
                                      f"added")
                return
            self.on_pod(run, host._request(run, functools.partial(host.kube.get_pod, ns, name)))
            return
        except NotFound:
            host._end(run, PodPhase.GONE, "deleted while the rollout ran")
            return
        except KubeError as exc:
            self._incomplete(run, f"{container['name']} not added: {exc}")
            return
        self.written[run.key] = written
        run.detail = f"{container['name']} added"
        self.on_pod(run, pod)

    def _finish(self, run: PodRun, ops: list[dict[str, Any]], phase: PodPhase,
                detail: str) -> None:
        """The verdict into the record (one patch); the pod's outcome."""
        host, (ns, name) = self.host, run.key
        try:
            host.latest[run.key] = host._request(run, functools.partial(
                host.kube.patch_pod, ns, name, ops))
        except NotFound:
            host._end(run, PodPhase.GONE, "deleted while the rollout ran")
            return
        except KubeError as exc:
            # The record still says upgrading: the next run reads the verdict again.
            self._incomplete(run, f"{detail}; not recorded: {exc}")
            return
        host._end(run, phase, detail)

    def _incomplete(self, run: PodRun, detail: str) -> None:
        """Not known: the record stays `upgrading`, so that the same command follows it."""
        self.host._end(run, PodPhase.INCOMPLETE, detail)
