"""The in-pod image swap of one pod: where the image is swapped and rolled back.

    read -> pre-flight -> wait until the pod's disruption budgets allow it
    (`meshctl.podswap.disruption`) -> patch the standby slot (tests on both slots) -> watch
    until the new container is started and ready -> confirm the handover (a fresh read) ->
    one patch that returns the old slot to the standby image and switches the annotations
    -> wait until the old slot stands by

Every step is an Event on the pod, a line of progress and an entry of the result record. If
the new slot is not ready within the timeout (or fails for good, or the user interrupts),
the new slot is set back to the standby image and the old slot keeps serving.

Decisions are made by `meshctl.podswap.plan` (pure); the API calls by `meshctl.kube`.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from meshctl.clock import Clock, Deadline, SystemClock
from meshctl.errors import MeshctlError
from meshctl.exitcodes import ExitCode
from meshctl.kube import Conflict, Kube, KubeError, NotFound
from meshctl.podswap import disruption, layout, plan, prepull
from meshctl.podswap.plan import Outcome, Progress, SwapPlan
from meshctl.podswap.readiness import NotReadyJson, ReadyWindow

Report = Callable[[str], None]
"""Takes one line of progress (the CLI prints it on stderr)."""

class SwapEnd(enum.StrEnum):
    """How an in-pod swap ended: the `result` of its record, and its exit code."""

    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    INCOMPLETE = "incomplete"
    UNCHANGED = "unchanged"
    DRY_RUN = "dry_run"


EXIT_CODES = {SwapEnd.SUCCEEDED: ExitCode.OK, SwapEnd.UNCHANGED: ExitCode.OK,
              SwapEnd.DRY_RUN: ExitCode.OK, SwapEnd.ROLLED_BACK: ExitCode.ROLLED_BACK,
              SwapEnd.INCOMPLETE: ExitCode.TIMEOUT}


@dataclass(frozen=True)
class SwapSettings:
    timeout_s: float = 300.0
    """The new slot must be started and ready within this, or the swap is rolled back."""
    retire_timeout_s: float = 60.0
    """How long to wait for the old slot to stand by; past it the result is `incomplete`
    (the new slot serves; the kubelet may still restart the old slot)."""
    replans: int = 3
    """Re-reads and re-plans when the pod changed between our read and our patch."""
    settle_s: float = 10.0
    """Before a re-plan: how long to wait for an image change by someone else to settle."""
    prepull: bool = False
    """Pull the new image onto the pod's node (an ephemeral container) before restarting the
    standby slot, so that the pull is not NotReady time (`meshctl.podswap.prepull`)."""


@dataclass
class Step:
    step: str
    time: str
    elapsed_s: float
    detail: str


@dataclass
class SwapResult:
    namespace: str
    pod: str
    image: str
    result: str = ""
    from_image: str | None = None
    to_image: str | None = None
    old_slot: str | None = None
    new_slot: str | None = None
    error: str | None = None
    steps: list[Step] = field(default_factory=list)
    api_requests: int = 0
    plan: dict[str, Any] | None = None
    patches: dict[str, Any] | None = None
    """Dry run only: the patches that would be sent."""
    not_ready: NotReadyJson | None = None
    """The pod's Ready condition from the start to the end of the swap (none when nothing
    was changed)."""

    @property
    def exit_code(self) -> ExitCode:
        try:
            return EXIT_CODES[SwapEnd(self.result)]
        except ValueError:  # not ended (""): a failure to report, not a result
            return ExitCode.FAILED

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "namespace": self.namespace, "pod": self.pod, "image": self.image,
            "result": self.result, "from_image": self.from_image, "to_image": self.to_image,
            "old_slot": self.old_slot, "new_slot": self.new_slot, "error": self.error,
            "api_requests": self.api_requests,
            "steps": [vars(s) for s in self.steps],
        }
        if self.plan is not None:
            record["plan"] = self.plan
        if self.patches is not None:
            record["patches"] = self.patches
        if self.not_ready is not None:
            record["not_ready"] = self.not_ready
        return record


class _Run:
    """One swap in progress: the record, the Events and the progress lines."""

    def __init__(self, kube: Kube, namespace: str, name: str, image: str, settings: SwapSettings,
                 report: Report, clock: Clock) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.image = image
        self.settings = settings
        self.report = report
        self.clock = clock
        self.t0 = clock.monotonic()
        self.requests0 = kube.requests
        self.result = SwapResult(namespace=namespace, pod=name, image=image)
        self.window = ReadyWindow(clock)
        self._pod: dict[str, Any] = {}
        self.events_ok = True

    @property
    def pod(self) -> dict[str, Any]:
        """The pod as last read; every state read is also seen by the Ready window."""
        return self._pod

    @pod.setter
    def pod(self, pod: dict[str, Any]) -> None:
        self._pod = pod
        self.window.observe(pod)

    def watching(self, check: Callable[[dict[str, Any]], bool]) -> Callable[
            [dict[str, Any]], bool]:
        """`check` for `Kube.wait_pod`, with every state the watch delivers seen by the Ready
        window (not only the one that ends the wait)."""
        def seen(pod: dict[str, Any]) -> bool:
            self.window.observe(pod)
            return check(pod)

        return seen

    def now_iso(self) -> str:
        return (datetime.fromtimestamp(self.clock.wall(), tz=UTC)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"))

    def step(self, name: str, detail: str, reason: str | None = None, *,
             warning: bool = False, container: tuple[str, str] | None = None) -> None:
        """Record a step; with `reason`, also as an Event (on `container`: (pointer, name))."""
        elapsed = round(self.clock.monotonic() - self.t0, 3)
        self.result.steps.append(Step(name, self.now_iso(), elapsed, detail))
        self.report(f"pod {self.namespace}/{self.name}: {detail}")
        if reason is not None:
            self.event(reason, detail, warning=warning, container=container)

    def event(self, reason: str, message: str, *, warning: bool = False,
              container: tuple[str, str] | None = None) -> None:
        # Events are the record for people; a swap never fails for want of one.
        if not self.events_ok:
            return
        field_path = plan.field_path(*container) if container else None
        try:
            self.kube.create_event(self.pod, reason, message, warning=warning,
                                   field_path=field_path)
        except KubeError as exc:
            self.events_ok = False
            self.report(f"warning: no Events will be recorded: {exc}")

    def finish(self, result: SwapEnd, error: str | None = None) -> SwapResult:
        self.result.result = result
        self.result.error = error
        self.result.api_requests = self.kube.requests - self.requests0
        if result not in (SwapEnd.UNCHANGED, SwapEnd.DRY_RUN):
            self.result.not_ready = self.window.to_json()
        return self.result


def upgrade_pod(kube: Kube, namespace: str, name: str, image: str, *,
                settings: SwapSettings | None = None, dry_run: bool = False,
                report: Report | None = None, clock: Clock | None = None,
                force: bool = False) -> SwapResult:
    """Swap the proxy image of one pod to `image`, or roll back. Returns the record (see
    `SwapResult.exit_code`); raises KubeError or PreflightFailed when refused before any
    change (`force`: the only pod of its controller, with no disruption budget, is not
    refused), BudgetWaitTimedOut when its budgets allowed no disruption within the timeout,
    or a KubeError when the API fails us midway."""
    run = _Run(kube, namespace, name, image, settings or SwapSettings(),
               report or (lambda _line: None), clock or SystemClock())
    run.pod = kube.get_pod(namespace, name)
    swap = plan.plan_swap(plan.pod_view(run.pod), image)
    _describe(run, swap)
    if swap.unchanged:
        run.step("unchanged", f"slot {swap.old_slot} already runs {image}; nothing to do")
        return run.finish(SwapEnd.UNCHANGED)
    if dry_run:
        return _dry_run(run, swap)
    allowed = disruption.await_budgets(kube, run.pod, force=force,
                                       timeout_s=run.settings.timeout_s, report=run.report,
                                       clock=run.clock)
    if allowed is not None and (allowed.budgets or disruption.has_controller([run.pod])):
        run.step("disruption_allowed", f"may be disrupted: {allowed.reason}")
    run.step("started", f"upgrading the proxy from {swap.from_image} (slot {swap.old_slot}) to "
                        f"{image} (slot {swap.new_slot})", "MeshctlUpgradeStarted")
    try:
        return _swap(run, swap)
    except MeshctlError as exc:
        # The pod's Events must not end at "started" when the swap stopped with an error.
        run.event("MeshctlUpgradeFailed", str(exc), warning=True)
        raise


def _swap(run: _Run, swap: SwapPlan) -> SwapResult:
    if run.settings.prepull:
        failure = _prepull(run, swap)
        if failure is not None:
            run.step("not_pulled", failure, "ImageNotPulled", warning=True)
            return run.finish(SwapEnd.ROLLED_BACK, failure)
    swap, generation = _start(run, swap)
    if swap.unchanged:
        run.step("unchanged", f"slot {swap.old_slot} already runs {run.image}; nothing to do")
        return run.finish(SwapEnd.UNCHANGED)
    try:
        failure = _wait_new_slot(run, swap, generation)
        if failure is None:
            failure = _confirm_handover(run, swap)
    except KeyboardInterrupt:
        _rollback(run, swap, "interrupted")
        raise
    except KubeError as exc:
        # The API failed us while the new slot starts: put the standby image back if the API
        # lets us, so that the pod is not left half-swapped with nobody watching.
        if not isinstance(exc, NotFound):
            with contextlib.suppress(KubeError):
                _rollback(run, swap, f"API error: {exc}")
        raise
    if failure is not None:
        _rollback(run, swap, failure)
        return run.finish(SwapEnd.ROLLED_BACK, failure)
    _retire(run, swap)
    return _wait_old_slot(run, swap)


def _new(swap: SwapPlan) -> tuple[str, str]:
    return swap.new_pointer, swap.new_container


def _old(swap: SwapPlan) -> tuple[str, str]:
    return swap.old_pointer, swap.old_container


def _describe(run: _Run, swap: SwapPlan) -> None:
    run.result.from_image = swap.from_image
    run.result.to_image = swap.to_image
    run.result.old_slot = swap.old_slot
    run.result.new_slot = swap.new_slot
    run.result.plan = swap.to_dict()


def _dry_run(run: _Run, swap: SwapPlan) -> SwapResult:
    current = (run.pod.get("metadata") or {}).get("annotations")
    time_iso = run.now_iso()
    run.result.patches = {
        "start": plan.start_patch(swap) + plan.annotations_patch(
            current, {layout.LAST_UPGRADE: plan.last_upgrade(swap, "in_progress", time_iso)}),
        "retire": plan.retire_patch(swap) + plan.annotations_patch(
            current, {**plan.switched_annotations(swap),
                      layout.LAST_UPGRADE: plan.last_upgrade(swap, SwapEnd.SUCCEEDED, time_iso)}),
        "rollback": plan.rollback_patch(swap) + plan.annotations_patch(
            current, {layout.LAST_UPGRADE: plan.last_upgrade(swap, SwapEnd.ROLLED_BACK, time_iso)}),
    }
    run.step("dry_run", f"would start {swap.to_image} in slot {swap.new_slot} "
                        f"({swap.new_container}), then return slot {swap.old_slot} to "
                        f"{swap.standby_image}; nothing changed")
    return run.finish(SwapEnd.DRY_RUN)


def _prepull(run: _Run, swap: SwapPlan) -> str | None:
    """The new image onto the pod's node before anything restarts; None when it is there,
    else why not (nothing was restarted: the old slot serves as before)."""
    name = prepull.pull_name(run.pod)
    container = prepull.pull_container(run.pod, swap, name)
    run.pod = run.kube.add_ephemeral_container(run.namespace, run.name,
                                               prepull.pull_patch(run.pod, container))
    last = Progress(Outcome.WAITING, f"{name}: waiting for the kubelet")

    def check(pod: dict[str, Any]) -> bool:
        nonlocal last
        last = prepull.pull_progress(pod, name, swap.to_image)
        return last.outcome is not Outcome.WAITING

    deadline = Deadline(run.clock, run.settings.timeout_s)
    pulled = run.kube.wait_pod(run.namespace, run.name, run.watching(check), deadline)
    if pulled is None:
        return f"{swap.to_image} not pulled within {run.settings.timeout_s:g}s: {last.detail}"
    run.pod = pulled
    if last.outcome is Outcome.FAILED:
        return last.detail
    run.step("image_pulled", last.detail, "ImagePulled")
    return None


def _start(run: _Run, swap: SwapPlan) -> tuple[SwapPlan, int | None]:
    """Patch the new image into the standby slot; re-read and re-plan when the pod changed."""
    for attempt in range(run.settings.replans + 1):
        current = (run.pod.get("metadata") or {}).get("annotations")
        ops = plan.start_patch(swap) + plan.annotations_patch(
            current, {layout.LAST_UPGRADE: plan.last_upgrade(swap, "in_progress", run.now_iso())})
        try:
            run.pod = run.kube.patch_pod(run.namespace, run.name, ops)
            break
        except Conflict as exc:
            if attempt == run.settings.replans:
                raise Conflict(f"pod {run.namespace}/{run.name} kept changing while planning "
                               f"({attempt + 1} tries): {exc}") from exc
            run.report(f"pod {run.namespace}/{run.name} changed since it was read; re-reading")
            settle = Deadline(run.clock, run.settings.settle_s)
            settled = run.kube.wait_pod(run.namespace, run.name, run.watching(
                lambda p: plan.settled(plan.pod_view(p))), settle)
            run.pod = settled or run.kube.get_pod(run.namespace, run.name)
            swap = plan.plan_swap(plan.pod_view(run.pod), run.image)
            _describe(run, swap)
            if swap.unchanged:
                return swap, None
    generation = (run.pod.get("metadata") or {}).get("generation")
    run.step("standby_patched", f"slot {swap.new_slot} ({swap.new_container}) set to "
                                f"{swap.to_image}", "StandbyPatched", container=_new(swap))
    return swap, int(generation) if generation is not None else None


def _wait_new_slot(run: _Run, swap: SwapPlan, generation: int | None) -> str | None:
    """None when the new container is started and ready; else why not (the rollback reason)."""
    last = Progress(Outcome.WAITING, "waiting for the kubelet")

    def check(pod: dict[str, Any]) -> bool:
        nonlocal last
        progress = plan.new_slot_progress(plan.pod_view(pod), swap, generation)
        if progress.detail != last.detail:
            run.report(f"pod {run.namespace}/{run.name}: {progress.detail}")
        last = progress
        return progress.outcome is not Outcome.WAITING

    deadline = Deadline(run.clock, run.settings.timeout_s)
    ready = run.kube.wait_pod(run.namespace, run.name, run.watching(check), deadline)
    if ready is None:
        return (f"slot {swap.new_slot} ({swap.new_container}) not ready within "
                f"{run.settings.timeout_s:g}s: {last.detail}")
    run.pod = ready
    if last.outcome is Outcome.FAILED:
        return last.detail
    run.step("new_slot_ready", f"{swap.new_container} runs {swap.to_image}, started and ready",
             "NewSlotReady", container=_new(swap))
    return None


def _confirm_handover(run: _Run, swap: SwapPlan) -> str | None:
    """A fresh read: the new slot is still ready in the same container (it serves, so the hot
    restart from the old slot happened: the new supervisor is ready only once LIVE)."""
    ready_id = plan.pod_view(run.pod).slots[swap.new_slot].container_id
    run.pod = run.kube.get_pod(run.namespace, run.name)
    now = plan.pod_view(run.pod).slots[swap.new_slot]
    if not (now.ready and now.container_id == ready_id and now.image == swap.to_image):
        return (f"{swap.new_container} was ready but is not any more "
                f"(ready={now.ready}, restarts {now.restart_count})")
    run.step("handover_confirmed", f"{swap.new_container} serves {swap.to_image}; "
                                   f"{swap.old_container} handed over",
             "HandoverConfirmed", container=_new(swap))
    return None


def _retire(run: _Run, swap: SwapPlan) -> None:
    """One atomic patch: the old slot to the standby image, the annotations switched."""
    current = (run.pod.get("metadata") or {}).get("annotations")
    ops = plan.retire_patch(swap) + plan.annotations_patch(
        current, {**plan.switched_annotations(swap),
                  layout.LAST_UPGRADE: plan.last_upgrade(swap, SwapEnd.SUCCEEDED, run.now_iso())})
    try:
        run.pod = run.kube.patch_pod(run.namespace, run.name, ops)
    except Conflict as exc:
        raise Conflict(f"{swap.new_container} serves {swap.to_image}, but slot {swap.old_slot} "
                       f"was changed by someone else and was not set to standby: {exc}") from exc


def _wait_old_slot(run: _Run, swap: SwapPlan) -> SwapResult:
    last = Progress(Outcome.WAITING, "waiting for the kubelet")

    def check(pod: dict[str, Any]) -> bool:
        nonlocal last
        last = plan.old_slot_progress(plan.pod_view(pod), swap)
        return last.outcome is not Outcome.WAITING

    deadline = Deadline(run.clock, run.settings.retire_timeout_s)
    done = run.kube.wait_pod(run.namespace, run.name, run.watching(check), deadline)
    if done is None or last.outcome is Outcome.FAILED:
        detail = (f"{swap.new_container} serves {swap.to_image}, but {swap.old_container} did "
                  f"not stand by within {run.settings.retire_timeout_s:g}s: {last.detail}")
        run.step("old_slot_not_standby", detail, "OldSlotNotStandby", warning=True,
                 container=_old(swap))
        return run.finish(SwapEnd.INCOMPLETE, detail)
    run.pod = done
    run.step("old_slot_standby", f"{swap.old_container} stands by ({swap.standby_image}); "
                                 f"upgrade to {swap.to_image} done",
             "OldSlotStandby", container=_old(swap))
    return run.finish(SwapEnd.SUCCEEDED)


def _rollback(run: _Run, swap: SwapPlan, reason: str) -> None:
    current = (run.pod.get("metadata") or {}).get("annotations")
    ops = plan.rollback_patch(swap) + plan.annotations_patch(
        current, {layout.LAST_UPGRADE: plan.last_upgrade(swap, SwapEnd.ROLLED_BACK, run.now_iso(),
                                                         reason)})
    detail = (f"rolled back: slot {swap.new_slot} set back to {swap.standby_image}, "
              f"slot {swap.old_slot} keeps serving {swap.from_image} ({reason})")
    try:
        run.pod = run.kube.patch_pod(run.namespace, run.name, ops)
    except Conflict:
        detail = (f"not rolled back: the pod was changed by someone else meanwhile; slot "
                  f"{swap.old_slot} still runs {swap.from_image} ({reason})")
    run.step("rolled_back", detail, "RolledBack", warning=True, container=_new(swap))
