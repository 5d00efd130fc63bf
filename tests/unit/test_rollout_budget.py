"""The disruption budget arithmetic (`meshctl.podswap.budget`), pure: budgets and pods in,
verdicts out, checked against what the disruption controller and the eviction API would
decide."""

from __future__ import annotations

from typing import Any

import pytest

from meshctl.kube import LabelSelector, Operator, PodDisruptionBudget, Requirement
from meshctl.podswap.budget import (
    BadBudget,
    Owner,
    PodState,
    Verdict,
    count,
    max_disruptions,
    may_start,
    scaled,
    selects,
)

NS = "shop"
RS = Owner("ReplicaSet", "web-7d4b9", "uid-rs")


def pod(name: str, *, ready: bool = True, labels: dict[str, str] | None = None,
        owner: Owner | None = RS, terminating: bool = False, ns: str = NS) -> PodState:
    return PodState(ns, name, labels if labels is not None else {"app": "web"}, ready,
                    terminating, owner)


def budget(name: str = "web", *, min_available: int | str | None = None,
           max_unavailable: int | str | None = None, policy: str | None = None,
           selector: Any = None) -> PodDisruptionBudget:
    return PodDisruptionBudget(
        NS, name, selector if selector is not None else LabelSelector({"app": "web"}),
        min_available, max_unavailable, policy)


def fleet(n: int, *, not_ready: int = 0) -> list[PodState]:
    return [pod(f"web-{i}", ready=i >= not_ready) for i in range(n)]


# ----------------------------------------------------------------- selectors


def test_match_labels_must_all_be_equal() -> None:
    selector = LabelSelector({"app": "web", "tier": "front"})
    assert selects(selector, {"app": "web", "tier": "front", "extra": "x"})
    assert not selects(selector, {"app": "web"})
    assert not selects(selector, {"app": "web", "tier": "back"})


@pytest.mark.parametrize(("operator", "values", "labels", "expected"), [
    (Operator.IN, ("a", "b"), {"k": "a"}, True),
    (Operator.IN, ("a", "b"), {"k": "c"}, False),
    (Operator.IN, ("a",), {}, False),
    (Operator.NOT_IN, ("a",), {"k": "b"}, True),
    (Operator.NOT_IN, ("a",), {"k": "a"}, False),
    (Operator.NOT_IN, ("a",), {}, True),  # NotIn matches a pod without the label
    (Operator.EXISTS, (), {"k": ""}, True),
    (Operator.EXISTS, (), {}, False),
    (Operator.DOES_NOT_EXIST, (), {}, True),
    (Operator.DOES_NOT_EXIST, (), {"k": "x"}, False),
])
def test_match_expressions_follow_the_four_operators(
    operator: Operator, values: tuple[str, ...], labels: dict[str, str], expected: bool
) -> None:
    assert selects(LabelSelector({}, (Requirement("k", operator, values),)), labels) is expected


def test_an_empty_selector_matches_every_pod_a_null_or_unreadable_one_none() -> None:
    # policy/v1: `selector: {}` selects the whole namespace; a budget without one, nothing.
    assert LabelSelector.from_json({}) == LabelSelector()
    assert selects(LabelSelector(), {"app": "web"}) and selects(LabelSelector(), {})
    assert LabelSelector.from_json(None) is None
    assert not selects(None, {"app": "web"})
    unreadable = LabelSelector.from_json(
        {"matchExpressions": [{"key": "k", "operator": "Near", "values": ["a"]}]})
    assert unreadable is not None and not unreadable.valid
    assert not selects(unreadable, {"k": "a"})
    no_values = LabelSelector.from_json({"matchExpressions": [{"key": "k", "operator": "In"}]})
    assert no_values is not None and not no_values.valid


def test_a_budget_is_read_from_its_json_spec() -> None:
    read = PodDisruptionBudget.from_json({
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"maxUnavailable": "25%", "unhealthyPodEvictionPolicy": "AlwaysAllow",
                 "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [
                     {"key": "tier", "operator": "NotIn", "values": ["batch"]}]}}})
    assert read == PodDisruptionBudget(
        NS, "web", LabelSelector({"app": "web"}, (Requirement("tier", Operator.NOT_IN,
                                                              ("batch",)),)),
        None, "25%", "AlwaysAllow")


