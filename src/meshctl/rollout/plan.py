"""The rollout, decided from the listed pods: which pods are selected, which are skipped and
why, the batches (a canary first, then N at a time), the JSON patches of each pod, what to do
when a pod changes, when to stop, and the exit code.

Pure: pods in as plain dicts, decisions out. The per-pod swap reuses `meshctl.podswap.plan`
(pre-flight, progress, the image patches with their `test` guards) and adds to each of its
patches the rollout's record (`meshctl.rollout.record`), so that one request changes
the images and the state together.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshctl import errors
from meshctl.podswap import ephemeral, layout, plan, reference
from meshctl.podswap.ephemeral import EphemeralPlan
from meshctl.podswap.layout import Handover
from meshctl.podswap.plan import JsonPatch, Outcome, SwapPlan
from meshctl.rollout.record import (
    ROLLOUT,
    PodPhase,
    RolloutRecord,
    decode,
    rollout_id,
)
from meshctl.rollout.selector import Selector

PodKey = tuple[str, str]
"""(namespace, name)."""

IN_PROGRESS = "in_progress"


class RolloutEvent(enum.StrEnum):
    """The progress events a rollout emits (JSON lines on a CI log; the progress bar on a
    terminal), under the key "event"."""

    ROLLOUT_STARTED = "rollout_started"
    POD_STARTED = "pod_started"
    POD_UPGRADED = "pod_upgraded"
    POD_ROLLED_BACK = "pod_rolled_back"
    POD_FAILED = "pod_failed"
    POD_SKIPPED = "pod_skipped"
    BUDGET_WAIT = "budget_wait"
    """A pod's start is held by a disruption budget (or its controller's other pods are
    mid-swap); again when the numbers that hold it change."""
    BATCH_DONE = "batch_done"
    ROLLOUT_DONE = "rollout_done"
    NOTE = "note"


class RolloutExit(enum.IntEnum):
    """`meshctl rollout`'s own exit codes (documented in its --help and docs/rollout.md)."""

    OK = 0
    """Every selected pod runs the image (skipped pods aside), or paused after the canary,
    or a dry run."""
    FAILED = 1
    """Some pods failed and were rolled back (or the API failed midway): see the summary."""
    DEADLINE = 2
    """--timeout passed first: pods not ready by then were set back; run again to continue."""
    REFUSED = 3
    """Refused before starting, nothing changed: bad selector, bad image reference, no
    permission, no pod matched, the API server unreachable."""
    INTERRUPTED = 130
    """SIGINT or SIGTERM: pods not ready yet were set back; run again to continue."""


