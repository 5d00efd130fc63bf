"""`meshctl rollout --dry-run`: the plan it prints (pure): the batches and, for each pod, the
patches it would get, two-slot (`meshctl.rollout.plan`) or ephemeral
(`meshctl.rollout.ephemeral`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshctl.podswap.ephemeral import EphemeralPlan
from meshctl.podswap.plan import SwapPlan
from meshctl.rollout import ephemeral as eph
from meshctl.rollout import plan as rp
from meshctl.rollout.plan import Batch, BatchKind, PodKey, RolloutSettings, RolloutSpec
from meshctl.rollout.record import decode


def dry_run_plan(selection: rp.Selection, batches: Sequence[Batch],
                 latest: Mapping[PodKey, Mapping[str, Any]], spec: RolloutSpec,
                 settings: RolloutSettings, time_iso: str) -> dict[str, Any]:
    """The batches and, for each pod, the patches it would get."""
    canary = {k for b in batches if b.kind is BatchKind.CANARY for k in b.pods}
    where = {k: b.index for b in batches for k in b.pods}
    pods: list[dict[str, Any]] = []
    for target in selection.targets:
        pod = latest[target.key]
        resumed = (decode((pod.get("metadata") or {}).get("annotations")) if target.resumed
                   else None)
        patches: dict[str, Any]
        swap: SwapPlan | EphemeralPlan
        if target.handover is not None:
            swap = target.handover
            patches = eph.dry_run_patches(pod, swap, resumed or eph.record_for(
                swap, spec, canary=target.key in canary, time=time_iso),
                time_iso, settings.pod_timeout_s, resumed=target.resumed)
        else:
            assert target.swap is not None
            swap = target.swap
            record = resumed or rp.record_for(swap, spec, canary=target.key in canary,
                                              time=time_iso)
            patches = {}
            if not target.resumed:
                patches["start"] = rp.start_ops(pod, swap, record)
            patches["retire"] = rp.retire_ops(pod, swap, record, time_iso, guard=False)
            patches["rollback"] = rp.rollback_ops(pod, swap, record, time_iso, "(the reason)")
        pods.append({"namespace": target.key[0], "pod": target.key[1],
                     "batch": where.get(target.key), "canary": target.key in canary,
                     "resumed": target.resumed, "from_image": swap.from_image,
                     "to_image": swap.to_image, "from_slot": swap.old_slot,
                     "to_slot": swap.new_slot, "patches": patches})
    return {"batches": [{"index": b.index, "kind": b.kind.value,
                         "pods": [f"{ns}/{name}" for ns, name in b.pods]} for b in batches],
            "pods": pods,
            "retire_guard": "the retire patch also tests the new slot's container status "
                            "(name, containerID, ready: true) as seen ready, known only then"}