# ----------------------------------------------------------------- the arithmetic


@pytest.mark.parametrize(("value", "total", "expected"), [
    (2, 10, 2), ("50%", 5, 3), ("10%", 5, 1), ("0%", 5, 0), ("100%", 3, 3), ("34%", 3, 2),
])
def test_counts_stay_and_percentages_round_up(value: int | str, total: int,
                                              expected: int) -> None:
    assert scaled(value, total) == expected


@pytest.mark.parametrize("value", ["3", "half", "x%"])
def test_a_string_that_is_not_a_percentage_is_refused(value: str) -> None:
    with pytest.raises(BadBudget):
        scaled(value, 4)


def test_min_available_as_a_count_allows_the_healthy_pods_above_it() -> None:
    assert max_disruptions(budget(min_available=2), fleet(5)) == 3
    assert max_disruptions(budget(min_available=5), fleet(5)) == 0
    assert max_disruptions(budget(min_available=7), fleet(5)) == 0  # never negative


def test_min_available_as_a_percentage_rounds_up_the_pods_it_needs() -> None:
    # 50% of 5 is 2.5: 3 must stay healthy, 2 may go.
    assert max_disruptions(budget(min_available="50%"), fleet(5)) == 2


def test_max_unavailable_as_a_percentage_rounds_up_the_pods_that_may_go() -> None:
    # 10% of 5 is 0.5, rounded up: one pod may go (as the disruption controller has it).
    assert max_disruptions(budget(max_unavailable="10%"), fleet(5)) == 1
    assert max_disruptions(budget(max_unavailable=1), fleet(5)) == 1
    assert max_disruptions(budget(max_unavailable=0), fleet(5)) == 0


def test_pods_not_ready_or_being_deleted_are_not_healthy() -> None:
    pods = [*fleet(4, not_ready=1), pod("web-9", terminating=True)]
    numbers = count(budget(min_available=2), pods, ())
    assert (numbers.expected, numbers.healthy, numbers.allowed) == (5, 3, 1)
    # maxUnavailable 1 of 5 expected: 4 must be healthy, 3 are: nothing allowed.
    assert max_disruptions(budget(max_unavailable=1), pods) == 0


def test_a_budget_with_neither_field_or_a_bad_one_allows_nothing() -> None:
    assert max_disruptions(budget(), fleet(3)) == 0
    bad = count(budget(min_available="two"), fleet(3), ())
    assert bad.allowed == 0 and bad.error is not None
    assert "cannot be used" in bad.describe()


def test_pods_mid_swap_count_as_disrupted() -> None:
    pods = fleet(4)
    numbers = count(budget(max_unavailable=2), pods, {(NS, "web-0")})
    assert (numbers.healthy, numbers.mid_swap, numbers.allowed) == (3, 1, 1)


# ----------------------------------------------------------------- may this pod start?


def test_a_budget_allowing_one_lets_one_pod_start_then_holds_the_next() -> None:
    pods, pdb = fleet(4), budget(max_unavailable=1)
    first = may_start(pods[0], pods, [pdb], set())
    assert first.verdict is Verdict.GO
    second = may_start(pods[1], pods, [pdb], {pods[0].key})
    assert second.verdict is Verdict.WAIT
    assert second.blocking[0].name == "web"
    assert second.reason == ("PodDisruptionBudget shop/web needs 3 healthy pod(s) of 4, has 3 "
                             "(1 mid-swap): 0 more disruption(s) allowed")


def test_a_budget_at_its_minimum_because_a_pod_is_not_ready_holds_every_ready_pod() -> None:
    pods = fleet(3, not_ready=1)
    pdb = budget(min_available=2)
    assert may_start(pods[1], pods, [pdb], set()).verdict is Verdict.WAIT
    ready_again = fleet(3)
    assert may_start(ready_again[1], ready_again, [pdb], set()).verdict is Verdict.GO


