"""A rollout's state, kept in the cluster, and the lifecycle of each pod in it.

The state is one annotation on each pod the rollout touched, `meshctl.io/rollout`, written in
the same JSON patch that changes the pod's images (so the record and the images never
disagree):

    {"id": "r-3f2a9c01d4", "image": "<target>", "state": "upgrading", "slot": "b",
     "from": "<image before>", "cid": "<standby container before>", "canary": true,
     "time": "<RFC 3339>", "reason": "..."}

With `--handover ephemeral` the slot is the ephemeral slot `e<N>` and the record also names
the check container whose exit code judges the handover (`"check": "meshctl-check-<N>"`);
`cid` is null (no container is replaced).

The id is derived from what the command asks (scope, selector, image), so running the same
command again finds its own records and continues: pods already on the image are done, pods
left mid-swap by a CLI that died are followed to the end, pods rolled back earlier count as
failed (and are retried only when asked). No ConfigMap and no extra request: the pods are
listed anyway.

`PodPhase` is each pod's lifecycle in a run; `transition()` is the only way to change it and
refuses a change the table does not allow. Pure.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import NotRequired, TypedDict

from meshctl.podswap import ephemeral, layout

ROLLOUT: str = "meshctl.io/rollout"
"""The annotation holding a pod's rollout record (compact JSON)."""


class PodPhase(enum.Enum):
    PENDING = "pending"
    """Selected and eligible; not started (yet)."""
    UPGRADING = "upgrading"
    """The new image is in the standby slot; waiting until it is started and ready."""
    RETIRING = "retiring"
    """The new slot serves; the old slot was set to the standby image; waiting for it."""
    UPGRADED = "upgraded"
    """Done: the new image serves, the old slot stands by."""
    ALREADY_UPGRADED = "already_upgraded"
    """The active slot ran the image before this run (an earlier run, or someone else)."""
    ROLLED_BACK = "rolled_back"
    """The new image failed: the standby slot was set back; the old slot kept serving."""
    INTERRUPTED = "interrupted"
    """Set back to standby at the deadline or on a signal, before it was ready; a later run
    starts it again (not a failure of the image)."""
    INCOMPLETE = "incomplete"
    """The new image serves, but the old slot did not stand by in time."""
    FAILED = "failed"
    """Could not be upgraded nor rolled back (changed by someone else meanwhile, API error)."""
    SKIPPED = "skipped"
    """Not started: not ready, no proxy slots, refused by the pre-flight checks."""
    GONE = "gone"
    """Deleted while the rollout ran."""

    @property
    def terminal(self) -> bool:
        return not TRANSITIONS[self]


TRANSITIONS: Mapping[PodPhase, frozenset[PodPhase]] = {
    PodPhase.PENDING: frozenset({PodPhase.UPGRADING, PodPhase.SKIPPED, PodPhase.FAILED,
                                 PodPhase.ALREADY_UPGRADED, PodPhase.GONE}),
    # UPGRADING -> UPGRADED, INCOMPLETE: the ephemeral handover, where no old slot is retired
    # (the check's verdict ends it), and a verdict not known in time is incomplete.
    PodPhase.UPGRADING: frozenset({PodPhase.RETIRING, PodPhase.ROLLED_BACK,
                                   PodPhase.INTERRUPTED, PodPhase.FAILED, PodPhase.GONE,
                                   PodPhase.UPGRADED, PodPhase.INCOMPLETE}),
    PodPhase.RETIRING: frozenset({PodPhase.UPGRADED, PodPhase.INCOMPLETE, PodPhase.GONE}),
    PodPhase.UPGRADED: frozenset(),
    PodPhase.ALREADY_UPGRADED: frozenset(),
    PodPhase.ROLLED_BACK: frozenset(),
    PodPhase.INTERRUPTED: frozenset(),
    PodPhase.INCOMPLETE: frozenset(),
    PodPhase.FAILED: frozenset(),
    PodPhase.SKIPPED: frozenset(),
    PodPhase.GONE: frozenset(),
}

