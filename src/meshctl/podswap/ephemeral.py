"""The ephemeral handover, decided from a pod object (pure): which slot serves, the next
ephemeral slot `e<N>`, its container (`meshctl-e<N>`), the check container that judges the
handover (`meshctl-check-<N>`), the JSON patches of the `ephemeralcontainers` subresource, and
how far each container has come: where a handover stands (`follow`) and what its end means
(`judge`), for `meshctl upgrade --pod` (`meshctl.podswap.ephemeral_swap`) and `meshctl rollout`
(`meshctl.rollout.ephemeral_run`) alike.

Why ephemeral containers: no readiness rule counts them and adding one restarts nothing, so
the pod's Ready condition never flips (a two-slot swap restarts two containers). The cost:
they stay in the spec until the pod is recreated (docs/pod-slots.md, "Keeping the pod Ready:
the ephemeral handover").
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from meshctl import errors
from meshctl.exitcodes import ExitCode
from meshctl.podswap import layout, plan, reference
from meshctl.podswap.plan import JsonPatch, Outcome, Progress

PREFIX = "meshctl-e"
CHECK_PREFIX = "meshctl-check-"
_NAMES = re.compile(r"meshctl-(?:e|check-)([1-9][0-9]{0,5})")
_SLOT = re.compile(r"e([1-9][0-9]{0,5})")
MAX_INDEX = 999_999
"""The slot names `meshctl run --slot` accepts (`meshctl.manager.pod`)."""
COPIED = ("command", "env", "envFrom", "volumeMounts", "volumeDevices", "securityContext",
          "workingDir", "imagePullPolicy", "stdin", "tty")
"""What an ephemeral slot takes from the regular slots' container: all an ephemeral container
may have that the slot's supervisor needs (no ports, probes, resources or lifecycle: the
API server refuses them in an ephemeral container)."""


CHECK_START_S = 10.0
"""Kept out of the check's own timeout, inside the handover's: the check container's start
(its image is on the node already: the slot's container pulled it)."""


def slot_name(index: int) -> str:
    return f"e{index}"


def container_name(index: int) -> str:
    return f"{PREFIX}{index}"


def check_name(index: int) -> str:
    return f"{CHECK_PREFIX}{index}"


def slot_index(slot: str) -> int | None:
    """N of an ephemeral slot `e<N>`; None for anything else (a regular slot)."""
    match = _SLOT.fullmatch(slot)
    return int(match.group(1)) if match else None


def check_timeout_s(remaining_s: float) -> float:
    """The check's own `--timeout`: what is left of the handover's, less the check's start."""
    return max(1.0, remaining_s - CHECK_START_S)


class Stage(enum.Enum):
    """Where a handover stands, read from the pod (`follow`): what to do next."""

    NOT_ADDED = "not_added"
    """The slot's container is not in the spec: add it."""
    STARTING = "starting"
    """Added; the kubelet has not run it yet (pulling, creating)."""
    RUNNING = "running"
    """It runs and no check was added: add the check."""
    CHECKING = "checking"
    """The check was added and has not exited."""
    ENDED = "ended"
    """There is a verdict (`judge` says which), or the slot ended before the check ran."""


class HandoverEnd(enum.Enum):
    """What a handover's last progress means."""

    HANDED_OVER = "handed_over"
    """The check exited 0: slot e<N> serves, every other slot's generation exited."""
    ROLLED_BACK = "rolled_back"
    """The new generation failed (the check's 8, or the slot ended first): the old slot
    serves; nothing to undo."""
    NOT_CONFIRMED = "not_confirmed"
    """Not known: no verdict in time, or the check could not judge (its 10, or a crash)."""


@dataclass(frozen=True)
class Where:
    stage: Stage
    progress: Progress


def follow(pod: Mapping[str, Any], plan_: EphemeralPlan) -> Where:
    """Where the handover of `plan_` stands in this state of the pod (pure: both the single-pod
    flow and the rollout, which may resume one a killed run left, read it here)."""
    names = {c.get("name") for c in ephemeral_containers(pod)}
    if plan_.container not in names:
        return Where(Stage.NOT_ADDED, Progress(Outcome.WAITING,
                                               f"{plan_.container} not added yet"))
    if plan_.check_container not in names:
        slot = slot_progress(pod, plan_)
        stage = {Outcome.WAITING: Stage.STARTING, Outcome.DONE: Stage.RUNNING,
                 Outcome.FAILED: Stage.ENDED}[slot.outcome]
        return Where(stage, slot)
    check = check_progress(pod, plan_)
    return Where(Stage.CHECKING if check.outcome is Outcome.WAITING else Stage.ENDED, check)


def judge(pod: Mapping[str, Any], plan_: EphemeralPlan, last: Progress) -> HandoverEnd:
    """The handover's end from its last progress: a check that exited with another code than
    0 or 8 (its own timeout, a crash) could not judge, so nothing is known."""
    if last.outcome is Outcome.DONE:
        return HandoverEnd.HANDED_OVER
    if last.outcome is Outcome.WAITING:
        return HandoverEnd.NOT_CONFIRMED
    check = ephemeral_status(pod, plan_.check_container)
    code = check.exit_code if check is not None else None
    if code is not None and code != int(ExitCode.ROLLED_BACK):
        return HandoverEnd.NOT_CONFIRMED
    return HandoverEnd.ROLLED_BACK


@dataclass(frozen=True)
class EphemeralPlan:
    """Start `to_image` in ephemeral slot e<index>, from the generation of `old_slot`."""

    namespace: str
    pod: str
    old_slot: str
    """The slot serving now: a, b, or an earlier e<M>."""
    new_slot: str
    index: int
    container: str
    check_container: str
    from_image: str
    to_image: str
    template: str
    """The regular slot container whose spec the new one copies."""

    @property
    def unchanged(self) -> bool:
        return reference.same_image(self.from_image, self.to_image)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EphemeralStatus:
    """One ephemeral container, as the kubelet reports it."""

    name: str
    running: bool = False
    exit_code: int | None = None
    message: str | None = None
    """The termination message (the check's verdict line), or the waiting reason."""
    waiting_reason: str | None = None


def ephemeral_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((pod.get("spec") or {}).get("ephemeralContainers") or [])


def ephemeral_status(pod: Mapping[str, Any], name: str) -> EphemeralStatus | None:
    for item in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []:
        if item.get("name") != name:
            continue
        state = item.get("state") or {}
        if "terminated" in state:
            ended = state["terminated"] or {}
            return EphemeralStatus(name, exit_code=int(ended.get("exitCode", -1)),
                                   message=_one_line(ended.get("message") or ended.get("reason")))
        waiting = state.get("waiting") or {}
        return EphemeralStatus(name, running="running" in state,
                               waiting_reason=waiting.get("reason"),
                               message=_one_line(waiting.get("message")))
    return None


def plan_ephemeral(pod: Mapping[str, Any], new_image: str) -> EphemeralPlan:
    """Pre-flight and plan. Raises PreflightFailed with the reason as one line."""
    if not reference.is_valid(new_image):
        try:
            reference.parse(new_image)
        except errors.BadInput as exc:
            raise errors.PreflightFailed(str(exc)) from exc
    view = plan.pod_view(pod)  # the two regular slots: the template, and where a, b serve
    active = view.annotations.get(layout.ACTIVE_SLOT)
    index = next_index(pod)
    if active is not None and active.startswith("e") and _runs(pod, view, active):
        old_slot, from_image = _ephemeral_live(pod, view, active)
        template = view.slots["a"]
    else:
        if active is not None and active.startswith("e"):
            # Its container ended (nothing restarts one): the idle regular slot took over
            # again (`PodSlotSteps._take_back`); it serves if it is ready.
            view = replace(view, annotations={k: v for k, v in view.annotations.items()
                                              if k != layout.ACTIVE_SLOT})
        live, _ = plan.live_and_standby(view)
        if not (live.started and live.ready and live.runs_spec_image):
            raise errors.PreflightFailed(
                f"{view.label}: {live.describe()} is not ready; nothing serves that could hand "
                f"over to the new image")
        old_slot, from_image, template = live.slot, live.image, live
    standby = view.annotations.get(layout.STANDBY_IMAGE) or layout.DEFAULT_STANDBY_IMAGE
    if reference.same_image(new_image, standby):
        raise errors.PreflightFailed(
            f"{new_image} is the standby image of {view.label}; give a proxy image")
    return EphemeralPlan(
        namespace=view.namespace, pod=view.name, old_slot=old_slot, new_slot=slot_name(index),
        index=index, container=container_name(index), check_container=check_name(index),
        from_image=from_image, to_image=new_image, template=template.container)


def resumed_plan(pod: Mapping[str, Any], slot: str, from_image: str,
                 to_image: str) -> EphemeralPlan:
    """The plan of a handover into `slot` (e<N>) that an earlier run started (a rollout's
    record names it): the old slot is the one the annotations still name."""
    index = slot_index(slot)
    if index is None:
        raise errors.PreflightFailed(f"{slot!r} is not an ephemeral slot")
    view = plan.pod_view(pod)
    return EphemeralPlan(
        namespace=view.namespace, pod=view.name,
        old_slot=view.annotations.get(layout.ACTIVE_SLOT) or "a", new_slot=slot, index=index,
        container=container_name(index), check_container=check_name(index),
        from_image=from_image, to_image=to_image, template=view.slots["a"].container)


def next_index(pod: Mapping[str, Any]) -> int:
    """One past every meshctl ephemeral container the pod has had (they are never removed)."""
    used = [int(m.group(1)) for c in ephemeral_containers(pod)
            if (m := _NAMES.fullmatch(str(c.get("name")))) is not None]
    index = max(used, default=0) + 1
    if index > MAX_INDEX:
        raise errors.PreflightFailed(f"pod has had {MAX_INDEX} ephemeral slots; recreate it")
    return index


def slot_container(pod: Mapping[str, Any], plan_: EphemeralPlan) -> dict[str, Any]:
    """The ephemeral container of slot e<N>: the regular slot's spec (COPIED), the new image,
    and its args with `--slot e<N>` and no health port (nothing may probe it, and the
    regular slots' ports are taken)."""
    template = _container(pod, plan_.template)
    container: dict[str, Any] = {"name": plan_.container, "image": plan_.to_image}
    container.update({k: template[k] for k in COPIED if k in template})
    container["args"] = _with_values(list(template.get("args") or []),
                                     {"--slot": plan_.new_slot, "--health-address": "off"})
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return container


def check_container(pod: Mapping[str, Any], plan_: EphemeralPlan,
                    timeout_s: float) -> dict[str, Any]:
    """The short-lived container whose exit code is the handover's verdict: `meshctl
    pod-check` in the new image (on the node already: its slot pulled it), on the pod dir (the
    slots' `--state-dir`), with only that volume mounted."""
    template = _container(pod, plan_.template)
    mounts = [m for m in template.get("volumeMounts") or []
              if m.get("name") == layout.STATE_VOLUME]
    args = [str(a) for a in template.get("args") or []]
    state_dir = (args[args.index("--state-dir") + 1]
                 if "--state-dir" in args[:-1] else layout.STATE_DIR)
    container: dict[str, Any] = {
        "name": plan_.check_container, "image": plan_.to_image,
        "command": ["meshctl", "pod-check"],
        "args": ["--slot", plan_.new_slot, "--state-dir", state_dir,
                 "--timeout", f"{timeout_s:g}"],
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    for key in ("securityContext", "imagePullPolicy"):
        if key in template:
            container[key] = template[key]
    return container


def add_patch(pod: Mapping[str, Any], container: Mapping[str, Any]) -> JsonPatch:
    """Append one ephemeral container (the subresource takes a patch of the whole pod). The
    `test` of the whole list refuses the patch if someone else added one since our read (the
    list is short: two per upgrade). Without a list yet, `add` would replace one added
    meanwhile: the API server refuses that (existing ephemeral containers may not change)."""
    current = ephemeral_containers(pod)
    if not current and "ephemeralContainers" not in (pod.get("spec") or {}):
        return [{"op": "add", "path": "/spec/ephemeralContainers", "value": [dict(container)]}]
    return [{"op": "test", "path": "/spec/ephemeralContainers", "value": current},
            {"op": "add", "path": "/spec/ephemeralContainers/-", "value": dict(container)}]


def slot_progress(pod: Mapping[str, Any], plan_: EphemeralPlan) -> Progress:
    """The new slot's container: DONE once running (its supervisor then hot-restarts from the
    live slot; the check judges the rest); FAILED if it ended or cannot start."""
    status = ephemeral_status(pod, plan_.container)
    where = f"slot {plan_.new_slot} ({plan_.container})"
    if status is None:
        return Progress(Outcome.WAITING, f"{where}: waiting for the kubelet")
    if status.exit_code is not None:
        return Progress(Outcome.FAILED, f"{where} exited with code {status.exit_code}"
                        + (f": {status.message}" if status.message else ""))
    if status.waiting_reason in plan.PERMANENT_WAITING_REASONS:
        return Progress(Outcome.FAILED, f"{where}: {status.waiting_reason}"
                        + (f": {status.message}" if status.message else ""))
    if not status.running:
        return Progress(Outcome.WAITING, f"{where}: {status.waiting_reason or 'creating'}")
    return Progress(Outcome.DONE, f"{where} runs {plan_.to_image}")


def check_progress(pod: Mapping[str, Any], plan_: EphemeralPlan) -> Progress:
    """The verdict: the check container's exit code (0: handed over, 8: the new generation
    failed); the new slot's container ending before the check runs is a failure too."""
    check = ephemeral_status(pod, plan_.check_container)
    if check is not None and check.exit_code is not None:
        if check.exit_code == 0:
            return Progress(Outcome.DONE, check.message or f"slot {plan_.new_slot} serves")
        return Progress(Outcome.FAILED, f"{plan_.check_container} exited with code "
                        f"{check.exit_code}" + (f": {check.message}" if check.message else ""))
    if check is None or not check.running:
        # The check has not run yet: the slot's own end is the only verdict there is.
        slot = slot_progress(pod, plan_)
        if slot.outcome is Outcome.FAILED:
            return slot
    if check is not None and check.waiting_reason in plan.PERMANENT_WAITING_REASONS:
        return Progress(Outcome.FAILED, f"{plan_.check_container}: {check.waiting_reason}")
    return Progress(Outcome.WAITING, f"{plan_.check_container}: "
                    + ("checking" if check is not None and check.running else "starting"))


def switched_annotations(plan_: EphemeralPlan) -> dict[str, str]:
    return {layout.ACTIVE_SLOT: plan_.new_slot, layout.PROXY_IMAGE: plan_.to_image}


def last_upgrade(plan_: EphemeralPlan, result: str, time_iso: str,
                 reason: str | None = None) -> str:
    record: dict[str, Any] = {"from": plan_.from_image, "to": plan_.to_image,
                              "from_slot": plan_.old_slot, "to_slot": plan_.new_slot,
                              "handover": "ephemeral", "result": result, "time": time_iso}
    if reason:
        record["reason"] = reason
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def _runs(pod: Mapping[str, Any], view: plan.PodView, active: str) -> bool:
    """Whether ephemeral slot `active` still runs (a missing one is an error, not a no)."""
    _ephemeral_live(pod, view, active, check_running=False)
    match = re.fullmatch(r"e([1-9][0-9]{0,5})", active)
    status = ephemeral_status(pod, container_name(int(match.group(1)))) if match else None
    return status is not None and status.running


def _ephemeral_live(pod: Mapping[str, Any], view: plan.PodView, active: str, *,
                    check_running: bool = True) -> tuple[str, str]:
    match = re.fullmatch(r"e([1-9][0-9]{0,5})", active)
    name = container_name(int(match.group(1))) if match else ""
    spec = next((c for c in ephemeral_containers(pod) if c.get("name") == name), None)
    if spec is None:
        raise errors.PreflightFailed(
            f"{view.label}: annotation {layout.ACTIVE_SLOT} is {active!r}, but the pod has no "
            f"ephemeral container {name or active}")
    status = ephemeral_status(pod, name)
    if check_running and (status is None or not status.running):
        raise errors.PreflightFailed(
            f"{view.label}: slot {active} ({name}) is not running; nothing serves that could "
            f"hand over (recreate the pod)")
    return active, str(spec.get("image") or "")


def _container(pod: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    spec = pod.get("spec") or {}
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        if container.get("name") == name:
            return container  # type: ignore[no-any-return]
    raise errors.PreflightFailed(f"pod has no container {name}")


def _with_values(args: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """`args` with the value after each flag of `values` replaced (appended when absent)."""
    out = list(args)
    for flag, value in values.items():
        if flag in out and out.index(flag) + 1 < len(out):
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def _one_line(text: object) -> str | None:
    return " ".join(str(text).split())[:300] if text else None
