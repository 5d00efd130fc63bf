"""How an upgrade's new generation initializes: a pure decision, every branch."""

from __future__ import annotations

import pytest

from meshctl.manager.settings import InitPriority as Mode
from meshctl.manager.upgrade import init_scheduling


def test_auto_initializes_at_idle_priority_when_it_can_be_restored_and_the_cpu_has_room() -> None:
    assert init_scheduling(Mode.AUTO, True, 12.5) == (True, "idle until LIVE (CPU pressure 12.5 %)")


@pytest.mark.parametrize("pressure", [80.0, 99.0])
def test_auto_on_a_saturated_cpu_starts_normally_an_idle_envoy_could_take_minutes(
        pressure: float) -> None:
    assert init_scheduling(Mode.AUTO, True, pressure) == (False,
                                                       f"normal (CPU pressure {pressure:g} %)")


def test_auto_with_unknown_pressure_starts_normally() -> None:
    assert init_scheduling(Mode.AUTO, True, None) == (False, "normal (CPU pressure unknown)")


@pytest.mark.parametrize("mode", [Mode.AUTO, Mode.IDLE])
def test_without_the_privilege_to_restore_it_never_starts_idle(mode: Mode) -> None:
    # It would serve at idle priority after LIVE: in a pod without SYS_NICE, never.
    assert init_scheduling(mode, False, 1.0) == (
        False, "normal (no CAP_SYS_NICE to restore it at LIVE)")


def test_idle_ignores_the_pressure_and_normal_ignores_everything() -> None:
    assert init_scheduling(Mode.IDLE, True, 99.0) == (True,
                                                      "idle until LIVE (--init-priority idle)")
    assert init_scheduling(Mode.NORMAL, True, 1.0) == (False, "normal (--init-priority normal)")
