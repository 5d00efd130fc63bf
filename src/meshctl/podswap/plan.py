"""The image swap, decided from a pod object: which slot is live and which stands by, whether the
swap may start (pre-flight), how far the new slot has come, and the JSON patches (RFC 6902).

Pure: pods in as plain dicts (what the API server sends), plans and patches out. Every patch
that changes an image carries `test` operations on the names and images of both slots, so a
pod changed by someone else between our read and our write is refused by the API server (a
resourceVersion would also refuse unrelated changes, such as the kubelet's status updates).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from meshctl import errors
from meshctl.podswap import layout, reference
from meshctl.podswap.layout import Slot

JsonPatch = list[dict[str, Any]]

PERMANENT_WAITING_REASONS = frozenset({
    "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
    "CreateContainerError", "RunContainerError",
})
"""Waiting reasons the kubelet does not recover from by itself: no point in waiting longer."""


@dataclass(frozen=True)
class SlotView:
    """One proxy slot container: its spec and what the kubelet reports about it."""

    slot: Slot
    container: str
    pointer: str
    """JSON pointer of the container in the pod, e.g. `/spec/containers/0`."""
    image: str
    """The image the spec asks for."""
    status_image: str | None = None
    container_id: str | None = None
    started: bool = False
    ready: bool = False
    restart_count: int = 0
    waiting_reason: str | None = None
    waiting_message: str | None = None
    last_exit: str | None = None
    """How the previous container of this slot ended, e.g. `exit code 1 (Error)`."""

    @property
    def runs_spec_image(self) -> bool:
        """Whether the kubelet runs what the spec asks for (not mid-change)."""
        if self.status_image is None:
            return False
        if self.status_image.startswith("sha256:"):
            return True  # some runtimes report the image id, not the reference: cannot tell
        return reference.same_image(self.image, self.status_image)

    def describe(self) -> str:
        return f"slot {self.slot} ({self.container})"


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    uid: str | None
    generation: int | None
    observed_generation: int | None
    """status.observedGeneration: reported by API servers with pod generation tracking."""
    annotations: Mapping[str, str]
    slots: Mapping[Slot, SlotView]
    native_sidecars: bool

    @property
    def label(self) -> str:
        return f"pod {self.namespace}/{self.name}"


@dataclass(frozen=True)
class SwapPlan:
    """Start `to_image` in the standby slot, hand over, return the live slot to standby."""

    namespace: str
    pod: str
    old_slot: Slot
    """The slot serving now; it returns to the standby image at the end."""
    new_slot: Slot
    """The slot standing by now; the new image starts there."""
    old_pointer: str
    new_pointer: str
    old_container: str
    new_container: str
    from_image: str
    to_image: str
    standby_image: str
    """The image the standby slot runs now (exact spec text), and the old slot's next image."""
    old_container_id: str | None
    new_container_id: str | None
    """The standby container's id before the swap: the new image runs in a different one."""

    @property
    def unchanged(self) -> bool:
        return self.from_image == self.to_image

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Outcome(enum.Enum):
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Progress:
    outcome: Outcome
    detail: str
    """One line for progress output and, when FAILED or at the deadline, for the reason."""