FAILURES: frozenset[PodPhase] = frozenset({PodPhase.ROLLED_BACK, PodPhase.INCOMPLETE,
                                           PodPhase.FAILED})
"""Outcomes that count against --max-failures and make the exit code 1."""

PERSISTED: frozenset[PodPhase] = frozenset({PodPhase.UPGRADING, PodPhase.UPGRADED,
                                            PodPhase.ROLLED_BACK, PodPhase.INTERRUPTED})
"""The states a record can hold (each written with the patch that makes it true)."""


class IllegalTransition(RuntimeError):
    """A bug: the rollout tried a change of phase the table does not allow."""


def transition(current: PodPhase, new: PodPhase) -> PodPhase:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"a pod cannot go from {current.value} to {new.value}")
    return new


RecordJson = TypedDict("RecordJson", {
    "id": str, "image": str, "state": str, "slot": str, "from": str, "cid": str | None,
    "canary": bool, "time": str, "reason": NotRequired[str], "check": NotRequired[str],
})
"""The record as the annotation holds it (compact JSON; `from` is a Python keyword, hence
this form)."""


@dataclass(frozen=True)
class RolloutRecord:
    """One pod's record of the rollout that touched it last."""

    id: str
    image: str
    state: PodPhase
    slot: str
    """The slot the new image went into: a, b, or an ephemeral slot e<N>."""
    from_image: str
    """The image the other slot served before."""
    container_id: str | None
    """The standby container's id before the swap: the new image runs in another one."""
    canary: bool
    time: str
    reason: str | None = None
    check: str | None = None
    """The ephemeral handover's check container (meshctl-check-<N>); None for two-slot."""

    @property
    def ephemeral(self) -> bool:
        return ephemeral.slot_index(self.slot) is not None

    def to_json(self) -> RecordJson:
        record: RecordJson = {"id": self.id, "image": self.image, "state": self.state.value,
                              "slot": self.slot, "from": self.from_image,
                              "cid": self.container_id, "canary": self.canary,
                              "time": self.time}
        if self.reason:
            record["reason"] = self.reason[:300]
        if self.check:
            record["check"] = self.check
        return record

    @classmethod
    def from_json(cls, raw: RecordJson) -> RolloutRecord | None:
        """The record, or None when it holds a state or slot this version cannot read."""
        state = PodPhase(raw["state"])
        slot = str(raw["slot"])
        index = ephemeral.slot_index(slot)
        check = raw.get("check")
        if state not in PERSISTED or (slot not in layout.SLOTS and index is None):
            return None
        if index is not None and check != ephemeral.check_name(index):
            return None  # an ephemeral slot is judged by its own check container only
        cid = raw.get("cid")
        return cls(id=str(raw["id"]), image=str(raw["image"]), state=state, slot=slot,
                   from_image=str(raw["from"]), container_id=str(cid) if cid else None,
                   canary=bool(raw.get("canary")), time=str(raw.get("time") or ""),
                   reason=raw.get("reason"), check=check)

    def encode(self) -> str:
        """The annotation's value."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)

    def moved(self, state: PodPhase, time: str, reason: str | None = None) -> RolloutRecord:
        if state not in PERSISTED:
            raise IllegalTransition(f"{state.value} is not a state a record holds")
        return replace(self, state=state, time=time, reason=reason)


def decode(annotations: Mapping[str, str] | None) -> RolloutRecord | None:
    """The pod's record, or None when it has none or one this version cannot read."""
    text = (annotations or {}).get(ROLLOUT)
    if not text:
        return None
    try:
        raw: RecordJson = json.loads(text)
        return RolloutRecord.from_json(raw)
    except (ValueError, KeyError, TypeError):
        return None


def rollout_id(namespace: str | None, selector: str, image: str) -> str:
    """Stable for the same command: scope, canonical selector and normalized image."""
    key = json.dumps([namespace or "*", selector, image], separators=(",", ":"))
    return "r-" + hashlib.sha256(key.encode()).hexdigest()[:10]