class RolloutResult(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    PAUSED = "paused"
    INTERRUPTED = "interrupted"
    DRY_RUN = "dry_run"

    @property
    def exit_code(self) -> RolloutExit:
        return _EXIT[self]


_EXIT = {RolloutResult.SUCCEEDED: RolloutExit.OK, RolloutResult.PAUSED: RolloutExit.OK,
         RolloutResult.DRY_RUN: RolloutExit.OK, RolloutResult.FAILED: RolloutExit.FAILED,
         RolloutResult.DEADLINE_EXCEEDED: RolloutExit.DEADLINE,
         RolloutResult.INTERRUPTED: RolloutExit.INTERRUPTED}


class SkipReason(enum.Enum):
    NOT_READY = "not_ready"
    NO_LAYOUT = "no_layout"
    BAD_LAYOUT = "bad_layout"
    PREFLIGHT = "preflight"
    TERMINATING = "terminating"
    OTHER_ROLLOUT = "other_rollout"
    FAILED_EARLIER = "failed_earlier"
    CHANGED = "changed"
    DELETED = "deleted"
    ONLY_READY = "only_ready"
    """The only Ready pod of its controller, and no disruption budget covers it (--force)."""


class BatchKind(enum.Enum):
    RESUME = "resume"
    """Pods an earlier run left mid-swap: followed to the end first."""
    CANARY = "canary"
    BATCH = "batch"


@dataclass(frozen=True)
class RolloutSpec:
    """What `meshctl rollout` was asked to do."""

    image: str
    selector: Selector
    namespace: str | None
    """None: all namespaces."""
    max_parallel: int = 10
    """Pods swapped at once (the size of a batch)."""
    canary: int = 1
    """Pods upgraded first, as a batch of their own; a failure among them stops the rollout."""
    max_failures: int = 1
    """No new pod is started once this many have failed (earlier runs included)."""
    pause_after_canary: bool = False
    retry_failed: bool = False
    """Start again the pods an earlier run of this rollout rolled back."""
    handover: Handover = Handover.TWO_SLOT
    """How each pod gets the image. Not part of the id: a pod left mid-handover is followed
    the way its record says (slot a/b: two-slot, e<N>: ephemeral), whatever this says."""

    def __post_init__(self) -> None:
        reference.parse(self.image)
        if self.max_parallel < 1:
            raise errors.BadInput("--max-parallel must be at least 1")
        if self.canary < 0:
            raise errors.BadInput("--canary must be 0 or more")
        if self.max_failures < 1:
            raise errors.BadInput("--max-failures must be at least 1")

    @functools.cached_property
    def id(self) -> str:
        """Derived from scope, selector and image: the same command, the same rollout."""
        return rollout_id(self.namespace, str(self.selector),
                          reference.parse(self.image).normalized())

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image, "selector": str(self.selector),
                "namespace": self.namespace, "max_parallel": self.max_parallel,
                "canary": self.canary, "max_failures": self.max_failures,
                "pause_after_canary": self.pause_after_canary,
                "retry_failed": self.retry_failed, "handover": self.handover.value}


class EventPolicy(enum.Enum):
    """Which pod outcomes get a Kubernetes Event (what `kubectl describe pod` shows)."""

    ALL = "all"
    FAILURES = "failures"
    """Every pod that did not end upgraded: rolled back, incomplete, failed, interrupted.
    The upgraded ones say so in their annotations; an Event each would be a third of the
    rollout's requests, for news nobody needs to look at."""
    NONE = "none"

    def wants(self, phase: PodPhase) -> bool:
        if self is EventPolicy.ALL:
            return True
        return self is EventPolicy.FAILURES and phase is not PodPhase.UPGRADED


@dataclass(frozen=True)
class RolloutSettings:
    timeout_s: float | None = None
    """The whole rollout's deadline (exit code 2 past it); None: no deadline."""
    pod_timeout_s: float = 300.0
    """A pod's new slot must be started and ready within this, or it is rolled back."""
    retire_timeout_s: float = 60.0
    """How long to wait for a pod's old slot to stand by; past it the pod is `incomplete`."""
    start_attempts: int = 3
    """Patches tried per pod when its images changed between our read and our write."""
    events: EventPolicy = EventPolicy.FAILURES
    """Which pod outcomes are recorded as Kubernetes Events on the pod."""
    force: bool = False
    """Swap a pod that is the only Ready pod of its controller although no disruption budget
    covers it (budgets are always respected)."""


@dataclass(frozen=True)
class Target:
    key: PodKey
    swap: SwapPlan | None = None
    """The two-slot swap; None for an ephemeral handover."""
    resumed: bool = False
    """Left mid-swap by an earlier run: the new image is in the standby slot already (or in
    its ephemeral slot, added or not yet)."""
    handover: EphemeralPlan | None = None
    """The ephemeral handover (`--handover ephemeral`); None for two-slot."""


@dataclass(frozen=True)
class Skip:
    key: PodKey
    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class Already:
    key: PodKey
    by_this_rollout: bool


@dataclass(frozen=True)
class Selection:
    targets: tuple[Target, ...] = ()
    """Eligible pods, in order (namespace, name); resumed ones are among them."""
    already: tuple[Already, ...] = ()
    skipped: tuple[Skip, ...] = ()
    failed_earlier: tuple[Skip, ...] = ()
    """Rolled back by an earlier run of this rollout: failures, not retried."""
    touched: int = 0
    """Pods an earlier run of this rollout started (the canary's share is counted on them)."""

    @property
    def selected(self) -> int:
        return (len(self.targets) + len(self.already) + len(self.skipped)
                + len(self.failed_earlier))