def pod_view(pod: Mapping[str, Any]) -> PodView:
    """Read a pod object. Raises PreflightFailed when the proxy slots are not there."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    namespace = str(metadata.get("namespace") or "")
    name = str(metadata.get("name") or "")
    label = f"pod {namespace}/{name}"
    found: dict[Slot, tuple[str, int, Mapping[str, Any]]] = {}
    for key in ("containers", "initContainers"):
        for index, container in enumerate(spec.get(key) or []):
            for slot in layout.SLOTS:
                if container.get("name") == layout.container_name(slot):
                    if slot in found:
                        raise errors.PreflightFailed(
                            f"{label} has two containers named {layout.container_name(slot)}")
                    found[slot] = (key, index, container)
    if not found:
        raise errors.PreflightFailed(
            f"{label} has no meshctl proxy slots (containers meshctl-proxy-a and "
            f"meshctl-proxy-b); add them with `meshctl inject`")
    missing = [layout.container_name(s) for s in layout.SLOTS if s not in found]
    if missing:
        raise errors.PreflightFailed(f"{label} has no container {missing[0]}: both proxy slots "
                                     f"are needed for an in-pod swap")
    kinds = {key for key, _, _ in found.values()}
    if len(kinds) > 1:
        raise errors.PreflightFailed(f"{label}: one proxy slot is a container and the other an "
                                     f"init container; both must be the same kind")
    statuses: dict[str, Mapping[str, Any]] = {}
    for key in ("containerStatuses", "initContainerStatuses"):
        for item in status.get(key) or []:
            statuses[str(item.get("name"))] = item
    slots: dict[Slot, SlotView] = {}
    for slot, (key, index, container) in found.items():
        cname = layout.container_name(slot)
        slots[slot] = _slot_view(slot, f"/spec/{key}/{index}", container, statuses.get(cname))
    native = kinds == {"initContainers"}
    if native:
        for slot, (_, _, container) in found.items():
            if container.get("restartPolicy") != "Always":
                raise errors.PreflightFailed(
                    f"{label}: init container {layout.container_name(slot)} is not a native "
                    f"sidecar (restartPolicy: Always)")
    annotations = {str(k): str(v) for k, v in (metadata.get("annotations") or {}).items()}
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    return PodView(namespace=namespace, name=name, uid=metadata.get("uid"),
                   generation=int(generation) if generation is not None else None,
                   observed_generation=int(observed) if observed is not None else None,
                   annotations=annotations, slots=slots, native_sidecars=native)


def plan_swap(view: PodView, new_image: str) -> SwapPlan:
    """Pre-flight and plan. Raises PreflightFailed with the reason as one line."""
    if not reference.is_valid(new_image):
        try:
            reference.parse(new_image)
        except errors.BadInput as exc:
            raise errors.PreflightFailed(str(exc)) from exc
    old, new = live_and_standby(view)
    standby_image = new.image
    if reference.same_image(new_image, standby_image):
        raise errors.PreflightFailed(
            f"{new_image} is the standby image of {view.label}; give a proxy image")
    if not old.runs_spec_image:
        raise errors.PreflightFailed(
            f"{view.label}: {old.describe()} is changing image (spec {old.image}, running "
            f"{old.status_image or 'nothing yet'}); wait until it settles")
    if not (old.started and old.ready):
        raise errors.PreflightFailed(
            f"{view.label}: {old.describe()} is not ready; nothing serves that could hand "
            f"over to the new image")
    if not new.runs_spec_image:
        raise errors.PreflightFailed(
            f"{view.label}: {new.describe()} is changing image (spec {new.image}, running "
            f"{new.status_image or 'nothing yet'}); another upgrade may be in progress")
    return SwapPlan(
        namespace=view.namespace, pod=view.name, old_slot=old.slot, new_slot=new.slot,
        old_pointer=old.pointer, new_pointer=new.pointer, old_container=old.container,
        new_container=new.container, from_image=old.image, to_image=new_image,
        standby_image=standby_image, old_container_id=old.container_id,
        new_container_id=new.container_id)


def live_and_standby(view: PodView) -> tuple[SlotView, SlotView]:
    """(live, standby): from the active-slot annotation, checked against the images; without
    the annotation, the standby slot is the one running the standby image."""
    standby_image = view.annotations.get(layout.STANDBY_IMAGE) or layout.DEFAULT_STANDBY_IMAGE
    active = view.annotations.get(layout.ACTIVE_SLOT)
    a, b = view.slots["a"], view.slots["b"]
    if active is not None and active.startswith("e") and active[1:].isdigit():
        raise errors.PreflightFailed(
            f"{view.label}: the proxy runs in ephemeral slot {active} (annotation "
            f"{layout.ACTIVE_SLOT}); upgrade it with --handover ephemeral, or recreate the pod "
            f"to use the two slots again")
    if active is not None and active not in layout.SLOTS:
        raise errors.PreflightFailed(
            f"{view.label}: annotation {layout.ACTIVE_SLOT} is {active!r}, not a or b")
    if active is None:
        on_standby = [s for s in (a, b) if reference.same_image(s.image, standby_image)]
        if len(on_standby) != 1:
            what = "both slots run" if on_standby else "neither slot runs"
            raise errors.PreflightFailed(
                f"{view.label}: {what} the standby image {standby_image} and annotation "
                f"{layout.ACTIVE_SLOT} is not set: cannot tell which slot is live")
        standby = on_standby[0]
        live = b if standby is a else a
    else:
        live = view.slots["a" if active == "a" else "b"]
        standby = view.slots[layout.other(live.slot)]
    if reference.same_image(live.image, standby.image):
        raise errors.PreflightFailed(
            f"{view.label}: both slots run {live.image}: need one live and one standby")
    if reference.same_image(live.image, standby_image):
        raise errors.PreflightFailed(
            f"{view.label}: the active {live.describe()} runs the standby image {standby_image}")
    if layout.STANDBY_IMAGE in view.annotations and not reference.same_image(standby.image,
                                                                              standby_image):
        raise errors.PreflightFailed(
            f"{view.label}: the standby {standby.describe()} runs {standby.image}, not the "
            f"standby image {standby_image}")
    return live, standby


def new_slot_progress(view: PodView, plan: SwapPlan, generation: int | None) -> Progress:
    """How far the new image has come in the new slot. DONE: a new container, started, ready,
    running the new image (and the kubelet has observed `generation`, when reported)."""
    slot = view.slots[plan.new_slot]
    where = f"{slot.describe()}"
    if slot.image != plan.to_image:
        return Progress(Outcome.FAILED, f"{where} was changed to {slot.image} by someone else")
    if (generation is not None and view.observed_generation is not None
            and view.observed_generation < generation):
        return Progress(Outcome.WAITING, f"the kubelet has not seen generation {generation} yet")
    if slot.container_id is None or slot.container_id == plan.new_container_id:
        return Progress(Outcome.WAITING, f"{where}: waiting for the kubelet to restart it")
    if not slot.runs_spec_image:
        return Progress(Outcome.WAITING, f"{where} still runs {slot.status_image}")
    if slot.waiting_reason in PERMANENT_WAITING_REASONS:
        return Progress(Outcome.FAILED, f"{where}: {_waiting(slot)}")
    if not slot.started:
        return Progress(Outcome.WAITING, f"{where}: {_waiting(slot) or 'not started yet'}")
    if not slot.ready:
        return Progress(Outcome.WAITING, f"{where}: started, not ready yet{_restarts(slot)}")
    return Progress(Outcome.DONE, f"{where}: {plan.to_image} started and ready")


def old_slot_progress(view: PodView, plan: SwapPlan) -> Progress:
    """Whether the old slot now runs the standby image in a new, started and ready container:
    until its standby answers the readiness probe, the pod is NotReady (the second window of
    a swap), so the swap is not over."""
    slot = view.slots[plan.old_slot]
    if slot.image != plan.standby_image:
        return Progress(Outcome.FAILED, f"{slot.describe()} was changed to {slot.image} by "
                                        f"someone else")
    if slot.container_id is None or slot.container_id == plan.old_container_id:
        return Progress(Outcome.WAITING, f"{slot.describe()}: waiting for the kubelet")
    if not (slot.runs_spec_image and slot.started):
        return Progress(Outcome.WAITING,
                        f"{slot.describe()}: {_waiting(slot) or 'not started yet'}")
    if not slot.ready:
        return Progress(Outcome.WAITING, f"{slot.describe()}: standing by, not ready yet")
    return Progress(Outcome.DONE, f"{slot.describe()} stands by ({plan.standby_image})")


def settled(view: PodView) -> bool:
    """Both slots run what their spec asks for, in started containers: safe to plan."""
    return all(s.runs_spec_image and s.started for s in view.slots.values())


def start_patch(plan: SwapPlan) -> JsonPatch:
    """Put the new image in the standby slot, if both slots are still as planned."""
    return [*_guards(plan, new_image=plan.standby_image, old_image=plan.from_image),
            {"op": "replace", "path": f"{plan.new_pointer}/image", "value": plan.to_image}]


def rollback_patch(plan: SwapPlan) -> JsonPatch:
    """Put the standby image back in the new slot; the old slot keeps serving."""
    return [*_guards(plan, new_image=plan.to_image, old_image=plan.from_image),
            {"op": "replace", "path": f"{plan.new_pointer}/image", "value": plan.standby_image}]


def retire_patch(plan: SwapPlan) -> JsonPatch:
    """Put the standby image in the old slot, once the new slot serves."""
    return [*_guards(plan, new_image=plan.to_image, old_image=plan.from_image),
            {"op": "replace", "path": f"{plan.old_pointer}/image", "value": plan.standby_image}]


def annotations_patch(current: Mapping[str, Any] | None, changes: Mapping[str, str]) -> JsonPatch:
    """Set annotations; `current` is the pod's metadata.annotations (None when absent)."""
    if current is None:
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(changes)}]
    return [{"op": "add", "path": f"/metadata/annotations/{_escape(key)}", "value": value}
            for key, value in changes.items()]


