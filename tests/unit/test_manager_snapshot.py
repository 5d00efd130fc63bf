"""What the health port answers, decided from a published snapshot alone (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from meshctl.manager import snapshot


def snap(phase: str, live_role: str | None = None, pod_serving: bool | None = None) -> Any:
    return {"phase": phase, "live": {"role": live_role} if live_role else None,
            "pod": {"serving": pod_serving} if pod_serving is not None else None}


@pytest.mark.parametrize("phase", ["running", "upgrading", "draining", "rolling_back",
                                   "recovering"])
def test_a_serving_phase_with_a_live_generation_is_ready(phase: str) -> None:
    assert snapshot.ready(snap(phase, "live")) == (True, "ready")


@pytest.mark.parametrize(("phase", "role"), [("starting", "starting"), ("running", "stopping"),
                                             ("stopping", "live"), ("failed", None),
                                             ("restarting", None)])
def test_anything_else_is_not_ready_and_says_the_phase(phase: str, role: str | None) -> None:
    assert snapshot.ready(snap(phase, role)) == (False, phase)


def test_a_slot_that_handed_over_is_ready_while_the_other_slot_serves() -> None:
    assert snapshot.ready(snap("idle", pod_serving=True))[0]
    assert not snapshot.ready(snap("idle", pod_serving=False))[0]
    assert snapshot.ready(snap("handing_over", pod_serving=True))[0]


def test_no_snapshot_yet_is_not_ready() -> None:
    assert snapshot.ready(None) == (False, "starting")