@dataclass(frozen=True)
class Batch:
    index: int
    """1-based."""
    kind: BatchKind
    pods: tuple[PodKey, ...]


@dataclass
class Counts:
    selected: int = 0
    upgraded: int = 0
    already_upgraded: int = 0
    rolled_back: int = 0
    incomplete: int = 0
    failed: int = 0
    interrupted: int = 0
    skipped: int = 0
    gone: int = 0
    pending: int = 0

    @property
    def failures(self) -> int:
        return self.rolled_back + self.incomplete + self.failed

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Action(enum.Enum):
    WAIT = "wait"
    RETIRE = "retire"
    ROLL_BACK = "roll_back"
    FINISH = "finish"
    FINISH_INCOMPLETE = "finish_incomplete"


@dataclass(frozen=True)
class Decision:
    """What the latest state of a pod in flight asks for."""

    action: Action
    detail: str = ""


@dataclass
class StopRule:
    """Why no further batch starts (None: go on)."""

    result: RolloutResult | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------- selection


def key_of(pod: Mapping[str, Any]) -> PodKey:
    metadata = pod.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def label(key: PodKey) -> str:
    return f"pod {key[0]}/{key[1]}"


def matches(pod: Mapping[str, Any], spec: RolloutSpec) -> bool:
    """The selector and the namespace, checked on our side (see `meshctl.rollout.selector`)."""
    metadata = pod.get("metadata") or {}
    if spec.namespace is not None and metadata.get("namespace") != spec.namespace:
        return False
    return spec.selector.matches(metadata.get("labels"))


def select(pods: Iterable[Mapping[str, Any]], spec: RolloutSpec) -> Selection:
    """Classify the listed pods, in order (namespace, name)."""
    targets: list[Target] = []
    already: list[Already] = []
    skipped: list[Skip] = []
    failed: list[Skip] = []
    touched = 0
    chosen = sorted((p for p in pods if matches(p, spec)), key=key_of)
    for pod in chosen:
        outcome = classify(pod, spec)
        record = decode((pod.get("metadata") or {}).get("annotations"))
        if (record is not None and record.id == spec.id
                and record.state in (PodPhase.UPGRADING, PodPhase.UPGRADED,
                                     PodPhase.ROLLED_BACK)):
            touched += 1
        if isinstance(outcome, Target):
            targets.append(outcome)
        elif isinstance(outcome, Already):
            already.append(outcome)
        elif outcome.reason is SkipReason.FAILED_EARLIER:
            failed.append(outcome)
        else:
            skipped.append(outcome)
    return Selection(targets=tuple(targets), already=tuple(already), skipped=tuple(skipped),
                     failed_earlier=tuple(failed), touched=touched)