def switched_annotations(plan: SwapPlan) -> dict[str, str]:
    """The annotations once the new slot serves."""
    return {layout.ACTIVE_SLOT: plan.new_slot, layout.PROXY_IMAGE: plan.to_image,
            layout.STANDBY_IMAGE: plan.standby_image}


def last_upgrade(plan: SwapPlan, result: str, time_iso: str, reason: str | None = None) -> str:
    """The `meshctl.io/last-upgrade` annotation: compact JSON."""
    record: dict[str, Any] = {"from": plan.from_image, "to": plan.to_image,
                              "from_slot": plan.old_slot, "to_slot": plan.new_slot,
                              "result": result, "time": time_iso}
    if reason:
        record["reason"] = reason
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def field_path(pointer: str, container: str) -> str:
    """An Event's involvedObject.fieldPath for a container: `spec.initContainers{name}`."""
    return f"spec.{pointer.split('/')[2]}{{{container}}}"


def _guards(plan: SwapPlan, new_image: str, old_image: str) -> Sequence[dict[str, Any]]:
    # The names too: with containers reordered, an index could point at another container
    # that happens to run the same image.
    return [
        {"op": "test", "path": f"{plan.old_pointer}/name", "value": plan.old_container},
        {"op": "test", "path": f"{plan.old_pointer}/image", "value": old_image},
        {"op": "test", "path": f"{plan.new_pointer}/name", "value": plan.new_container},
        {"op": "test", "path": f"{plan.new_pointer}/image", "value": new_image},
    ]


