"""The supervisor's lifecycle (`meshctl.manager.phase`): one table, any other move raises."""

from __future__ import annotations

import itertools

import pytest

from meshctl.manager.phase import TRANSITIONS, IllegalTransition, Phase, transition

P = Phase
ALLOWED = {
    (P.STARTING, P.RUNNING), (P.STARTING, P.UPGRADING), (P.STARTING, P.RESTARTING),
    (P.STARTING, P.STOPPING), (P.STARTING, P.FAILED),
    (P.RUNNING, P.UPGRADING), (P.RUNNING, P.RESTARTING), (P.RUNNING, P.STOPPING),
    (P.RUNNING, P.FAILED), (P.RUNNING, P.HANDING_OVER),
    (P.HANDING_OVER, P.IDLE), (P.HANDING_OVER, P.STOPPING), (P.HANDING_OVER, P.FAILED),
    (P.IDLE, P.STOPPING), (P.IDLE, P.STARTING),
    (P.UPGRADING, P.DRAINING), (P.UPGRADING, P.ROLLING_BACK), (P.UPGRADING, P.STOPPING),
    (P.UPGRADING, P.FAILED),
    (P.ROLLING_BACK, P.RUNNING), (P.ROLLING_BACK, P.RECOVERING),
    (P.ROLLING_BACK, P.RESTARTING), (P.ROLLING_BACK, P.STOPPING), (P.ROLLING_BACK, P.FAILED),
    (P.RECOVERING, P.DRAINING), (P.RECOVERING, P.RUNNING), (P.RECOVERING, P.STOPPING),
    (P.RECOVERING, P.FAILED),
    (P.DRAINING, P.RUNNING), (P.DRAINING, P.RESTARTING), (P.DRAINING, P.STOPPING),
    (P.DRAINING, P.FAILED),
    (P.RESTARTING, P.STARTING), (P.RESTARTING, P.STOPPING), (P.RESTARTING, P.FAILED),
    (P.STOPPING, P.STOPPED), (P.STOPPING, P.FAILED),
    (P.FAILED, P.STOPPING),
}
ILLEGAL = sorted(set(itertools.product(Phase, Phase)) - ALLOWED)


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED))
def test_every_allowed_transition_moves_to_its_target(current: Phase, target: Phase) -> None:
    assert transition(current, target) is target


@pytest.mark.parametrize(("current", "target"), ILLEGAL)
def test_every_other_transition_raises_naming_both_phases(current: Phase, target: Phase) -> None:
    with pytest.raises(IllegalTransition, match=f"{current} -> {target} is not a legal"):
        transition(current, target)


def test_the_table_has_a_row_for_every_phase() -> None:
    assert set(TRANSITIONS) == set(Phase)


def test_stopped_is_terminal() -> None:
    assert TRANSITIONS[Phase.STOPPED] == frozenset()
    for target in Phase:
        with pytest.raises(IllegalTransition):
            transition(Phase.STOPPED, target)


def test_no_phase_moves_to_itself() -> None:
    for phase in Phase:
        assert phase not in TRANSITIONS[phase]


def test_only_running_accepts_an_upgrade_and_starting_only_resumes_an_adopted_one() -> None:
    assert {p for p in Phase if Phase.UPGRADING in TRANSITIONS[p]} == {Phase.RUNNING,
                                                                       Phase.STARTING}


def test_every_phase_can_reach_stopped() -> None:
    reachable = {Phase.STOPPED}
    while True:
        more = {p for p in Phase if TRANSITIONS[p] & reachable} - reachable
        if not more:
            break
        reachable |= more
    assert reachable == set(Phase)


def test_an_upgrade_and_its_drain_return_to_running() -> None:
    phase = Phase.STARTING
    for target in (P.RUNNING, P.UPGRADING, P.DRAINING, P.RUNNING, P.STOPPING, P.STOPPED):
        phase = transition(phase, target)
    assert phase is Phase.STOPPED


def test_an_illegal_transition_is_a_runtime_error() -> None:
    assert issubclass(IllegalTransition, RuntimeError)
