"""The fleet rollout's pure parts: label selectors, the pods' records and their lifecycle, the
batches, when to stop and the exit code; and the client's throttled credential refresh."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from meshctl import errors
from meshctl.kube.config import ThrottledRefresh
from meshctl.rollout import plan as rp
from meshctl.rollout import selector as selectors
from meshctl.rollout.record import (
    ROLLOUT,
    IllegalTransition,
    PodPhase,
    RolloutRecord,
    decode,
    transition,
)

NEW = "registry.example/meshctl/proxy:1.40.0"


def spec(**overrides: Any) -> rp.RolloutSpec:
    values: dict[str, Any] = {"image": NEW, "selector": selectors.parse("app=web"),
                              "namespace": "shop"}
    return rp.RolloutSpec(**(values | overrides))


def keys(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple(("shop", n) for n in names)


# ----------------------------------------------------------------- selectors


@pytest.mark.parametrize(("text", "labels", "matches"), [
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "shop"}, False),
    ("app!=web", {}, True),
    ("tier in (front, edge)", {"tier": "edge"}, True),
    ("tier notin (front,edge)", {"tier": "edge"}, False),
    ("canary", {"canary": ""}, True),
    ("!canary", {"canary": "yes"}, False),
    ("app=web,!canary", {"app": "web"}, True),
    ("example.com/team=a", {"example.com/team": "a"}, True),
])
def test_a_selector_matches_labels_as_the_api_server_does(
    text: str, labels: dict[str, str], matches: bool
) -> None:
    assert selectors.parse(text).matches(labels) is matches


def test_a_selector_has_one_canonical_form_whatever_its_spelling() -> None:
    assert str(selectors.parse("tier in (edge,front), app=web")) == \
        str(selectors.parse("app=web,tier in (front,edge)")) == "app=web,tier in (edge,front)"


@pytest.mark.parametrize(("text", "problem"), [
    ("", "the label selector is empty"),
    ("app in (web", "expected `,` or `)` after 'web'"),
    ("app=web,", "a requirement is missing"),
    ("app=-web", "bad label value '-web'"),
    ("Bad_/x=1", "bad key prefix"),
    ("app web", "unexpected 'web'"),
])
def test_a_bad_selector_is_refused_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(errors.BadInput) as caught:
        selectors.parse(text)
    assert problem in str(caught.value)


# ----------------------------------------------------------------- the pods' records


def test_a_record_survives_its_annotation_and_an_unreadable_one_is_no_record() -> None:
    record = RolloutRecord(id="r-1", image=NEW, state=PodPhase.UPGRADING, slot="b",
                           from_image="old:1", container_id="containerd://b1", canary=True,
                           time="2026-01-01T00:00:00.000Z")
    assert decode({ROLLOUT: record.encode()}) == record
    assert decode({ROLLOUT: "{not json"}) is None
    assert decode({ROLLOUT: record.encode().replace('"upgrading"', '"retiring"')}) is None
    assert decode(None) is None


def test_a_record_keeps_its_annotation_s_json_shape_with_from_and_cid() -> None:
    record = RolloutRecord(id="r-1", image=NEW, state=PodPhase.ROLLED_BACK, slot="a",
                           from_image="old:1", container_id=None, canary=False, time="t",
                           reason="not ready")
    shape = record.to_json()
    assert shape == {"id": "r-1", "image": NEW, "state": "rolled_back", "slot": "a",
                     "from": "old:1", "cid": None, "canary": False, "time": "t",
                     "reason": "not ready"}
    assert json.loads(record.encode()) == shape
    assert RolloutRecord.from_json(shape) == record


def test_a_record_holds_only_states_written_with_the_patch_that_makes_them_true() -> None:
    record = RolloutRecord(id="r-1", image=NEW, state=PodPhase.UPGRADING, slot="b",
                           from_image="old:1", container_id=None, canary=False, time="t")
    assert record.moved(PodPhase.ROLLED_BACK, "t2", "not ready").reason == "not ready"
    with pytest.raises(IllegalTransition):
        record.moved(PodPhase.RETIRING, "t2")


def test_a_pod_moves_only_along_the_table() -> None:
    assert transition(PodPhase.PENDING, PodPhase.UPGRADING) is PodPhase.UPGRADING
    with pytest.raises(IllegalTransition, match="from upgraded to upgrading"):
        transition(PodPhase.UPGRADED, PodPhase.UPGRADING)
    with pytest.raises(IllegalTransition):
        transition(PodPhase.PENDING, PodPhase.RETIRING)


def test_the_same_command_is_the_same_rollout() -> None:
    assert spec().id == spec(max_parallel=50, canary=0).id
    assert spec().id != spec(image="registry.example/meshctl/proxy:1.41.0").id
    assert spec().id != spec(namespace=None).id


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"max_parallel": 0}, "--max-parallel"),
    ({"canary": -1}, "--canary"),
    ({"max_failures": 0}, "--max-failures"),
    ({"image": "Proxy:1"}, "bad image reference"),
])
def test_a_bad_spec_is_refused(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(errors.BadInput) as caught:
        spec(**overrides)
    assert problem in str(caught.value)


# ----------------------------------------------------------------- batches and stopping


def test_resumed_pods_come_first_then_the_canary_then_the_rest_n_at_a_time() -> None:
    targets = tuple(rp.Target(k, swap=None, resumed=k[1] == "p3")  # type: ignore[arg-type]
                    for k in keys("p0", "p1", "p2", "p3", "p4", "p5", "p6"))
    batches = rp.batches(rp.Selection(targets=targets), spec(canary=2, max_parallel=2))
    assert [(b.kind, b.pods) for b in batches] == [
        (rp.BatchKind.RESUME, keys("p3")), (rp.BatchKind.CANARY, keys("p0", "p1")),
        (rp.BatchKind.BATCH, keys("p2", "p4")), (rp.BatchKind.BATCH, keys("p5", "p6"))]
    assert [b.index for b in batches] == [1, 2, 3, 4]


def test_a_canary_done_by_an_earlier_run_is_not_done_again() -> None:
    targets = tuple(rp.Target(k, swap=None)  # type: ignore[arg-type]
                    for k in keys("p3", "p4", "p5"))
    batches = rp.batches(rp.Selection(targets=targets, touched=3), spec(canary=3))
    assert [b.kind for b in batches] == [rp.BatchKind.BATCH]


def test_after_a_batch_failures_stop_first_then_a_failed_canary_then_the_pause() -> None:
    canary = rp.Batch(1, rp.BatchKind.CANARY, keys("p0"))
    failed = rp.Counts(rolled_back=1)
    assert rp.after_batch(canary, failed, spec(max_failures=1), canary_failed=True,
                          more=True).message.startswith("stopped after 1 failure(s)")
    assert rp.after_batch(canary, failed, spec(max_failures=5), canary_failed=True,
                          more=True).message == "the canary failed; no further pod was started"
    paused = rp.after_batch(canary, rp.Counts(upgraded=1), spec(pause_after_canary=True),
                            canary_failed=False, more=True)
    assert paused.result is rp.RolloutResult.PAUSED
    assert rp.after_batch(canary, rp.Counts(upgraded=1), spec(pause_after_canary=True),
                          canary_failed=False, more=False).result is None


@pytest.mark.parametrize(("counts", "deadline", "interrupted", "code"), [
    (rp.Counts(upgraded=5), False, False, 0),
    (rp.Counts(upgraded=4, rolled_back=1), True, True, 1),
    (rp.Counts(upgraded=4, interrupted=1), True, False, 2),
    (rp.Counts(upgraded=4, interrupted=1), False, True, 130),
])
def test_the_exit_code_puts_failures_before_interruptions_before_the_deadline(
    counts: rp.Counts, deadline: bool, interrupted: bool, code: int
) -> None:
    result = rp.final_result(counts, rp.StopRule(), deadline=deadline, interrupted=interrupted)
    assert int(result.exit_code) == code


# ----------------------------------------------------------------- the client


def test_the_credential_refresh_hook_runs_at_most_once_per_period_and_stays_throttled() -> None:
    class Configuration:
        refresh_api_key_hook: Any = None

    calls: list[str] = []

    def loader_hook(configuration: Configuration) -> None:
        calls.append("refresh")
        # As the kubeconfig loader does: it installs a fresh hook of its own each time.
        configuration.refresh_api_key_hook = functools.partial(loader_hook)

    configuration = Configuration()
    throttled = ThrottledRefresh(loader_hook, every_s=3600)
    configuration.refresh_api_key_hook = throttled
    for _ in range(5):
        configuration.refresh_api_key_hook(configuration)
    assert calls == ["refresh"]
    assert configuration.refresh_api_key_hook is throttled

    always = ThrottledRefresh(loader_hook, every_s=0)
    always(configuration)
    always(configuration)
    assert calls == ["refresh"] * 3
