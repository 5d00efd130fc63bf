"""The chaos run's schedule (bench/chaos/schedule.py): seeded, reproducible, covering."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from chaos import schedule  # noqa: E402
from chaos.schedule import FAULTS, Binary, Fault, Step  # noqa: E402


def test_the_same_seed_gives_the_same_steps_and_another_seed_other_steps() -> None:
    assert schedule.generate(17, 40) == schedule.generate(17, 40)
    assert schedule.generate(17, 40) != schedule.generate(18, 40)


def test_every_fault_kind_is_in_a_schedule_just_long_enough_to_hold_them_all() -> None:
    for seed in range(50):
        steps = schedule.generate(seed, len(FAULTS) + 1)
        assert {s.fault for s in steps[1:]} == set(FAULTS), seed


def test_the_first_step_is_a_plain_upgrade_whatever_the_seed() -> None:
    for seed in range(50):
        first = schedule.generate(seed, 12)[0]
        assert (first.index, first.fault, first.at_s, first.hold_s) == (0, Fault.NONE, 0, 0)


def test_steps_are_numbered_in_order_and_use_both_binaries() -> None:
    steps = schedule.generate(3, 60)
    assert [s.index for s in steps] == list(range(60))
    assert {s.binary for s in steps} == set(Binary)


def test_moments_holds_and_variants_stay_within_their_fault_kinds_ranges() -> None:
    for step in schedule.generate(5, 500):
        low, high = schedule.MOMENT_S.get(step.fault, (0.0, 0.0))
        assert low <= step.at_s <= high, step
        low, high = schedule.HOLD_S.get(step.fault, (0.0, 0.0))
        assert low <= step.hold_s <= high, step
        assert step.variant in schedule.VARIANTS[step.fault], step


def test_a_long_schedule_draws_every_variant_and_some_plain_upgrades() -> None:
    steps = schedule.generate(11, 300)
    seen = {(s.fault, s.variant) for s in steps}
    assert seen == {(f, v) for f, vs in schedule.VARIANTS.items() for v in vs}


def test_only_the_kinds_asked_for_are_drawn() -> None:
    kinds = (Fault.KILL_LIVE, Fault.BAD_CONFIG)
    steps = schedule.generate(9, 40, kinds=kinds)
    assert {s.fault for s in steps} <= {Fault.NONE, *kinds}
    assert {s.fault for s in steps} >= set(kinds)


def test_a_fault_ratio_of_zero_leaves_only_the_covering_faults() -> None:
    steps = schedule.generate(1, 30, fault_ratio=0.0)
    assert sum(s.fault is not Fault.NONE for s in steps) == len(FAULTS)


def test_too_few_steps_for_every_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot cover"):
        schedule.generate(1, len(FAULTS))


def test_a_step_survives_a_round_trip_through_json() -> None:
    for step in schedule.generate(21, 30):
        assert Step.from_json(json.loads(json.dumps(step.to_json()))) == step


def test_faults_are_counted_by_kind_with_every_kind_named() -> None:
    steps = [Step(0, Binary.OLD, Fault.NONE), Step(1, Binary.NEW, Fault.KILL_LIVE),
             Step(2, Binary.NEW, Fault.KILL_LIVE)]
    counts = schedule.by_kind(steps)
    assert counts["kill_live"] == 2 and counts["none"] == 1 and counts["bad_binary"] == 0
    assert set(counts) == {f.value for f in Fault}


def test_fault_kinds_are_parsed_from_a_comma_list_and_a_bad_name_is_named() -> None:
    assert schedule.parse_kinds("all") == FAULTS
    assert schedule.parse_kinds("kill_new, kill_old") == (Fault.KILL_NEW, Fault.KILL_OLD)
    with pytest.raises(ValueError, match="'kill_everything'"):
        schedule.parse_kinds("kill_new,kill_everything")


def test_a_step_describes_itself_in_one_line_with_its_moment() -> None:
    step = Step(4, Binary.OLD, Fault.KILL_NEW, at_s=0.25)
    assert step.describe() == "step 4: upgrade to old, kill_new at +0.25s"