def _slot_view(slot: Slot, pointer: str, container: Mapping[str, Any],
               status: Mapping[str, Any] | None) -> SlotView:
    base = SlotView(slot=slot, container=layout.container_name(slot), pointer=pointer,
                    image=str(container.get("image") or ""))
    if status is None:
        return base
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    last_exit = None
    if last:
        last_exit = f"exit code {last.get('exitCode')}" + (
            f" ({last['reason']})" if last.get("reason") else "")
    started = status.get("started")
    if started is None:  # older kubelets: running means started
        started = "running" in state
    return SlotView(
        slot=slot, container=base.container, pointer=pointer, image=base.image,
        status_image=status.get("image"), container_id=status.get("containerID") or None,
        started=bool(started), ready=bool(status.get("ready")),
        restart_count=int(status.get("restartCount") or 0),
        waiting_reason=waiting.get("reason"), waiting_message=waiting.get("message"),
        last_exit=last_exit)


def _waiting(slot: SlotView) -> str:
    if not slot.waiting_reason:
        return ""
    text = slot.waiting_reason
    if slot.waiting_message:
        text += f": {' '.join(slot.waiting_message.split())[:200]}"
    return text + _restarts(slot)


def _restarts(slot: SlotView) -> str:
    if not slot.restart_count:
        return ""
    text = f" (restarted {slot.restart_count} time{'s' if slot.restart_count > 1 else ''}"
    return text + (f", last {slot.last_exit})" if slot.last_exit else ")")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
