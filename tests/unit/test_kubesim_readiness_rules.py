"""The fake kubelet's readiness rules (`kubesim.readiness`), pure, on a clock the test moves:
probe scheduling and thresholds as the kubelet's prober worker applies them, `started` and
`ready` as its prober manager computes them, the pod's conditions as its status manager
writes them."""

from __future__ import annotations

from kubesim.readiness import (
    ContainerView,
    ProbeSpec,
    ProbeType,
    ProbeWorker,
    Result,
    container_ready,
    container_started,
    pod_conditions,
    ready_status,
)

T0 = 100.0


def running(cid: str = "c1", at: float = T0, started: bool = True) -> ContainerView:
    return ContainerView(cid, running=True, started_at_s=at, started=started)


def readiness(**spec: int) -> ProbeWorker:
    return ProbeWorker(ProbeType.READINESS, ProbeSpec(**spec), created_at_s=T0)


def test_a_probe_spec_takes_the_api_servers_defaults_for_what_is_unset() -> None:
    assert ProbeSpec.from_spec({"httpGet": {"port": 1}}) == ProbeSpec(
        initial_delay_s=0, period_s=10, success_threshold=1, failure_threshold=3)
    assert ProbeSpec.from_spec(None) is None
    assert ProbeSpec.from_spec({"periodSeconds": 2, "failureThreshold": 2}) == ProbeSpec(
        period_s=2, failure_threshold=2)


def test_a_worker_probes_at_once_then_on_its_own_ticker_not_the_containers() -> None:
    worker = readiness(period_s=2)
    assert worker.due(T0)
    worker.do_probe(T0, None, lambda: True)  # no container yet: nothing probed
    assert not worker.due(T0 + 1.9)
    assert worker.due(T0 + 2.0)
    worker.do_probe(T0 + 2.5, running(at=T0 + 2.4), lambda: False)
    assert worker.next_due_s() == T0 + 4.0  # the grid of the worker's start, not the container's


def test_missed_ticks_are_dropped_as_a_go_ticker_drops_them() -> None:
    worker = readiness(period_s=1)
    worker.do_probe(T0 + 5.5, running(), lambda: True)
    assert worker.next_due_s() == T0 + 6.0


def test_a_new_container_starts_not_ready_until_a_probe_passes() -> None:
    worker = readiness(period_s=10)
    container = running()
    worker.do_probe(T0, container, lambda: False)
    assert worker.result_for("c1") is Result.FAILURE
    assert not container_ready(True, True, "c1", worker)
    worker.do_probe(T0 + 10, container, lambda: True)
    assert worker.result_for("c1") is Result.SUCCESS
    assert container_ready(True, True, "c1", worker)


def test_a_pod_sync_triggers_the_readiness_probe_of_a_started_container_not_yet_ready(
) -> None:
    worker = readiness(period_s=10)
    worker.do_probe(T0, running(), lambda: False)
    assert not worker.due(T0 + 1)
    assert not container_ready(True, True, "c1", worker)  # not a pod sync: no trigger
    assert not worker.due(T0 + 1)
    assert not container_ready(True, True, "c1", worker, sync=True)  # UpdatePodStatus
    assert worker.due(T0 + 1)
    worker.do_probe(T0 + 1, running(), lambda: True)
    assert container_ready(True, True, "c1", worker)
    assert worker.next_due_s() == T0 + 10  # a manual run does not move the ticker


def test_no_probe_runs_within_the_initial_delay_of_the_containers_start() -> None:
    worker = readiness(period_s=1, initial_delay_s=3)
    calls: list[float] = []
    for t in (0, 1, 2, 3):
        worker.do_probe(T0 + t + 0.5, running(at=T0 + 0.5), lambda t=t: calls.append(t) or True)
    assert calls == [3]  # int(elapsed) < 3 at 0, 1 and 2 s after the start


def test_readiness_changes_only_after_the_success_and_failure_thresholds() -> None:
    worker = readiness(period_s=1, success_threshold=2, failure_threshold=3)
    c = running()
    results = []
    for t, passed in enumerate([True, True, False, False, False, True]):
        worker.do_probe(T0 + t, c, lambda passed=passed: passed)
        results.append(worker.result_for("c1"))
    assert results == [Result.FAILURE, Result.SUCCESS, Result.SUCCESS, Result.SUCCESS,
                       Result.FAILURE, Result.FAILURE]


