"""The pod-slot handover, as one slot's supervisor reads it from the pod ledger.

Two proxy slots share a pod (`meshctl.manager.pod`): the standby slot's supervisor starts the
next generation, which hot-restarts from ours. What the other slot did is read from the ledger
each tick and turned into one decision here (pure; unit-tested); the supervisor acts on it.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshctl.manager.pod import GenState


class PodAction(enum.Enum):
    NOTHING = "nothing"
    DRAIN = "drain"
    """The other slot's newer generation is LIVE: ours drains (HANDING_OVER)."""
    CHECK_REPAIR = "check_repair"
    """The other slot's newer generation failed: the hot restart may need repair (Trap 1)."""


@dataclass(frozen=True)
class PodNews:
    action: PodAction = PodAction.NOTHING
    epoch: int | None = None
    entry: Mapping[str, Any] = field(default_factory=dict)
    answer_parent: bool = False
    """Our generation's parent (in the other slot) has exited: a stand-in of ours must answer
    on its socket (Trap 2), replacing the other slot's, which leaves with its supervisor."""


def read_news(live_epoch: int, newer: tuple[int, Mapping[str, Any]] | None,
              parent_state: str | None, *, ours: Collection[int],
              answered: Collection[int], handled_failures: Collection[int]) -> PodNews:
    """What to do about the other slot. `newer`: the ledger's newest generation above ours;
    `parent_state`: the ledger's state of epoch live_epoch - 1; `ours`: epochs this slot runs;
    `answered`: epochs with a stand-in of ours; `handled_failures`: failures acted on before."""
    parent = live_epoch - 1
    answer_parent = (parent >= 0 and parent not in answered and parent not in ours
                     and parent_state == GenState.EXITED)
    if newer is None:
        return PodNews(answer_parent=answer_parent)
    epoch, entry = newer
    if entry.get("state") == GenState.LIVE:
        return PodNews(PodAction.DRAIN, epoch, entry, answer_parent)
    if entry.get("state") == GenState.FAILED and epoch not in handled_failures:
        return PodNews(PodAction.CHECK_REPAIR, epoch, entry, answer_parent)
    return PodNews(answer_parent=answer_parent)
