"""`meshctl rollout`: the proxy image of every pod of a label selector, upgraded in place, in
batches. Where the fleet is driven; each pod's swap is the in-pod swap of
`meshctl.podswap.swap`, done here in fewer requests:

    list the selector's pods (one request per 500) -> select and plan (`rollout.plan`) ->
    one watch on the selector -> batch by batch:
        patch each pod: the new image into its standby slot and the rollout's record
            (one request; `test`s on both slots) -> follow every pod on the one watch ->
        ready: one patch returns the old slot to standby, switches the annotations and marks
            the record upgraded, only if the new container is still the ready one (the
            handover check inside the same request) -> the old slot stands by: done
        not ready in time, or failed for good: one patch sets the standby slot back
        an Event for each pod that did not end upgraded (--events: all, failures, none)
    -> after each batch: stop after --max-failures, a failed canary, or pause after it

So an upgraded pod costs 2 requests (start, retire), a rolled back one 3 (start, roll back,
Event), plus a share of the list and the watch. Only the main thread makes requests, so each
pod's count is exact; a thread reads the watch stream into a queue. Every wait is bounded by
the pod's deadline, the rollout's deadline (--timeout) and a short tick that notices a
signal. At the deadline or on
a signal, pods whose new slot is not ready yet are set back (`interrupted`: a later run
starts them again); pods already handing over finish on their own.

The state lives in the pods (`meshctl.rollout.record`): running the same command again
continues where the last run stopped, whatever stopped it.

With `--handover ephemeral` (and for a pod an earlier run left mid-handover to an ephemeral
slot) each pod's steps are `meshctl.rollout.ephemeral_run`'s; the batches, the watch, the
deadlines, the stop rules and the summary stay here.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from meshctl import errors
from meshctl.clock import Clock, Deadline, SystemClock
from meshctl.kube import (
    Conflict,
    EventType,
    Forbidden,
    Kube,
    KubeError,
    NotFound,
    PodEvent,
    PodWatch,
    WatchExpired,
)
from meshctl.podswap import disruption, plan
from meshctl.podswap.budget import Check, Verdict
from meshctl.podswap.layout import Handover
from meshctl.podswap.readiness import ReadyWindow
from meshctl.rollout import plan as rp
from meshctl.rollout.dry_run import dry_run_plan
from meshctl.rollout.ephemeral_run import EphemeralHandovers
from meshctl.rollout.gate import Gate, Held, numbers
from meshctl.rollout.plan import (
    Action,
    Batch,
    BatchKind,
    Counts,
    PodKey,
    RolloutEvent,
    RolloutResult,
    RolloutSettings,
    RolloutSpec,
    StopRule,
)
from meshctl.rollout.record import (
    FAILURES,
    PodPhase,
    RolloutRecord,
    decode,
    transition,
)
from meshctl.rollout.report import PodRun, RolloutReport

log = logging.getLogger(__name__)

T = TypeVar("T")

Emit = Callable[[dict[str, Any]], None]
"""Takes one progress event (`{"event": "pod_started", ...}`: a `RolloutEvent`); the CLI
renders it."""

TICK_S = 0.2
"""The longest the loop waits without looking at the stop flag."""
_BURST = 64
"""Events taken in at most, once one arrived, before the deadlines are looked at again."""
_IN_FLIGHT = frozenset({PodPhase.UPGRADING, PodPhase.RETIRING})
_RECONNECT_MIN_S = 0.2

EVENT_REASONS = {
    PodPhase.UPGRADED: ("MeshctlRolloutUpgraded", False),
    PodPhase.ROLLED_BACK: ("MeshctlRolloutRolledBack", True),
    PodPhase.INTERRUPTED: ("MeshctlRolloutInterrupted", False),
    PodPhase.INCOMPLETE: ("MeshctlRolloutIncomplete", True),
    PodPhase.FAILED: ("MeshctlRolloutFailed", True),
}
"""The one Kubernetes Event of each pod outcome: (reason, warning)."""


class NothingSelected(errors.PreflightFailed):
    """No pod matched the selector: refused (a typo in a selector must not pass as done)."""


class StopFlag:
    """Set by a signal handler, which does nothing else; the loop reads it."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def request(self, signum: int) -> None:
        self.signal = signum