def test_a_pod_not_ready_may_start_while_its_budget_is_healthy() -> None:
    pods = fleet(3, not_ready=1)
    assert may_start(pods[0], pods, [budget(min_available=2)], set()).verdict is Verdict.GO
    # Below the minimum (one more pod mid-swap): IfHealthyBudget holds it, AlwaysAllow not.
    mid = {pods[1].key}
    assert may_start(pods[0], pods, [budget(min_available=2)], mid).verdict is Verdict.WAIT
    always = budget(min_available=2, policy="AlwaysAllow")
    assert may_start(pods[0], pods, [always], mid).verdict is Verdict.GO


def test_every_budget_over_a_pod_must_allow_it() -> None:
    pods = [pod("web-0", labels={"app": "web", "tier": "front"}),
            pod("web-1", labels={"app": "web", "tier": "front"}),
            pod("web-2", labels={"app": "web"})]
    loose = budget("web", max_unavailable=2)
    strict = budget("front", min_available=2, selector=LabelSelector({"tier": "front"}))
    check = may_start(pods[0], pods, [loose, strict], set())
    assert check.verdict is Verdict.WAIT
    assert [b.name for b in check.budgets] == ["web", "front"]
    assert [b.name for b in check.blocking] == ["front"]
    assert may_start(pods[2], pods, [loose, strict], set()).verdict is Verdict.GO


def test_budgets_of_other_namespaces_or_other_labels_do_not_count() -> None:
    pods = [pod("web-0"), pod("web-1")]
    elsewhere = PodDisruptionBudget("other", "web", LabelSelector({"app": "web"}), 2)
    other_app = budget("db", min_available=5, selector=LabelSelector({"app": "db"}))
    check = may_start(pods[0], pods, [elsewhere, other_app], set())
    assert check.verdict is Verdict.GO and check.budgets == ()


# ----------------------------------------------------------------- no budget: the controller


def test_the_only_pod_of_its_controller_needs_force() -> None:
    pods = [pod("web-0"), pod("web-9", terminating=True)]
    check = may_start(pods[0], pods, [], set())
    assert check.verdict is Verdict.REFUSE
    assert "the only Ready pod of ReplicaSet shop/web-7d4b9" in check.reason
    assert "--force" in check.reason
    assert may_start(pods[0], pods, [], set(), force=True).verdict is Verdict.GO


def test_a_pod_whose_siblings_are_mid_swap_or_not_ready_waits_for_them_without_a_budget(
) -> None:
    pods = fleet(2)
    assert may_start(pods[0], pods, [], set()).verdict is Verdict.GO
    assert may_start(pods[1], pods, [], {pods[0].key}).verdict is Verdict.WAIT
    not_ready = [pod("web-0"), pod("web-1", ready=False)]
    check = may_start(not_ready[0], not_ready, [], set())
    assert check.verdict is Verdict.WAIT
    assert "the other pod(s) of ReplicaSet shop/web-7d4b9 are not Ready" in check.reason


def test_pods_of_another_controller_are_not_siblings() -> None:
    other = Owner("ReplicaSet", "web-old", "uid-old")
    pods = [pod("web-0"), pod("web-1", owner=other)]
    assert may_start(pods[0], pods, [], set()).verdict is Verdict.REFUSE


def test_a_bare_pod_is_not_held_to_the_controller_rule() -> None:
    bare = pod("web-0", owner=None)
    assert may_start(bare, [bare], [], set()).verdict is Verdict.GO


def test_a_budget_covering_a_single_pod_decides_instead_of_the_controller_rule() -> None:
    only = pod("web-0")
    assert may_start(only, [only], [budget(max_unavailable=1)], set()).verdict is Verdict.GO
    assert may_start(only, [only], [budget(min_available=1)], set()).verdict is Verdict.WAIT


def test_a_pod_is_read_from_its_json() -> None:
    state = PodState.from_json({
        "metadata": {"name": "web-0", "namespace": NS, "labels": {"app": "web"},
                     "ownerReferences": [
                         {"kind": "Node", "name": "n", "uid": "u0"},
                         {"kind": "ReplicaSet", "name": "web-7d4b9", "uid": "uid-rs",
                          "controller": True}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert state == pod("web-0")
