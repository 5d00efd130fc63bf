"""`meshctl upgrade --pod NAME --image REF --handover ephemeral`: the new generation started in
an ephemeral container, so that no container restarts and the pod stays Ready.

    read -> plan (`meshctl.podswap.ephemeral`, pure) -> add ephemeral container meshctl-e<N>
    (`pods/<name>/ephemeralcontainers`) -> watch until it runs -> add the check container
    meshctl-check-<N> (`meshctl pod-check`) -> watch until it exits: 0 handed over (the
    annotations switch to slot e<N>), 8 failed (the old slot keeps serving), else incomplete

Inside the pod, the supervisor of slot e<N> hot-restarts from the live slot's generation; the
old slot's supervisor drains and goes idle (a regular slot stays, an ephemeral one exits). No
disruption budget is consulted: nothing here makes the pod or any container NotReady. The
record, the Events and the Ready window are the two-slot swap's (`meshctl.podswap.swap`).
Where the handover stands and what its end means are read by `meshctl.podswap.ephemeral`
(`follow`, `judge`), as `meshctl rollout --handover ephemeral` reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshctl.clock import Clock, Deadline, SystemClock
from meshctl.errors import MeshctlError, PreflightFailed
from meshctl.kube import Conflict, Kube, NotFound
from meshctl.podswap import ephemeral, layout, plan
from meshctl.podswap.ephemeral import EphemeralPlan
from meshctl.podswap.plan import Outcome, Progress
from meshctl.podswap.swap import Report, SwapEnd, SwapResult, SwapSettings, _Run


def upgrade_pod_ephemeral(kube: Kube, namespace: str, name: str, image: str, *,
                          settings: SwapSettings | None = None, dry_run: bool = False,
                          report: Report | None = None,
                          clock: Clock | None = None) -> SwapResult:
    """Hand the pod's proxy over to `image` in a new ephemeral slot, or report why not. Raises
    KubeError or PreflightFailed when refused before any change."""
    run = _Run(kube, namespace, name, image, settings or SwapSettings(),
               report or (lambda _line: None), clock or SystemClock())
    run.pod = kube.get_pod(namespace, name)
    eplan = ephemeral.plan_ephemeral(run.pod, image)
    _describe(run, eplan)
    if eplan.unchanged:
        run.step("unchanged", f"slot {eplan.old_slot} already runs {image}; nothing to do")
        return run.finish(SwapEnd.UNCHANGED)
    if dry_run:
        run.result.patches = {
            "start": ephemeral.add_patch(run.pod, ephemeral.slot_container(run.pod, eplan)),
            "check": ephemeral.check_container(run.pod, eplan, run.settings.timeout_s),
        }
        run.step("dry_run", f"would start {image} in ephemeral container {eplan.container} "
                            f"(slot {eplan.new_slot}) and check the handover with "
                            f"{eplan.check_container}; nothing changed")
        return run.finish(SwapEnd.DRY_RUN)
    run.step("started", f"upgrading the proxy from {eplan.from_image} (slot {eplan.old_slot}) "
                        f"to {image} (ephemeral slot {eplan.new_slot})", "MeshctlUpgradeStarted")
    try:
        return _handover(run, eplan)
    except MeshctlError as exc:
        run.event("MeshctlUpgradeFailed", str(exc), warning=True)
        raise


def _describe(run: _Run, eplan: EphemeralPlan) -> None:
    run.result.from_image, run.result.to_image = eplan.from_image, eplan.to_image
    run.result.old_slot, run.result.new_slot = eplan.old_slot, eplan.new_slot
    run.result.plan = eplan.to_dict()


def _handover(run: _Run, eplan: EphemeralPlan) -> SwapResult:
    deadline = Deadline(run.clock, run.settings.timeout_s)
    # The first change: refused (RBAC, an old cluster), it leaves the pod as it was.
    eplan = _add_slot(run, eplan)
    slot = _wait(run, lambda pod: ephemeral.follow(pod, eplan).progress, deadline)
    if slot.outcome is not Outcome.DONE:
        return _failed(run, eplan, slot)
    run.step("slot_running", slot.detail, "EphemeralSlotRunning")
    check_s = ephemeral.check_timeout_s(deadline.remaining())
    run.pod = run.kube.add_ephemeral_container(
        run.namespace, run.name,
        ephemeral.add_patch(run.pod, ephemeral.check_container(run.pod, eplan, check_s)))
    run.step("check_added", f"{eplan.check_container} checks that slot {eplan.new_slot} took "
                            f"over (within {check_s:.0f}s)")
    verdict = _wait(run, lambda pod: ephemeral.check_progress(pod, eplan),
                    Deadline(run.clock, max(deadline.remaining(), check_s + 1.0)))
    if verdict.outcome is not Outcome.DONE:
        return _failed(run, eplan, verdict)
    _annotate(run, {**ephemeral.switched_annotations(eplan),
                    layout.LAST_UPGRADE: ephemeral.last_upgrade(eplan, SwapEnd.SUCCEEDED,
                                                                run.now_iso())})
    run.step("handover_confirmed", f"slot {eplan.new_slot} serves {eplan.to_image}: "
                                   f"{verdict.detail}", "HandoverConfirmed")
    return run.finish(SwapEnd.SUCCEEDED)


def _add_slot(run: _Run, eplan: EphemeralPlan) -> EphemeralPlan:
    """Add meshctl-e<N>; when someone else added an ephemeral container meanwhile, re-read
    and re-plan (the next free N)."""
    for attempt in range(run.settings.replans + 1):
        patch = ephemeral.add_patch(run.pod, ephemeral.slot_container(run.pod, eplan))
        try:
            run.pod = run.kube.add_ephemeral_container(run.namespace, run.name, patch)
            break
        except NotFound as exc:
            run.pod = run.kube.get_pod(run.namespace, run.name)  # NotFound: the pod is gone
            raise PreflightFailed(
                f"pod {run.namespace}/{run.name}: the API server does not serve "
                f"pods/ephemeralcontainers (Kubernetes before 1.23, or the feature off); use "
                f"--handover two-slot") from exc
        except Conflict as exc:
            if attempt == run.settings.replans:
                raise Conflict(f"pod {run.namespace}/{run.name} kept changing while adding "
                               f"{eplan.container} ({attempt + 1} tries): {exc}") from exc
            run.pod = run.kube.get_pod(run.namespace, run.name)
            eplan = ephemeral.plan_ephemeral(run.pod, run.image)
            _describe(run, eplan)
    run.step("slot_added", f"ephemeral container {eplan.container} (slot {eplan.new_slot}) "
                           f"added with {eplan.to_image}", "EphemeralSlotAdded")
    return eplan


def _wait(run: _Run, progress_of: Callable[[dict[str, Any]], Progress],
          deadline: Deadline) -> Progress:
    last = Progress(Outcome.WAITING, "waiting for the kubelet")

    def check(pod: dict[str, Any]) -> bool:
        nonlocal last
        progress = progress_of(pod)
        if progress.detail != last.detail:
            run.report(f"pod {run.namespace}/{run.name}: {progress.detail}")
        last = progress
        return progress.outcome is not Outcome.WAITING

    done = run.kube.wait_pod(run.namespace, run.name, run.watching(check), deadline)
    if done is not None:
        run.pod = done
    return last


def _failed(run: _Run, eplan: EphemeralPlan, last: Progress) -> SwapResult:
    """ROLLED_BACK: the new slot never served (its container ended, or the check says its
    generation failed): the old slot serves, nothing to undo (an ephemeral container cannot be
    removed; it has exited). Not known yet at the deadline, or not judged: incomplete."""
    end = ephemeral.judge(run.pod, eplan, last)
    if last.outcome is Outcome.WAITING:
        detail = (f"slot {eplan.new_slot} not confirmed within "
                  f"{run.settings.timeout_s:g}s: {last.detail}")
        _annotate(run, {layout.LAST_UPGRADE: ephemeral.last_upgrade(
            eplan, SwapEnd.INCOMPLETE, run.now_iso(), detail)})
        run.step("not_confirmed", detail, "HandoverNotConfirmed", warning=True)
        return run.finish(SwapEnd.INCOMPLETE, detail)
    if end is ephemeral.HandoverEnd.NOT_CONFIRMED:
        detail = f"the handover check could not judge: {last.detail}"
        run.step("not_confirmed", detail, "HandoverNotConfirmed", warning=True)
        return run.finish(SwapEnd.INCOMPLETE, detail)
    detail = f"rolled back: {last.detail}; slot {eplan.old_slot} keeps serving " \
             f"{eplan.from_image}"
    _annotate(run, {layout.LAST_UPGRADE: ephemeral.last_upgrade(
        eplan, SwapEnd.ROLLED_BACK, run.now_iso(), last.detail)})
    run.step("rolled_back", detail, "RolledBack", warning=True)
    return run.finish(SwapEnd.ROLLED_BACK, last.detail)


def _annotate(run: _Run, changes: dict[str, str]) -> None:
    current = (run.pod.get("metadata") or {}).get("annotations")
    run.pod = run.kube.patch_pod(run.namespace, run.name,
                                 plan.annotations_patch(current, changes))