def test_a_restarted_container_starts_not_ready_whatever_the_old_one_was() -> None:
    worker = readiness(period_s=1)
    worker.do_probe(T0, running("old"), lambda: True)
    assert worker.result_for("old") is Result.SUCCESS
    worker.do_probe(T0 + 1, running("new", at=T0 + 0.9, started=False), lambda: True)
    assert worker.result_for("new") is Result.FAILURE
    assert worker.result_for("old") is None


def test_a_container_that_is_not_running_is_neither_started_nor_ready() -> None:
    worker = readiness(period_s=1)
    worker.do_probe(T0, running(), lambda: True)
    stopped = ContainerView("c1", running=False)
    worker.do_probe(T0 + 1, stopped, lambda: True)
    assert worker.result_for("c1") is Result.FAILURE
    assert not container_started(False, "c1", None)
    assert not container_ready(False, True, "c1", None)


def test_without_a_readiness_probe_a_running_container_is_ready() -> None:
    assert container_ready(True, container_started(True, "c1", None), "c1", None)


def test_with_a_startup_probe_readiness_waits_until_it_has_passed() -> None:
    startup = ProbeWorker(ProbeType.STARTUP, ProbeSpec(period_s=1, failure_threshold=30), T0)
    ready = readiness(period_s=1)
    calls: list[str] = []
    for t in (0, 1):
        view = running(started=container_started(True, "c1", startup))
        startup.do_probe(T0 + t, view, lambda t=t: calls.append(f"startup {t}") or t == 1)
        ready.do_probe(T0 + t, view, lambda t=t: calls.append(f"ready {t}") or True)
    assert calls == ["startup 0", "startup 1"]
    assert container_started(True, "c1", startup)
    view = running(started=True)
    assert not container_ready(True, True, "c1", ready, sync=True)  # the startup result's sync
    ready.do_probe(T0 + 1.1, view, lambda: calls.append("ready") or True)
    startup.do_probe(T0 + 2, view, lambda: calls.append("startup 2") or True)
    assert calls[-1] == "ready"  # a startup probe stops once the container has started
    assert container_ready(True, True, "c1", ready)


SPEC = {"initContainers": [{"name": "setup"}, {"name": "sidecar", "restartPolicy": "Always"}],
        "containers": [{"name": "app"}], "ephemeralContainers": [{"name": "debug"}]}
NOW, LATER = "2026-12-07T09:00:00Z", "2026-12-07T09:00:05Z"


def test_the_ready_condition_counts_native_sidecars_not_init_nor_ephemeral_containers() -> None:
    all_ready = {"sidecar": True, "app": True}
    assert ready_status(pod_conditions(SPEC, all_ready, [], NOW))
    assert ready_status(pod_conditions(SPEC, all_ready | {"setup": False, "debug": False}, [],
                                       NOW))
    conditions = pod_conditions(SPEC, {"sidecar": False, "app": True}, [], NOW)
    assert not ready_status(conditions)
    assert conditions[1]["message"] == "containers with unready status: [sidecar]"


def test_the_ready_condition_waits_for_every_readiness_gate() -> None:
    spec = {**SPEC, "readinessGates": [{"conditionType": "lb.example/ready"}]}
    ready = {"sidecar": True, "app": True}
    missing = pod_conditions(spec, ready, [], NOW)
    assert not ready_status(missing)
    assert missing[1]["reason"] == "ReadinessGatesNotReady"
    gate = {"type": "lb.example/ready", "status": "True"}
    conditions = pod_conditions(spec, ready, [gate], NOW)
    assert ready_status(conditions)
    assert gate in conditions  # someone else's condition is kept as it was


def test_the_last_transition_time_moves_only_when_the_status_changes() -> None:
    first = pod_conditions(SPEC, {"sidecar": True, "app": True}, [], NOW)
    same = pod_conditions(SPEC, {"sidecar": True, "app": True}, first, LATER)
    assert same[1]["lastTransitionTime"] == NOW
    flipped = pod_conditions(SPEC, {"sidecar": True, "app": False}, same, LATER)
    assert flipped[1] | {"message": None} == {
        "type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": None,
        "lastTransitionTime": LATER}
