"""The drain settings (`meshctl.drain.policy`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from meshctl.drain.policy import DrainPolicy, DrainStrategy


def test_the_defaults_are_one_to_forty_five_seconds_immediate_with_five_seconds_grace() -> None:
    policy = DrainPolicy()
    assert policy.drain_min_s == 1.0
    assert policy.drain_max_s == 45.0
    assert policy.strategy is DrainStrategy.IMMEDIATE
    assert policy.stop_grace_s == 5.0


def test_a_policy_cannot_be_changed_in_place() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DrainPolicy().drain_max_s = 10  # type: ignore[misc]


def test_strategies_are_the_values_envoy_accepts() -> None:
    assert [str(s) for s in DrainStrategy] == ["immediate", "gradual"]


def test_a_minimum_equal_to_the_maximum_is_accepted() -> None:
    assert DrainPolicy(drain_min_s=5, drain_max_s=5).drain_min_s == 5


def test_a_zero_minimum_and_a_zero_grace_are_accepted() -> None:
    policy = DrainPolicy(drain_min_s=0, stop_grace_s=0)
    assert (policy.drain_min_s, policy.stop_grace_s) == (0, 0)


def test_a_minimum_above_the_maximum_is_refused_naming_both() -> None:
    with pytest.raises(ValueError, match=r"drain_min_s \(10\) is above drain_max_s \(5\)"):
        DrainPolicy(drain_min_s=10, drain_max_s=5)


@pytest.mark.parametrize("values", [
    {"drain_min_s": -1},
    {"drain_max_s": 0},
    {"drain_max_s": -5},
    {"stop_grace_s": -0.1},
    {"drain_min_s": float("nan")},
    {"drain_max_s": float("nan")},
])
def test_negative_zero_maximum_and_nan_times_are_refused(values: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="drain times must be positive"):
        DrainPolicy(**values)


def test_envoys_drain_time_spans_the_whole_window_rounded_up() -> None:
    assert DrainPolicy(drain_max_s=45).envoy_drain_time_s == 45
    assert DrainPolicy(drain_min_s=0, drain_max_s=2.1).envoy_drain_time_s == 3
    assert DrainPolicy(drain_min_s=0, drain_max_s=0.2).envoy_drain_time_s == 1


def test_a_gradual_drain_asks_every_connection_by_half_the_window() -> None:
    # The other half is left for the request in flight on the last connection asked.
    gradual = DrainStrategy.GRADUAL
    assert DrainPolicy(drain_max_s=45, strategy=gradual).envoy_drain_time_s == 22
    assert DrainPolicy(drain_min_s=0, drain_max_s=6, strategy=gradual).envoy_drain_time_s == 3
    assert DrainPolicy(drain_min_s=0, drain_max_s=1, strategy=gradual).envoy_drain_time_s == 1


def test_envoys_parent_shutdown_timer_fires_only_after_meshctl_would_have_ended_the_drain() -> None:
    for policy in (DrainPolicy(), DrainPolicy(drain_min_s=0, drain_max_s=0.5, stop_grace_s=0),
                   DrainPolicy(drain_max_s=120, stop_grace_s=30)):
        assert policy.envoy_parent_shutdown_time_s > policy.drain_max_s + policy.stop_grace_s
        assert policy.envoy_parent_shutdown_time_s > policy.envoy_drain_time_s


def test_envoys_parent_shutdown_time_is_the_window_plus_grace_plus_five_seconds() -> None:
    assert DrainPolicy().envoy_parent_shutdown_time_s == 55
    assert DrainPolicy(drain_max_s=10.2, stop_grace_s=1.5).envoy_parent_shutdown_time_s == 17


def test_the_shutdown_budget_is_the_window_plus_grace_before_and_after_sigkill() -> None:
    assert DrainPolicy().shutdown_budget_s == 55.0
    assert DrainPolicy(drain_max_s=20, stop_grace_s=2.5).shutdown_budget_s == 25.0


# ----------------------------------------------------------------- with_overrides


def test_overrides_replace_only_the_given_fields() -> None:
    policy = DrainPolicy().with_overrides({"drain_max_s": 30, "stop_grace_s": 2})
    assert policy == DrainPolicy(drain_min_s=1.0, drain_max_s=30.0, stop_grace_s=2.0)


def test_overrides_return_a_copy_and_leave_the_original_alone() -> None:
    original = DrainPolicy()
    original.with_overrides({"drain_max_s": 30})
    assert original == DrainPolicy()


def test_integer_seconds_become_floats() -> None:
    policy = DrainPolicy().with_overrides({"drain_min_s": 2})
    assert isinstance(policy.drain_min_s, float)


def test_none_means_not_given_and_keeps_the_current_value() -> None:
    base = DrainPolicy(drain_max_s=30)
    assert base.with_overrides({"drain_min_s": None, "drain_max_s": None, "strategy": None,
                                "stop_grace_s": None}) == base


def test_no_overrides_give_an_equal_policy() -> None:
    assert DrainPolicy().with_overrides({}) == DrainPolicy()


@pytest.mark.parametrize("raw", ["gradual", DrainStrategy.GRADUAL])
def test_the_strategy_may_be_given_as_a_string_or_a_strategy(raw: Any) -> None:
    assert DrainPolicy().with_overrides({"strategy": raw}).strategy is DrainStrategy.GRADUAL


def test_an_unknown_strategy_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="strategy must be one of immediate, gradual, not 'slow'"):
        DrainPolicy().with_overrides({"strategy": "slow"})


def test_an_unknown_setting_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        DrainPolicy().with_overrides({"drain_max": 5, "drain_min_s": 1})
    message = str(info.value)
    assert message.startswith("unknown drain setting(s) drain_max;")
    assert "known: drain_max_s, drain_min_s, stop_grace_s, strategy" in message


def test_every_unknown_setting_is_named_at_once() -> None:
    with pytest.raises(ValueError, match=r"unknown drain setting\(s\) a, b;"):
        DrainPolicy().with_overrides({"b": 1, "a": 2})


@pytest.mark.parametrize("raw", ["5", "5s", [5], {"s": 5}])
def test_a_time_that_is_not_a_number_is_refused_naming_the_field(raw: Any) -> None:
    with pytest.raises(ValueError, match="drain_max_s must be a number of seconds"):
        DrainPolicy().with_overrides({"drain_max_s": raw})


@pytest.mark.parametrize("raw", [True, False])
def test_a_boolean_is_not_a_number_of_seconds(raw: bool) -> None:
    with pytest.raises(ValueError, match="stop_grace_s must be a number of seconds"):
        DrainPolicy().with_overrides({"stop_grace_s": raw})


def test_overrides_that_make_the_policy_inconsistent_are_refused() -> None:
    with pytest.raises(ValueError, match="is above drain_max_s"):
        DrainPolicy().with_overrides({"drain_min_s": 50})


def test_overrides_that_raise_the_maximum_and_the_minimum_together_are_accepted() -> None:
    policy = DrainPolicy(drain_max_s=5).with_overrides({"drain_min_s": 8, "drain_max_s": 10})
    assert (policy.drain_min_s, policy.drain_max_s) == (8.0, 10.0)


def test_an_infinite_maximum_is_refused_up_front() -> None:
    with pytest.raises(ValueError):
        DrainPolicy().with_overrides({"drain_max_s": float("inf")}).envoy_drain_time_s  # noqa: B018


def test_an_unknown_setting_whose_name_is_a_number_is_refused_as_unknown() -> None:
    with pytest.raises(ValueError, match="unknown drain setting"):
        DrainPolicy().with_overrides({5: 1})