def run_rollout(kube: Kube, spec: RolloutSpec, settings: RolloutSettings | None = None, *,
                dry_run: bool = False, emit: Emit | None = None, clock: Clock | None = None,
                stop: StopFlag | None = None) -> RolloutReport:
    """Run (or with `dry_run`, plan) the rollout. Raises a MeshctlError only when refused
    before any pod was changed (the CLI's exit code 3); everything after is in the report."""
    return _Rollout(kube, spec, settings or RolloutSettings(), emit or (lambda _e: None),
                    clock or SystemClock(), stop or StopFlag()).run(dry_run=dry_run)


class _Rollout:
    def __init__(self, kube: Kube, spec: RolloutSpec, settings: RolloutSettings,
                 emit: Emit, clock: Clock, stop: StopFlag) -> None:
        self.kube = kube
        self.spec = spec
        self.settings = settings
        self.emit_event = emit
        self.clock = clock
        self.stop = stop
        self.t0 = clock.monotonic()
        self.cpu0 = time.process_time()
        self.requests0 = kube.requests
        self.deadline = (Deadline(clock, settings.timeout_s) if settings.timeout_s is not None
                         else None)
        self.runs: dict[PodKey, PodRun] = {}
        self.latest: dict[PodKey, dict[str, Any]] = {}
        self.batches: list[Batch] = []
        self.batch_outcomes: dict[int, dict[str, int]] = {}
        self.watch: PodWatch | None = None
        self.watch_opened_s = 0.0
        self.watch_connections = 0
        self.version: str | None = None
        self.changed = 0
        self.events_ok = True
        self.deadline_hit = False
        self.aborted: str | None = None
        self.gate = Gate(kube, clock, force=settings.force)
        self.held: dict[PodKey, Held] = {}
        self.ephemeral = EphemeralHandovers(self)

    # ------------------------------------------------------------------ the run

    def run(self, *, dry_run: bool) -> RolloutReport:
        spec = self.spec
        pods, self.version = self.kube.list_pods(spec.namespace, str(spec.selector))
        selected = [p for p in pods if rp.matches(p, spec)]
        selection = rp.select(selected, spec)
        if not selection.selected:
            where = (f"namespace {spec.namespace}" if spec.namespace is not None
                     else "any namespace")
            raise NothingSelected(f"no pod matches the selector {spec.selector} in {where}")
        self.latest = {rp.key_of(p): p for p in selected}
        self._enter(selection)
        self.batches = rp.batches(selection, spec)
        self._announce(selection, dry_run=dry_run)
        if dry_run:
            return self._report(RolloutResult.DRY_RUN, "dry run: nothing changed",
                                plan=dry_run_plan(selection, self.batches, self.latest,
                                                  self.spec, self.settings,
                                                  self._now_iso()))
        rule = rp.before_start(self._counts(), spec)
        if rule.result is not None or not self.batches:
            return self._finish(rule)
        self._open_watch()
        try:
            rule = self._run_batches()
        except KubeError as exc:
            if self.changed == 0 and isinstance(exc, Forbidden | NotFound):
                raise  # refused before any change (exit code 3)
            self.aborted = f"the API failed midway: {exc}"
            log.info("rollout: %s", self.aborted)
            self._interrupt(f"API error: {exc}")
            rule = StopRule(RolloutResult.FAILED, self.aborted)
        except KeyboardInterrupt:
            self.stop.request(signal.SIGINT)
            self._interrupt("interrupted")
            rule = StopRule()
        finally:
            if self.watch is not None:
                self.watch.close()
        return self._finish(rule)

    def _enter(self, selection: rp.Selection) -> None:
        """Every selected pod gets its run, in order."""
        for target in selection.targets:
            self.runs[target.key] = PodRun(target.key, PodPhase.PENDING, swap=target.swap,
                                           handover=target.handover, resumed=target.resumed,
                                           planned_version=_version(self.latest[target.key]))
        for done in selection.already:
            self.runs[done.key] = PodRun(
                done.key, PodPhase.ALREADY_UPGRADED,
                detail=("upgraded by an earlier run of this rollout" if done.by_this_rollout
                        else "already ran the image"))
        for skip in (*selection.skipped, *selection.failed_earlier):
            phase = (PodPhase.ROLLED_BACK if skip.reason is rp.SkipReason.FAILED_EARLIER
                     else PodPhase.SKIPPED)
            self.runs[skip.key] = PodRun(skip.key, phase, detail=skip.detail,
                                         reason_code=skip.reason.value)
        self.runs = dict(sorted(self.runs.items()))

    def _announce(self, selection: rp.Selection, *, dry_run: bool) -> None:
        """The plan in one event, then the pods that will not be started, and why."""
        self.emit_event({"event": RolloutEvent.ROLLOUT_STARTED, "rollout": self.spec.id,
                         "image": self.spec.image, "selector": str(self.spec.selector),
                         "namespace": self.spec.namespace, "dry_run": dry_run,
                         "selected": selection.selected, "to_upgrade": len(selection.targets),
                         "resumed": sum(1 for t in selection.targets if t.resumed),
                         "already_upgraded": len(selection.already),
                         "skipped": len(selection.skipped),
                         "failed_earlier": len(selection.failed_earlier),
                         "batches": len(self.batches)})
        for run in self.runs.values():
            if run.phase is PodPhase.ALREADY_UPGRADED:
                self._emit(RolloutEvent.POD_UPGRADED, run, already=True)
            elif run.phase is not PodPhase.PENDING:
                self._emit(RolloutEvent.POD_SKIPPED, run, reason_code=run.reason_code,
                           reason=run.detail)

    def _run_batches(self) -> StopRule:
        for position, batch in enumerate(self.batches):
            if self._stopping():
                break
            self._drain()
            for key in batch.pods:
                run = self.runs[key]
                run.batch, run.canary = batch.index, batch.kind is BatchKind.CANARY
                if run.phase is PodPhase.PENDING and run.resumed:
                    self._resume(run)  # mid-swap already: no budget to ask
            self._admit(batch)
            self._follow(batch)
            self._batch_done(batch)
            if self._stopping():
                break
            canary_failed = batch.kind is BatchKind.CANARY and any(
                self.runs[k].phase in FAILURES for k in batch.pods)
            rule = rp.after_batch(batch, self._counts(), self.spec, canary_failed=canary_failed,
                                  more=position < len(self.batches) - 1)
            if rule.result is not None:
                return rule
        return StopRule()

    def _follow(self, batch: Batch) -> None:
        """Until every pod of the batch has an outcome (or the rollout must stop)."""
        runs = [self.runs[k] for k in batch.pods]
        while True:
            in_flight = [r for r in runs if r.phase in _IN_FLIGHT]
            held = [r for r in runs if r.phase is PodPhase.PENDING]
            if not in_flight and not held:
                return
            if self._stopping():
                self._interrupt(self._stop_reason())
                self._release(held)
                return
            if held and self.gate.due(self._mid_swap_count()):
                self._admit(batch)
                continue
            event = self._next_event(self._wait_s(in_flight))
            # The events already delivered are taken in a burst (bounded, so that a busy
            # stream cannot hold off the deadlines), then the deadlines are looked at once.
            taken = 0
            while event is not None:
                self._on_event(event)
                taken += 1
                event = self._next_event(0.0) if taken < _BURST else None
            self._check_deadlines(in_flight)

    # ------------------------------------------------------------------ disruption budgets

    def _admit(self, batch: Batch) -> None:
        """Start the batch's pods not started yet, as far as their disruption budgets allow
        now (a fresh read of the budgets and the pods: `rollout.gate`); hold the others."""
        pending = [self.runs[k] for k in batch.pods if self.runs[k].phase is PodPhase.PENDING]
        if self.spec.handover is Handover.EPHEMERAL:
            # No budget is asked and none taken: an ephemeral handover restarts nothing, the
            # pod stays Ready, so it is no disruption (`meshctl.rollout.ephemeral_run`).
            for run in pending:
                self._start(run)
            return
        if not pending:
            return
        mid_swap = self._disrupted()
        owners = disruption.has_controller(self.latest[r.key] for r in pending
                                           if r.key in self.latest)
        checks = self.gate.admit([r.key for r in pending], mid_swap, owners=owners)
        for run in pending:
            check = checks.get(run.key)
            if check is None or check.verdict is Verdict.GO:
                held = self.held.pop(run.key, None)
                if held is not None:
                    run.held_s = self.clock.monotonic() - held.since_s
                self._start(run)
            elif check.verdict is Verdict.REFUSE:
                self._skip(run, rp.SkipReason.ONLY_READY, check.reason)
            else:
                self._hold(run, check)
        self.gate.started(self._disrupted())

    def _disrupted(self) -> set[PodKey]:
        """This rollout's pods mid-swap as budgets count them: a pod mid-handover to an
        ephemeral slot is not disrupted (nothing restarts), so it takes no budget's room."""
        return {k for k, r in self.runs.items() if r.phase in _IN_FLIGHT and r.handover is None}

    def _hold(self, run: PodRun, check: Check) -> None:
        """A budget holds the pod: an event when it starts waiting or the numbers change;
        failed past --pod-timeout when the rollout has no --timeout of its own."""
        held = self.held.get(run.key)
        if held is None:
            bound = self.settings.pod_timeout_s if self.deadline is None else None
            held = Held(self.clock.monotonic(),
                        Deadline(self.clock, bound) if bound is not None else None)
            self.held[run.key] = held
            self.gate.held(check)
        run.held_s = self.clock.monotonic() - held.since_s
        if held.deadline is not None and held.deadline.expired():
            self.held.pop(run.key)
            run.reason_code = "budget"
            self._end(run, PodPhase.FAILED, f"not started: held {run.held_s:.0f}s (past "
                                            f"--pod-timeout): {check.reason}")
            return
        run.detail = f"held: {check.reason}"
        if check.reason != held.reason:
            held.reason = check.reason
            self._emit(RolloutEvent.BUDGET_WAIT, run, reason=check.reason,
                       budgets=[numbers(c) for c in check.blocking],
                       waited_s=round(run.held_s, 3))

    def _release(self, held: Iterable[PodRun]) -> None:
        """At the deadline or on a signal: the pods still held are not started (the same
        command starts them later); their detail says what held them."""
        for run in held:
            state = self.held.pop(run.key, None)
            if state is not None:
                run.held_s = self.clock.monotonic() - state.since_s
                run.detail = f"not started ({self._stop_reason()}): {state.reason}"

    def _mid_swap_count(self) -> int:
        return len(self._disrupted())

    def _wait_s(self, runs: Iterable[PodRun]) -> float:
        wait = TICK_S
        for run in runs:
            if run.deadline is not None:
                wait = min(wait, run.deadline.remaining())
        if self.deadline is not None:
            wait = min(wait, self.deadline.remaining())
        return max(0.0, wait)

    # ------------------------------------------------------------------ one pod

    def _start(self, run: PodRun) -> None:
        """Re-plan from the latest state, then one patch: image and record together."""
        ns, name = run.key
        pod = self.latest[run.key]
        for _ in range(self.settings.start_attempts):
            outcome: rp.Target | rp.Already | rp.Skip
            unchanged = (run.planned_version is not None
                         and _version(pod) == run.planned_version)
            if run.swap is not None and unchanged:
                outcome = rp.Target(run.key, run.swap)  # as listed: the plan stands
            else:
                outcome = rp.classify(pod, self.spec)
            if isinstance(outcome, rp.Already):
                self._set(run, PodPhase.ALREADY_UPGRADED, "already ran the image")
                self._emit(RolloutEvent.POD_UPGRADED, run, already=True)
                return
            if isinstance(outcome, rp.Skip):
                self._skip(run, outcome.reason, outcome.detail)
                return
            try:
                pod, record = self._start_patch(run, outcome, pod)
            except Conflict:
                # Changed between our read and our write: read it again, plan again.
                pod = self._request(run, functools.partial(self.kube.get_pod, ns, name))
                self.latest[run.key] = pod
                continue
            except NotFound:
                self._set(run, PodPhase.GONE, "deleted before it was started")
                return
            except Forbidden:
                if self.changed == 0:
                    raise
                self._set(run, PodPhase.FAILED, "forbidden to patch it")
                return
            except KubeError as exc:
                self._set(run, PodPhase.FAILED, f"not started: {exc}")
                self._emit(RolloutEvent.POD_FAILED, run, reason=run.detail)
                return
            self.changed += 1
            self.latest[run.key] = pod
            generation = (pod.get("metadata") or {}).get("generation")
            run.swap, run.handover = outcome.swap, outcome.handover
            run.record = record or run.record
            run.generation = int(generation) if generation is not None else None
            run.started_s = self.clock.monotonic()
            run.readiness = ReadyWindow(self.clock)
            run.readiness.observe(pod)
            run.deadline = Deadline(self.clock, self.settings.pod_timeout_s)
            self._set(run, PodPhase.UPGRADING, "waiting for the kubelet")
            self._emit(RolloutEvent.POD_STARTED, run)
            if run.handover is not None:
                self.ephemeral.on_pod(run, pod)
            return
        self._skip(run, rp.SkipReason.CHANGED,
                   f"kept changing while starting ({self.settings.start_attempts} tries)")

    def _start_patch(self, run: PodRun, target: rp.Target,
                     pod: dict[str, Any]) -> tuple[dict[str, Any], RolloutRecord | None]:
        """The pod after its start; the record written (the ephemeral one is the run's)."""
        if target.handover is not None:
            return self.ephemeral.start(run, target.handover, pod), None
        assert target.swap is not None
        record = rp.record_for(target.swap, self.spec, canary=run.canary, time=self._now_iso())
        ops = rp.start_ops(pod, target.swap, record)
        return self._request(run, functools.partial(self.kube.patch_pod, *run.key, ops)), record

    def _resume(self, run: PodRun) -> None:
        """A pod an earlier run left mid-swap: its new image is in place; follow it."""
        pod = self.latest[run.key]
        run.record = decode((pod.get("metadata") or {}).get("annotations"))
        if run.record is None or (run.swap is None
                                  and run.handover is None):  # pragma: no cover  (selected)
            self._skip(run, rp.SkipReason.CHANGED, "its rollout record is gone")
            return
        run.started_s = self.clock.monotonic()
        run.readiness = ReadyWindow(self.clock)
        run.deadline = Deadline(self.clock, self.settings.pod_timeout_s)
        self._set(run, PodPhase.UPGRADING, "resumed: waiting for the new slot")
        self._emit(RolloutEvent.POD_STARTED, run, resumed=True)
        if run.handover is not None:
            run.readiness.observe(pod)
            self.ephemeral.resume(run, pod)
            return
        self._decide(run, pod)

    def _on_event(self, event: PodEvent) -> None:
        if event.type is EventType.BOOKMARK:
            self.version = event.resource_version or self.version
            return
        self.version = event.resource_version or self.version
        run = self.runs.get(event.key)
        if run is None:
            return  # not selected at the start (new pods wait for the next run)
        if event.type is EventType.DELETED:
            self.latest.pop(event.key, None)
            if not run.phase.terminal:
                self._set(run, PodPhase.GONE, "deleted while the rollout ran")
                self._emit(RolloutEvent.POD_SKIPPED, run, reason_code=rp.SkipReason.DELETED.value,
                           reason=run.detail)
            return
        if run.phase in (PodPhase.UPGRADING, PodPhase.RETIRING):
            self._decide(run, event.pod)
        elif run.phase is PodPhase.PENDING:
            self.latest[event.key] = event.pod

    def _decide(self, run: PodRun, pod: dict[str, Any]) -> None:
        if run.readiness is not None:
            run.readiness.observe(pod)  # every state, before our write or after
        if run.handover is not None:
            self.ephemeral.on_pod(run, pod)
            return
        assert run.swap is not None
        try:
            view = plan.pod_view(pod)
            if rp.before_our_write(view, run.phase, run.swap):
                return  # a state from before our last patch: the watch is catching up
            self.latest[run.key] = pod
            decision = rp.decide(run.phase, view, run.swap, run.generation)
        except errors.MeshctlError as exc:
            # Someone else broke the pod's slots meanwhile: nothing of ours can be trusted.
            self._end(run, PodPhase.FAILED if run.phase is PodPhase.UPGRADING
                      else PodPhase.INCOMPLETE, f"the pod's proxy slots changed: {exc}")
            return
        match decision.action:
            case Action.WAIT:
                run.detail = decision.detail
            case Action.RETIRE:
                self._retire(run)
            case Action.ROLL_BACK:
                self._roll_back(run, decision.detail)
            case Action.FINISH:
                self._end(run, PodPhase.UPGRADED, f"{run.swap.to_image} serves in slot "
                                                  f"{run.swap.new_slot}")
            case Action.FINISH_INCOMPLETE:
                self._end(run, PodPhase.INCOMPLETE,
                          f"{run.swap.new_container} serves {run.swap.to_image}, but "
                          f"{decision.detail}")

    def _retire(self, run: PodRun) -> None:
        """One patch: the old slot to standby, annotations and record switched, guarded by
        the new container's readiness. After two refusals, a fresh read decides, and the
        last try goes without the status guard (the fresh read checked it)."""
        assert run.swap is not None and run.record is not None
        ns, name = run.key
        ops = rp.retire_ops(self.latest[run.key], run.swap, run.record, self._now_iso(),
                            guard=run.retire_tries < 2)
        try:
            pod = self._request(run, lambda: self.kube.patch_pod(ns, name, ops))
        except Conflict:
            run.retire_tries += 1
            if run.retire_tries > 2:
                self._roll_back(run, "the pod kept changing while the old slot was retired")
                return
            fresh = self._request(run, lambda: self.kube.get_pod(ns, name))
            self._decide(run, fresh)
            return
        except NotFound:
            self._end(run, PodPhase.GONE, "deleted while the rollout ran")
            return
        except KubeError as exc:
            self._roll_back(run, f"API error while retiring the old slot: {exc}")
            return
        self.latest[run.key] = pod
        run.record = run.record.moved(PodPhase.UPGRADED, self._now_iso())
        run.deadline = Deadline(self.clock, self.settings.retire_timeout_s)
        self._set(run, PodPhase.RETIRING, f"{run.swap.new_container} serves; "
                                          f"{run.swap.old_container} to standby")

    def _roll_back(self, run: PodRun, reason: str, *, interrupted: bool = False) -> None:
        assert run.swap is not None and run.record is not None
        ns, name = run.key
        ops = rp.rollback_ops(self.latest[run.key], run.swap, run.record, self._now_iso(),
                              reason, interrupted=interrupted)
        try:
            pod = self._request(run, lambda: self.kube.patch_pod(ns, name, ops))
        except Conflict:
            self._end(run, PodPhase.FAILED, f"not rolled back: the pod was changed by someone "
                                            f"else meanwhile ({reason})")
            return
        except NotFound:
            self._end(run, PodPhase.GONE, "deleted while the rollout ran")
            return
        except KubeError as exc:
            self._end(run, PodPhase.FAILED, f"not rolled back: {exc} ({reason})")
            return
        self.latest[run.key] = pod
        phase = PodPhase.INTERRUPTED if interrupted else PodPhase.ROLLED_BACK
        self._end(run, phase, f"slot {run.swap.new_slot} set back to "
                              f"{run.swap.standby_image}; slot {run.swap.old_slot} keeps "
                              f"serving {run.swap.from_image} ({reason})")

    def _end(self, run: PodRun, phase: PodPhase, detail: str) -> None:
        """A pod's outcome: its phase, its one Event, its progress event."""
        self._set(run, phase, detail)
        run.ended_s = self.clock.monotonic()
        reason, warning = EVENT_REASONS.get(phase, (None, False))
        if reason is not None and self.settings.events.wants(phase):
            self._k8s_event(run, reason, f"rollout {self.spec.id}: {phase.value}: {detail}",
                            warning)
        if phase is PodPhase.UPGRADED:
            self._emit(RolloutEvent.POD_UPGRADED, run)
        elif phase in (PodPhase.ROLLED_BACK, PodPhase.INTERRUPTED):
            self._emit(RolloutEvent.POD_ROLLED_BACK, run, reason=detail,
                       interrupted=phase is PodPhase.INTERRUPTED)
        elif phase is PodPhase.GONE:
            self._emit(RolloutEvent.POD_SKIPPED, run, reason_code=rp.SkipReason.DELETED.value,
                       reason=detail)
        else:
            self._emit(RolloutEvent.POD_FAILED, run, reason=detail)

    def _skip(self, run: PodRun, reason: rp.SkipReason, detail: str) -> None:
        self._set(run, PodPhase.SKIPPED, detail)
        run.reason_code = reason.value
        self._emit(RolloutEvent.POD_SKIPPED, run, reason_code=reason.value, reason=detail)

    def _set(self, run: PodRun, phase: PodPhase, detail: str) -> None:
        run.phase = transition(run.phase, phase)
        run.detail = detail

    def _check_deadlines(self, runs: Iterable[PodRun]) -> None:
        for run in runs:
            if run.deadline is None or not run.deadline.expired():
                continue
            if run.handover is not None and run.phase is PodPhase.UPGRADING:
                self.ephemeral.deadline(run)
            elif run.phase is PodPhase.UPGRADING:
                assert run.swap is not None
                self._roll_back(run, f"slot {run.swap.new_slot} ({run.swap.new_container}) "
                                     f"not ready within {self.settings.pod_timeout_s:g}s: "
                                     f"{run.detail}")
            elif run.phase is PodPhase.RETIRING:
                self._end(run, PodPhase.INCOMPLETE,
                          f"the old slot did not stand by within "
                          f"{self.settings.retire_timeout_s:g}s: {run.detail}")

    def _interrupt(self, reason: str) -> None:
        """Stop now: pods not ready yet are set back (resumable); handing over ones finish on
        their own (their record already says upgraded)."""
        for run in self.runs.values():
            if run.handover is not None and run.phase is PodPhase.UPGRADING:
                self.ephemeral.interrupt(run, reason)
            elif run.phase is PodPhase.UPGRADING:
                self._roll_back(run, reason, interrupted=True)
            elif run.phase is PodPhase.RETIRING:
                self._end(run, PodPhase.UPGRADED,
                          f"{run.detail} (the old slot's restart was not awaited: {reason})")

    # ------------------------------------------------------------------ the watch

    def _open_watch(self) -> None:
        remaining = self.deadline.remaining() if self.deadline is not None else 3600.0
        since = self.clock.monotonic() - self.watch_opened_s
        if self.watch_connections and since < _RECONNECT_MIN_S:
            time.sleep(_RECONNECT_MIN_S - since)  # no tight reconnect loop
        self.watch_opened_s = self.clock.monotonic()
        self.watch = self.kube.watch_pods(self.spec.namespace, str(self.spec.selector),
                                          self.version, max(1.0, remaining))
        self.watch_connections += 1

    def _next_event(self, timeout_s: float) -> PodEvent | None:
        if self.watch is None or self.watch.ended:
            if self.watch is not None:
                self.watch.close()
            self._open_watch()
        assert self.watch is not None
        try:
            event = self.watch.next(timeout_s)
        except WatchExpired:
            self._relist()
            return None
        if event is not None and event.type is not EventType.BOOKMARK and not rp.matches(event.pod,
                                                                             self.spec):
            # A server that ignores labelSelector; or a pod whose labels changed.
            return event if event.key in self.runs else None
        return event

    def _drain(self) -> None:
        """Take in what the watch has already delivered (before starting a batch)."""
        while True:
            event = self._next_event(0.0)
            if event is None:
                return
            self._on_event(event)

    def _relist(self) -> None:
        """The watch's resourceVersion expired: list again, apply it, watch from there."""
        if self.watch is not None:
            self.watch.close()
        pods, self.version = self.kube.list_pods(self.spec.namespace, str(self.spec.selector))
        seen = set()
        for pod in pods:
            seen.add(rp.key_of(pod))
            self._on_event(PodEvent(EventType.MODIFIED, pod))
        for key in set(self.runs) - seen:
            self._on_event(PodEvent(EventType.DELETED, {"metadata": {"namespace": key[0],
                                                             "name": key[1]}}))
        self._open_watch()

    # ------------------------------------------------------------------ stopping

    def _stopping(self) -> bool:
        if self.deadline is not None and self.deadline.expired():
            self.deadline_hit = True
        return self.deadline_hit or self.stop.signal is not None

    def _stop_reason(self) -> str:
        if self.stop.signal is not None:
            return f"interrupted by signal {self.stop.signal}"
        return f"the rollout's deadline ({self.settings.timeout_s:g}s) passed"

    def _finish(self, rule: StopRule) -> RolloutReport:
        counts = self._counts()
        interrupted = self.stop.signal is not None
        result = rp.final_result(counts, rule, deadline=self.deadline_hit,
                                 interrupted=interrupted)
        if self.aborted:
            result = RolloutResult.FAILED
        message = self._message(result, counts, rule)
        report = self._report(result, message)
        self.emit_event({"event": RolloutEvent.ROLLOUT_DONE, "rollout": self.spec.id,
                         "result": result.value, "exit_code": int(result.exit_code),
                         "message": message, "counts": counts.to_dict(),
                         "api_requests": report.api_requests,
                         **({"budgets": report.budgets} if report.budgets else {}),
                         "elapsed_s": round(report.elapsed_s, 3)})
        return report

    def _message(self, result: RolloutResult, counts: Counts, rule: StopRule) -> str:
        done = counts.upgraded + counts.already_upgraded
        text = (f"{done} of {counts.selected} selected pod(s) run {self.spec.image}"
                f" ({counts.upgraded} upgraded now)")
        if counts.failures:
            text += f"; {counts.failures} failed"
        if counts.skipped:
            text += f"; {counts.skipped} skipped"
        if result is RolloutResult.SUCCEEDED:
            return text
        reason = rule.message
        if self.aborted:
            reason = self.aborted
        elif result in (RolloutResult.INTERRUPTED, RolloutResult.DEADLINE_EXCEEDED):
            reason = (f"{self._stop_reason()}; pods not ready yet were set back; run the same "
                      f"command again to continue")
        elif result is RolloutResult.FAILED and not reason:
            reason = "see the pods that failed"
        return f"{text}: {reason}" if reason else text

    # ------------------------------------------------------------------ reporting

    def _counts(self) -> Counts:
        return rp.tally(r.phase for r in self.runs.values())

    def _batch_done(self, batch: Batch) -> None:
        phases = [self.runs[k].phase for k in batch.pods]
        outcome = {k: v for k, v in rp.tally(phases).to_dict().items() if v and k != "selected"}
        self.batch_outcomes[batch.index] = outcome
        self.emit_event({"event": RolloutEvent.BATCH_DONE, "rollout": self.spec.id,
                         "batch": batch.index,
                         "of": len(self.batches), "kind": batch.kind.value,
                         "pods": len(batch.pods), **outcome,
                         "totals": self._counts().to_dict(),
                         "elapsed_s": round(self.clock.monotonic() - self.t0, 3)})

    def _emit(self, name: RolloutEvent, run: PodRun, **extra: Any) -> None:
        event: dict[str, Any] = {"event": name, "rollout": self.spec.id,
                                 "namespace": run.key[0], "pod": run.key[1]}
        if run.batch is not None:
            event["batch"] = run.batch
            event["of"] = len(self.batches)
        if run.canary:
            event["canary"] = True
        swap = run.swap or run.handover
        if swap is not None and name is not RolloutEvent.POD_SKIPPED and not extra.get("already"):
            event.update({"from_image": swap.from_image, "to_image": swap.to_image,
                          "slot": swap.new_slot})
            if run.handover is not None:
                event["handover"] = Handover.EPHEMERAL.value
        if run.ended_s is not None and run.started_s is not None:
            event["duration_s"] = round(run.ended_s - run.started_s, 3)
        if name is not RolloutEvent.POD_SKIPPED and run.requests:
            event["api_requests"] = run.requests
        event.update(extra)
        event["elapsed_s"] = round(self.clock.monotonic() - self.t0, 3)
        self.emit_event(event)

    def _report(self, result: RolloutResult, message: str,
                plan: dict[str, Any] | None = None) -> RolloutReport:
        return RolloutReport(
            spec=self.spec, result=result, message=message, counts=self._counts(),
            pods=list(self.runs.values()), batches=self.batches,
            api_requests=self.kube.requests - self.requests0,
            pod_requests=sum(r.requests for r in self.runs.values()),
            watch_connections=self.watch_connections,
            elapsed_s=self.clock.monotonic() - self.t0,
            cpu_s=time.process_time() - self.cpu0, plan=plan,
            batch_outcomes=self.batch_outcomes, budgets=self.gate.summary(),
            budget_requests=self.gate.requests)

    # ------------------------------------------------------------------ requests

    def _request(self, run: PodRun, call: Callable[[], T]) -> T:
        before = self.kube.requests
        try:
            return call()
        finally:
            run.requests += self.kube.requests - before

    def _k8s_event(self, run: PodRun, reason: str, message: str, warning: bool) -> None:
        # Events are for people (`kubectl describe pod`); a rollout never fails for want of one.
        if not self.events_ok or run.key not in self.latest:
            return
        pod = self.latest[run.key]
        try:
            self._request(run, lambda: self.kube.create_event(pod, reason, message,
                                                              warning=warning))
        except KubeError as exc:
            self.events_ok = False
            self.emit_event({"event": RolloutEvent.NOTE,
                             "message": f"no Events will be recorded: {exc}"})

    def _now_iso(self) -> str:
        return (datetime.fromtimestamp(self.clock.wall(), tz=UTC)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def _version(pod: dict[str, Any]) -> str | None:
    value = (pod.get("metadata") or {}).get("resourceVersion")
    return str(value) if value else None