def classify(pod: Mapping[str, Any], spec: RolloutSpec) -> Target | Already | Skip:
    """One pod: to upgrade (with its swap plan), already on the image, or skipped (why)."""
    key = key_of(pod)
    metadata = pod.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return Skip(key, SkipReason.TERMINATING, "being deleted")
    if not has_slots(pod):
        return Skip(key, SkipReason.NO_LAYOUT,
                    "no meshctl proxy slots (add them with `meshctl inject`)")
    try:
        view = plan.pod_view(pod)
    except errors.PreflightFailed as exc:
        return Skip(key, SkipReason.BAD_LAYOUT, _without_label(str(exc), key))
    record = decode(view.annotations)
    ours = record is not None and record.id == spec.id
    if record is not None and record.state is PodPhase.UPGRADING:
        if not ours:
            return Skip(key, SkipReason.OTHER_ROLLOUT,
                        f"left mid-swap by rollout {record.id} (to {record.image}); run that "
                        f"rollout again to finish it")
        try:
            if record.ephemeral:
                return Target(key, resumed=True, handover=ephemeral.resumed_plan(
                    pod, record.slot, record.from_image, record.image))
            return Target(key, resume_plan(view, record), resumed=True)
        except errors.PreflightFailed as exc:
            return Skip(key, SkipReason.PREFLIGHT, _without_label(str(exc), key))
    if spec.handover is Handover.EPHEMERAL:
        return _classify_ephemeral(pod, spec, record)
    try:
        live, _ = plan.live_and_standby(view)
    except errors.PreflightFailed as exc:
        return Skip(key, SkipReason.PREFLIGHT, _without_label(str(exc), key))
    if reference.same_image(live.image, spec.image):
        return Already(key, by_this_rollout=ours)
    if ours and record is not None and record.state is PodPhase.ROLLED_BACK \
            and not spec.retry_failed:
        return Skip(key, SkipReason.FAILED_EARLIER,
                    f"rolled back by an earlier run ({record.reason or 'no reason recorded'}); "
                    f"--retry-failed starts it again")
    if not is_ready(pod):
        return Skip(key, SkipReason.NOT_READY, "not Ready")
    try:
        swap = plan.plan_swap(view, spec.image)
    except errors.PreflightFailed as exc:
        return Skip(key, SkipReason.PREFLIGHT, _without_label(str(exc), key))
    return Target(key, swap)


def _classify_ephemeral(pod: Mapping[str, Any], spec: RolloutSpec,
                        record: RolloutRecord | None) -> Target | Already | Skip:
    """`classify` for `--handover ephemeral`: the serving slot may be a, b or e<N>."""
    key = key_of(pod)
    ours = record is not None and record.id == spec.id
    try:
        handover = ephemeral.plan_ephemeral(pod, spec.image)
    except errors.PreflightFailed as exc:
        if not is_ready(pod):
            return Skip(key, SkipReason.NOT_READY, "not Ready")
        return Skip(key, SkipReason.PREFLIGHT, _without_label(str(exc), key))
    if handover.unchanged:
        return Already(key, by_this_rollout=ours)
    if ours and record is not None and record.state is PodPhase.ROLLED_BACK \
            and not spec.retry_failed:
        return Skip(key, SkipReason.FAILED_EARLIER,
                    f"rolled back by an earlier run ({record.reason or 'no reason recorded'}); "
                    f"--retry-failed starts it again")
    if not is_ready(pod):
        return Skip(key, SkipReason.NOT_READY, "not Ready")
    return Target(key, handover=handover)


