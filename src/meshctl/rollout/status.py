"""`meshctl rollout status`: what the pods' records say (one list request), and which image
each pod's active slot runs. The summary is pure (`status_summary`); `rollout_status` lists."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NotRequired, TypedDict

from meshctl import errors
from meshctl.kube import Kube
from meshctl.podswap import plan, reference
from meshctl.rollout.plan import has_slots, key_of
from meshctl.rollout.record import PodPhase, decode
from meshctl.rollout.selector import Selector


class PodStatusJson(TypedDict):
    namespace: str
    pod: str
    state: str
    """A `PodPhase` value, as the record holds it."""
    canary: bool
    time: str
    reason: str | None


class RolloutStatusJson(TypedDict):
    """One rollout the records tell of."""

    id: str
    image: str
    states: dict[str, int]
    """Pods per record state (`PodPhase` values)."""
    canary_pods: int
    last_change: str
    pods: list[PodStatusJson]
    pods_on_image: NotRequired[int]
    pods_not_on_image: NotRequired[int]
    summary: NotRequired[str]


class StatusJson(TypedDict):
    """`meshctl rollout status --output json`."""

    namespace: str | None
    selector: str | None
    pods: int
    pods_with_slots: int
    pods_without_slots: int
    active_images: dict[str, int]
    rollouts: list[RolloutStatusJson]


def rollout_status(kube: Kube, namespace: str | None,
                   selector: Selector | None) -> StatusJson:
    """What the pods' records say (one list request): `meshctl rollout status`."""
    pods, _ = kube.list_pods(namespace, str(selector) if selector is not None else "")
    return status_summary(pods, namespace, selector)


def status_summary(pods: Iterable[Mapping[str, Any]], namespace: str | None,
                   selector: Selector | None) -> StatusJson:
    """The rollouts the pods' records tell of, and which image each pod's active slot runs."""
    images: dict[str, int] = {}
    rollouts: dict[str, RolloutStatusJson] = {}
    total = without_slots = 0
    for pod in sorted(pods, key=key_of):
        metadata = pod.get("metadata") or {}
        if namespace is not None and metadata.get("namespace") != namespace:
            continue
        if selector is not None and not selector.matches(metadata.get("labels")):
            continue
        total += 1
        if not has_slots(pod):
            without_slots += 1
            continue
        live = _live_image(pod)
        images[live] = images.get(live, 0) + 1
        record = decode(metadata.get("annotations"))
        if record is None:
            continue
        entry = rollouts.setdefault(record.id, {
            "id": record.id, "image": record.image, "states": {}, "canary_pods": 0,
            "last_change": "", "pods": []})
        entry["states"][record.state.value] = entry["states"].get(record.state.value, 0) + 1
        entry["canary_pods"] += int(record.canary)
        entry["last_change"] = max(entry["last_change"], record.time)
        ns, name = key_of(pod)
        entry["pods"].append({"namespace": ns, "pod": name, "state": record.state.value,
                              "canary": record.canary, "time": record.time,
                              "reason": record.reason})
    with_slots = total - without_slots
    for entry in rollouts.values():
        on_image = sum(n for image, n in images.items()
                       if reference.same_image(image, entry["image"]))
        entry["pods_on_image"] = on_image
        entry["pods_not_on_image"] = with_slots - on_image
        entry["summary"] = _rollout_summary(entry)
    return {"namespace": namespace, "selector": str(selector) if selector else None,
            "pods": total, "pods_with_slots": with_slots, "pods_without_slots": without_slots,
            "active_images": dict(sorted(images.items())),
            "rollouts": sorted(rollouts.values(), key=lambda e: e["last_change"],
                               reverse=True)}


def _live_image(pod: Mapping[str, Any]) -> str:
    try:
        live, _ = plan.live_and_standby(plan.pod_view(pod))
    except errors.PreflightFailed:
        return "(unknown: the slots are not one live and one standby)"
    return live.image


def _rollout_summary(entry: RolloutStatusJson) -> str:
    states = entry["states"]
    if states.get(PodPhase.UPGRADING.value):
        return (f"in progress, or stopped mid-swap: {states[PodPhase.UPGRADING.value]} pod(s) "
                f"upgrading; run the command again to continue")
    if states.get(PodPhase.ROLLED_BACK.value):
        return f"{states[PodPhase.ROLLED_BACK.value]} pod(s) rolled back"
    if not entry.get("pods_not_on_image"):
        return "complete: every pod with proxy slots runs the image"
    if entry["canary_pods"] and entry["canary_pods"] == sum(states.values()):
        return "the canary is done; the rest not started (paused after the canary?)"
    return f"{entry.get('pods_not_on_image')} pod(s) not on the image yet"
