"""`meshctl rollout --handover ephemeral`, decided from a pod (pure): the record written before
the new slot's container is added, the annotation patches that end a pod's handover, and what
the latest state of a pod in flight asks for.

The handover itself is `meshctl upgrade --pod --handover ephemeral`'s: its containers, where it
stands and what its end means are `meshctl.podswap.ephemeral` (`follow`, `judge`). What the
rollout adds is the record: the subresource that adds an ephemeral container changes nothing
else, so the record (`state: upgrading`, `slot: e<N>`, `check: meshctl-check-<N>`) goes in its
own patch, *before* the container is added. A run that dies in between leaves a record and no
container: the next run adds it (`Next.ADD_SLOT`). The other way round would leave a handover
that no record names, which the next run would not follow.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshctl.podswap import ephemeral, layout, plan
from meshctl.podswap.ephemeral import EphemeralPlan, HandoverEnd, Stage
from meshctl.podswap.plan import JsonPatch
from meshctl.rollout.plan import IN_PROGRESS, RolloutSpec
from meshctl.rollout.record import ROLLOUT, PodPhase, RolloutRecord


class Written(enum.IntEnum):
    """How far this run's own writes to the pod went (ordered): a watch may still deliver a
    state from before the last one, which must not be taken for a step undone."""

    RECORD = 1
    SLOT = 2
    CHECK = 3


class Next(enum.Enum):
    """What the latest state of a pod in flight asks for."""

    WAIT = "wait"
    ADD_SLOT = "add_slot"
    ADD_CHECK = "add_check"
    FINISH = "finish"
    """The check exited 0: switch the annotations, the record `upgraded`."""
    ROLL_BACK = "roll_back"
    """The new generation failed: the old slot serves; the record `rolled_back`."""
    NOT_CONFIRMED = "not_confirmed"
    """The check could not judge: incomplete."""


@dataclass(frozen=True)
class Decision:
    next: Next
    detail: str


def record_for(handover: EphemeralPlan, spec: RolloutSpec, *, canary: bool,
               time: str) -> RolloutRecord:
    return RolloutRecord(id=spec.id, image=handover.to_image, state=PodPhase.UPGRADING,
                         slot=handover.new_slot, from_image=handover.from_image,
                         container_id=None, canary=canary, time=time,
                         check=handover.check_container)


def record_ops(pod: Mapping[str, Any], handover: EphemeralPlan,
               record: RolloutRecord) -> JsonPatch:
    """The record `upgrading` and the last upgrade `in_progress`, before the slot is added."""
    return _annotations(pod, {
        layout.LAST_UPGRADE: ephemeral.last_upgrade(handover, IN_PROGRESS, record.time),
        ROLLOUT: record.encode()})


def done_ops(pod: Mapping[str, Any], handover: EphemeralPlan, record: RolloutRecord,
             time: str) -> JsonPatch:
    """The check said 0: slot e<N> is the active one, the record `upgraded`."""
    return _annotations(pod, {
        **ephemeral.switched_annotations(handover),
        layout.LAST_UPGRADE: ephemeral.last_upgrade(handover, "succeeded", time),
        ROLLOUT: record.moved(PodPhase.UPGRADED, time).encode()})


def rolled_back_ops(pod: Mapping[str, Any], handover: EphemeralPlan, record: RolloutRecord,
                    time: str, reason: str) -> JsonPatch:
    """The new generation failed. Nothing to set back (the old slot never stopped serving and
    an ephemeral container cannot be removed): only the record says so."""
    return _annotations(pod, {
        layout.LAST_UPGRADE: ephemeral.last_upgrade(handover, "rolled_back", time, reason),
        ROLLOUT: record.moved(PodPhase.ROLLED_BACK, time, reason).encode()})


def unrecord_ops(before: Mapping[str, Any]) -> JsonPatch:
    """`record_ops` undone, to the annotations of `before`: when the container could not be
    added, the pod is left as it was (a refusal changes nothing)."""
    old = (before.get("metadata") or {}).get("annotations") or {}
    ops: JsonPatch = []
    for key in (ROLLOUT, layout.LAST_UPGRADE):
        path = f"/metadata/annotations/{key.replace('~', '~0').replace('/', '~1')}"
        ops.append({"op": "replace", "path": path, "value": old[key]} if key in old
                   else {"op": "remove", "path": path})
    return ops


def dry_run_patches(pod: Mapping[str, Any], handover: EphemeralPlan, record: RolloutRecord,
                    time: str, timeout_s: float, *, resumed: bool) -> dict[str, Any]:
    """What a pod would be sent (a resumed pod's record and slot may be there already)."""
    patches: dict[str, Any] = {}
    if not resumed:
        patches["record"] = record_ops(pod, handover, record)
        patches["start"] = ephemeral.add_patch(pod, ephemeral.slot_container(pod, handover))
    patches["check"] = ephemeral.check_container(pod, handover,
                                                 ephemeral.check_timeout_s(timeout_s))
    patches["done"] = done_ops(pod, handover, record, time)
    patches["rolled_back"] = rolled_back_ops(pod, handover, record, time, "(the reason)")
    return patches


def written_in(pod: Mapping[str, Any], handover: EphemeralPlan) -> Written:
    """What an earlier run had written, read from the pod it left (a resume)."""
    names = {c.get("name") for c in ephemeral.ephemeral_containers(pod)}
    if handover.check_container in names:
        return Written.CHECK
    if handover.container in names:
        return Written.SLOT
    return Written.RECORD


def decide(pod: Mapping[str, Any], handover: EphemeralPlan, written: Written) -> Decision:
    """The next step, from `ephemeral.follow`: a state that lacks a container this run already
    added predates that write, and is waited past."""
    where = ephemeral.follow(pod, handover)
    detail = where.progress.detail
    match where.stage:
        case Stage.NOT_ADDED:
            return Decision(Next.ADD_SLOT if written is Written.RECORD else Next.WAIT, detail)
        case Stage.RUNNING:
            return Decision(Next.ADD_CHECK if written < Written.CHECK else Next.WAIT, detail)
        case Stage.STARTING | Stage.CHECKING:
            return Decision(Next.WAIT, detail)
    end = ephemeral.judge(pod, handover, where.progress)
    return Decision({HandoverEnd.HANDED_OVER: Next.FINISH,
                     HandoverEnd.ROLLED_BACK: Next.ROLL_BACK,
                     HandoverEnd.NOT_CONFIRMED: Next.NOT_CONFIRMED}[end], detail)


def _annotations(pod: Mapping[str, Any], changes: Mapping[str, str]) -> JsonPatch:
    return plan.annotations_patch((pod.get("metadata") or {}).get("annotations"), changes)
