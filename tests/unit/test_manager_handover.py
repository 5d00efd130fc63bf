"""What one pod slot's supervisor makes of the other slot's ledger entries (pure)."""

from __future__ import annotations

from meshctl.manager.handover import PodAction, read_news
from meshctl.manager.pod import GenState


def test_nothing_newer_means_nothing_to_do() -> None:
    news = read_news(3, None, GenState.LIVE, ours={3}, answered=set(), handled_failures=set())
    assert news.action is PodAction.NOTHING and not news.answer_parent


def test_the_other_slots_newer_live_generation_makes_ours_drain() -> None:
    news = read_news(3, (4, {"state": GenState.LIVE, "slot": "b"}), None, ours={3},
                     answered=set(), handled_failures=set())
    assert (news.action, news.epoch, news.entry["slot"]) == (PodAction.DRAIN, 4, "b")


def test_a_failed_newer_generation_is_checked_for_repair_once() -> None:
    failed = (4, {"state": GenState.FAILED})
    first = read_news(3, failed, None, ours={3}, answered=set(), handled_failures=set())
    again = read_news(3, failed, None, ours={3}, answered=set(), handled_failures={4})
    assert first.action is PodAction.CHECK_REPAIR
    assert again.action is PodAction.NOTHING


def test_a_newer_generation_still_starting_is_left_alone() -> None:
    news = read_news(3, (4, {"state": GenState.STARTING}), None, ours={3}, answered=set(),
                     handled_failures=set())
    assert news.action is PodAction.NOTHING


def test_our_parent_in_the_other_slot_exited_so_we_answer_on_its_socket_once() -> None:
    assert read_news(3, None, GenState.EXITED, ours={3}, answered=set(),
                     handled_failures=set()).answer_parent
    assert not read_news(3, None, GenState.EXITED, ours={3}, answered={2},
                         handled_failures=set()).answer_parent
    assert not read_news(3, None, GenState.EXITED, ours={2, 3}, answered=set(),
                         handled_failures=set()).answer_parent
    assert not read_news(0, None, None, ours={0}, answered=set(),
                         handled_failures=set()).answer_parent
    assert not read_news(3, None, GenState.LIVE, ours={3}, answered=set(),
                         handled_failures=set()).answer_parent
