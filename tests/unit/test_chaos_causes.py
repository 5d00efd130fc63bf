"""Why a chaos run's request failed (bench/chaos/causes.py), from made-up failures."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from chaos.causes import Cause, Failure, Kill, classify, count  # noqa: E402

KILLS = [Kill(t_s=100.0, epoch=3, pid=4242)]


def failure(outcome: str, *, new: bool = False, epoch: str = "3", t_s: float = 100.01
            ) -> Failure:
    return Failure(t_s=t_s, outcome=outcome, new_connection=new, conn_epoch=epoch)


def test_a_refused_connect_is_refused_whatever_else_is_known() -> None:
    assert classify(failure("refused", new=True, epoch=""), KILLS) is Cause.REFUSED


def test_a_reset_or_eof_on_a_connection_opened_for_the_request_is_a_new_connection_failure(
        ) -> None:
    assert classify(failure("reset", new=True, epoch="", t_s=100.25), KILLS) \
        is Cause.NEW_CONNECTION
    assert classify(failure("eof", new=True, epoch="", t_s=90.0), KILLS) \
        is Cause.NEW_CONNECTION


def test_a_new_connection_lost_at_the_moment_of_a_kill_is_set_apart() -> None:
    assert classify(failure("reset", new=True, epoch="", t_s=100.08), KILLS) \
        is Cause.NEW_CONNECTION_AT_KILL
    assert classify(failure("eof", new=True, epoch="", t_s=99.97), KILLS) \
        is Cause.NEW_CONNECTION_AT_KILL


def test_a_request_lost_on_a_keepalive_connection_to_a_killed_generation_is_set_apart() -> None:
    assert classify(failure("reset"), KILLS) is Cause.DEAD_PROCESS
    assert classify(failure("eof", t_s=100.9), KILLS) is Cause.DEAD_PROCESS


def test_a_lost_keepalive_request_to_a_generation_not_killed_then_is_meshctls_failure() -> None:
    assert classify(failure("eof", epoch="2"), KILLS) is Cause.ESTABLISHED
    assert classify(failure("eof", t_s=105.0), KILLS) is Cause.ESTABLISHED
    assert classify(failure("eof", t_s=99.0), KILLS) is Cause.ESTABLISHED


def test_timeouts_and_statuses_have_their_own_causes() -> None:
    assert classify(failure("timeout"), KILLS) is Cause.TIMEOUT
    assert classify(failure("connect_timeout", new=True), KILLS) is Cause.TIMEOUT
    assert classify(failure("503"), KILLS) is Cause.HTTP_STATUS


def test_failures_are_counted_by_cause_with_every_cause_named() -> None:
    counts = count([failure("refused", new=True), failure("refused", new=True),
                    failure("reset")], KILLS)
    assert counts["refused"] == 2 and counts["in_flight_on_dead_process"] == 1
    assert set(counts) == {c.value for c in Cause}