def has_slots(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    names = {layout.container_name(s) for s in layout.SLOTS}
    return any(c.get("name") in names
               for key in ("containers", "initContainers") for c in spec.get(key) or [])


def is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def resume_plan(view: plan.PodView, record: RolloutRecord) -> SwapPlan:
    """The swap an earlier run started (its record says which slot got which image)."""
    slot: layout.Slot = "a" if record.slot == "a" else "b"
    new = view.slots[slot]
    old = view.slots[layout.other(slot)]
    if new.image != record.image or old.image != record.from_image:
        raise errors.PreflightFailed(
            f"{view.label} was left mid-swap by this rollout, but its slots changed since "
            f"(slot {new.slot} runs {new.image}, slot {old.slot} runs {old.image})")
    standby = view.annotations.get(layout.STANDBY_IMAGE) or layout.DEFAULT_STANDBY_IMAGE
    return SwapPlan(namespace=view.namespace, pod=view.name, old_slot=old.slot,
                    new_slot=new.slot, old_pointer=old.pointer, new_pointer=new.pointer,
                    old_container=old.container, new_container=new.container,
                    from_image=record.from_image, to_image=record.image, standby_image=standby,
                    old_container_id=old.container_id, new_container_id=record.container_id)


def batches(selection: Selection, spec: RolloutSpec) -> list[Batch]:
    """Resumed pods first, then the canary (what is left of it), then the rest N at a time."""
    resumed = [t.key for t in selection.targets if t.resumed]
    fresh = [t.key for t in selection.targets if not t.resumed]
    canary_left = max(0, spec.canary - selection.touched)
    groups: list[tuple[BatchKind, list[PodKey]]] = []
    groups += [(BatchKind.RESUME, chunk) for chunk in _chunks(resumed, spec.max_parallel)]
    groups += [(BatchKind.CANARY, chunk)
               for chunk in _chunks(fresh[:canary_left], spec.max_parallel)]
    groups += [(BatchKind.BATCH, chunk)
               for chunk in _chunks(fresh[canary_left:], spec.max_parallel)]
    return [Batch(i, kind, tuple(pods)) for i, (kind, pods) in enumerate(groups, start=1)]


def _chunks(items: Sequence[PodKey], size: int) -> list[list[PodKey]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


# ----------------------------------------------------------------- patches


def record_for(swap: SwapPlan, spec: RolloutSpec, *, canary: bool, time: str) -> RolloutRecord:
    return RolloutRecord(id=spec.id, image=swap.to_image, state=PodPhase.UPGRADING,
                         slot=swap.new_slot, from_image=swap.from_image,
                         container_id=swap.new_container_id, canary=canary, time=time)


def start_ops(pod: Mapping[str, Any], swap: SwapPlan, record: RolloutRecord) -> JsonPatch:
    """The new image into the standby slot (tests on both slots) and the record, at once."""
    return plan.start_patch(swap) + _annotations(pod, {
        layout.LAST_UPGRADE: plan.last_upgrade(swap, IN_PROGRESS, record.time),
        ROLLOUT: record.encode()})


def retire_ops(pod: Mapping[str, Any], swap: SwapPlan, record: RolloutRecord, time: str, *,
               guard: bool = True) -> JsonPatch:
    """The old slot to standby, the annotations switched, the record `upgraded`; with `guard`,
    only if the new slot is still ready in the container we saw ready (the handover check,
    in the same request: no re-read)."""
    done = record.moved(PodPhase.UPGRADED, time)
    tests = handover_guard(pod, swap) if guard else []
    return plan.retire_patch(swap) + tests + _annotations(pod, {
        **plan.switched_annotations(swap),
        layout.LAST_UPGRADE: plan.last_upgrade(swap, "succeeded", time),
        ROLLOUT: done.encode()})


def rollback_ops(pod: Mapping[str, Any], swap: SwapPlan, record: RolloutRecord, time: str,
                 reason: str, *, interrupted: bool = False) -> JsonPatch:
    """The standby image back into the new slot; the old slot keeps serving."""
    state = PodPhase.INTERRUPTED if interrupted else PodPhase.ROLLED_BACK
    moved = record.moved(state, time, reason)
    return plan.rollback_patch(swap) + _annotations(pod, {
        layout.LAST_UPGRADE: plan.last_upgrade(swap, "interrupted" if interrupted
                                               else "rolled_back", time, reason),
        ROLLOUT: moved.encode()})


def handover_guard(pod: Mapping[str, Any], swap: SwapPlan) -> JsonPatch:
    """`test` operations on the new slot's container status: same container, still ready. The
    API server applies a JSON patch to the whole object (status included) before it keeps
    only the spec and metadata changes, so these tests see the status of the moment."""
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses"):
        for index, item in enumerate(status.get(key) or []):
            if item.get("name") == swap.new_container and item.get("containerID") \
                    and item.get("ready") is True:
                path = f"/status/{key}/{index}"
                return [{"op": "test", "path": f"{path}/name", "value": swap.new_container},
                        {"op": "test", "path": f"{path}/containerID",
                         "value": item["containerID"]},
                        {"op": "test", "path": f"{path}/ready", "value": True}]
    return []


def _annotations(pod: Mapping[str, Any], changes: Mapping[str, str]) -> JsonPatch:
    return plan.annotations_patch((pod.get("metadata") or {}).get("annotations"), changes)


# ----------------------------------------------------------------- progress and stopping


def decide(phase: PodPhase, view: plan.PodView, swap: SwapPlan,
           generation: int | None) -> Decision:
    """What the pod's latest state (`plan.pod_view` of it) asks for in `phase`."""
    if before_our_write(view, phase, swap):
        return Decision(Action.WAIT, "the pod does not show our change yet")
    if phase is PodPhase.UPGRADING:
        progress = plan.new_slot_progress(view, swap, generation)
        action = {Outcome.DONE: Action.RETIRE, Outcome.FAILED: Action.ROLL_BACK,
                  Outcome.WAITING: Action.WAIT}[progress.outcome]
        return Decision(action, progress.detail)
    if phase is PodPhase.RETIRING:
        progress = plan.old_slot_progress(view, swap)
        action = {Outcome.DONE: Action.FINISH, Outcome.FAILED: Action.FINISH_INCOMPLETE,
                  Outcome.WAITING: Action.WAIT}[progress.outcome]
        return Decision(action, progress.detail)
    return Decision(Action.WAIT)


def before_our_write(view: plan.PodView, phase: PodPhase, swap: SwapPlan) -> bool:
    """Whether this state of the pod predates our last patch (a watch may still deliver
    states from before it): its slots still run what they ran before we wrote. Decided on the
    spec, since resourceVersions may only be compared for equality."""
    new, old = view.slots[swap.new_slot].image, view.slots[swap.old_slot].image
    if phase is PodPhase.UPGRADING:
        return new == swap.standby_image and old == swap.from_image
    if phase is PodPhase.RETIRING:
        return new == swap.to_image and old == swap.from_image
    return False


def after_batch(batch: Batch, counts: Counts, spec: RolloutSpec, *, canary_failed: bool,
                more: bool) -> StopRule:
    """Whether the next batch may start, after `batch` ended with `counts` so far."""
    if counts.failures >= spec.max_failures:
        return StopRule(RolloutResult.FAILED,
                        f"stopped after {counts.failures} failure(s) (--max-failures "
                        f"{spec.max_failures}); no further pod was started")
    if batch.kind is BatchKind.CANARY and canary_failed:
        return StopRule(RolloutResult.FAILED, "the canary failed; no further pod was started")
    if (batch.kind is BatchKind.CANARY and spec.pause_after_canary and more):
        return StopRule(RolloutResult.PAUSED,
                        "paused after the canary; run the same command again to continue")
    return StopRule()


def before_start(counts: Counts, spec: RolloutSpec) -> StopRule:
    """Failures recorded by earlier runs count: a rollout that stopped stays stopped."""
    if counts.failures >= spec.max_failures:
        return StopRule(RolloutResult.FAILED,
                        f"{counts.failures} pod(s) already failed in earlier runs of this "
                        f"rollout (--max-failures {spec.max_failures}): nothing started; "
                        f"--retry-failed starts them again, or raise --max-failures")
    return StopRule()


def final_result(counts: Counts, stopped: StopRule, *, deadline: bool,
                 interrupted: bool) -> RolloutResult:
    """Failures first (1), then an interruption (130), then the deadline (2)."""
    if counts.failures:
        return RolloutResult.FAILED
    if interrupted:
        return RolloutResult.INTERRUPTED
    if deadline:
        return RolloutResult.DEADLINE_EXCEEDED
    if stopped.result is not None:
        return stopped.result
    return RolloutResult.SUCCEEDED


def tally(phases: Iterable[PodPhase]) -> Counts:
    counts = Counts()
    for phase in phases:
        counts.selected += 1
        match phase:
            case PodPhase.UPGRADED:
                counts.upgraded += 1
            case PodPhase.ALREADY_UPGRADED:
                counts.already_upgraded += 1
            case PodPhase.ROLLED_BACK:
                counts.rolled_back += 1
            case PodPhase.INCOMPLETE:
                counts.incomplete += 1
            case PodPhase.FAILED:
                counts.failed += 1
            case PodPhase.INTERRUPTED:
                counts.interrupted += 1
            case PodPhase.SKIPPED:
                counts.skipped += 1
            case PodPhase.GONE:
                counts.gone += 1
            case _:
                counts.pending += 1
    return counts


def _without_label(message: str, key: PodKey) -> str:
    return message.removeprefix(f"{label(key)}: ").removeprefix(f"{label(key)} ")
