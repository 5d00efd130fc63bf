"""PodDisruptionBudgets respected by `meshctl rollout` and `meshctl upgrade --pod`, against
kmock's API server over real HTTP, the real `kubernetes` client inside meshctl, and the fake
kubelet playing the node. Concurrency is measured twice: from the rollout's own events, and
from the container starts the node saw."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from kubernetes import client as k8s
from kubesim.apiserver import ApiServer, Fault, LeanApiServer
from kubesim.kubelet import FakeImage, FakeKubelet
from typer.testing import Result

from meshctl.rollout.record import ROLLOUT, PodPhase, RolloutRecord
from tests.k8s.conftest import (
    IMAGES,
    NAMESPACE,
    PROXY_NEW,
    PROXY_OLD,
    STANDBY,
    Invoke,
    events,
    from_meshctl,
    images,
    read_pod,
)
from tests.k8s.rollout_fixtures import (
    SELECTOR,
    FleetRuntime,
    create_fleet,
    events_of,
    named,
    web_pod,
)

A, B = "meshctl-proxy-a", "meshctl-proxy-b"
OLD = {A: PROXY_OLD, B: STANDBY, "web": "nginx:1.27"}
NEW = {A: STANDBY, B: PROXY_NEW, "web": "nginx:1.27"}
APP_IMAGE = "nginx:1.27"
OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9",
         "uid": "uid-web-7d4b9", "controller": True, "blockOwnerDeletion": True}


@pytest.fixture
def api() -> Iterator[ApiServer]:
    server = LeanApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def runtime() -> FleetRuntime:
    return FleetRuntime(IMAGES)


def create_budget(core: k8s.CoreV1Api, name: str = "web", **spec: Any) -> None:
    body = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, **spec}}
    k8s.PolicyV1Api(core.api_client).create_namespaced_pod_disruption_budget(NAMESPACE, body)


def app_only_pod(index: int) -> dict[str, Any]:
    """A pod of the app without the proxy slots (the rollout skips it; budgets count it),
    whose container has a readiness probe: Ready when its image says so (`FakeImage`), not as
    soon as it runs."""
    pod = web_pod(index, injected=False)
    pod["spec"]["containers"][0]["readinessProbe"] = {
        "httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}
    return pod


def owned(pod: dict[str, Any]) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["metadata"]["ownerReferences"] = [dict(OWNER)]
    return pod


def rollout(meshctl: Invoke, *args: str) -> Result:
    return meshctl("rollout", "--selector", SELECTOR, "--image", PROXY_NEW, "--canary", "0",
                   "-o", "json", *args)


def summary(result: Result) -> dict[str, Any]:
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def results(report: Mapping[str, Any]) -> dict[str, str]:
    return {p["pod"]: p["result"] for p in report["pods"]}


def most_in_flight(progress: Sequence[Mapping[str, Any]]) -> int:
    """The most pods between their `pod_started` and their end, in the events' order (the
    rollout's loop emits them as it acts)."""
    ends = {"pod_upgraded", "pod_rolled_back", "pod_failed"}
    now = most = 0
    for event in progress:
        if event["event"] == "pod_started":
            now += 1
        elif event["event"] in ends and not event.get("already"):
            now -= 1
        most = max(most, now)
    return most


def most_swapping_on_the_node(starts: Sequence[tuple[str, str, str]]) -> int:
    """From the containers the node started: a pod swaps from its new slot's start (the new
    image in slot b) until its old slot is back on the standby image (slot a restarted)."""
    swapping: set[str] = set()
    most = 0
    for pod, container, image in starts:
        if container == B and image == PROXY_NEW:
            swapping.add(pod)
        elif container == A and image == STANDBY:
            swapping.discard(pod)
        most = max(most, len(swapping))
    return most


def one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("meshctl: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ----------------------------------------------------------------- meshctl rollout


def test_a_budget_allowing_one_disruption_keeps_one_pod_mid_swap_whatever_max_parallel_says(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet, runtime: FleetRuntime
) -> None:
    fleet = create_fleet(core, kubelet, [web_pod(i) for i in range(6)])
    create_budget(core, maxUnavailable=1)
    before = len(runtime.starts)

    result = rollout(meshctl, "--max-parallel", "4")

    assert result.exit_code == 0, result.output
    report = summary(result)
    assert set(results(report).values()) == {"upgraded"}
    progress = events_of(result)
    assert most_in_flight(progress) == 1
    assert most_swapping_on_the_node(runtime.starts[before:]) == 1
    waits = named(progress, "budget_wait")
    assert waits, "held pods are reported"
    assert waits[0]["budgets"] == [{"budget": f"{NAMESPACE}/web", "expected": 6,
                                    "desired_healthy": 5, "healthy": 5, "mid_swap": 1,
                                    "allowed": 0}]
    # Batch 1 (4 pods): 3 held; batch 2 (2 pods): 1 held, or both while the last pod of
    # batch 1 is not Ready again yet (its old slot restarted: the kubelet reports it Ready
    # after its next relist).
    [budget] = report["budgets"]
    assert budget | {"waits": 0} == {"namespace": NAMESPACE, "name": "web",
                                     "allowed_at_start": 1, "waits": 0, "max_mid_swap": 1}
    held = [p for p in report["pods"] if p.get("budget_wait_s")]
    assert budget["waits"] == len(held) and len(held) in (4, 5)
    requests = report["api_requests"]
    assert requests["for_pods"] == 12  # 2 a pod: the budgets cost none of theirs
    assert requests["list_and_watch"] == 2  # the list, the watch
    assert requests["for_budgets"] == requests["total"] - 14 >= 4  # 2 a look, 2+ looks
    assert all(images(read_pod(core, name)) == NEW for name in fleet)


def test_a_percentage_budget_with_match_expressions_lets_its_share_go_at_once(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet, runtime: FleetRuntime
) -> None:
    fleet = create_fleet(core, kubelet, [web_pod(i) for i in range(4)])
    # 50% of 4 must stay available: 2 at a time may swap.
    create_budget(core, minAvailable="50%", selector={
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]},
                             {"key": "canary", "operator": "DoesNotExist"}]})
    before = len(runtime.starts)

    result = rollout(meshctl, "--max-parallel", "4")

    assert result.exit_code == 0, result.output
    assert most_in_flight(events_of(result)) == 2
    assert most_swapping_on_the_node(runtime.starts[before:]) == 2
    assert summary(result)["budgets"][0]["allowed_at_start"] == 2
    assert all(images(read_pod(core, name)) == NEW for name in fleet)


def test_the_text_summary_has_a_line_per_budget(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    create_fleet(core, kubelet, [web_pod(i) for i in range(2)])
    create_budget(core, maxUnavailable=1)
    result = meshctl("rollout", "--selector", SELECTOR, "--image", PROXY_NEW, "--canary", "0")
    assert result.exit_code == 0, result.output
    assert (f"PodDisruptionBudget {NAMESPACE}/web: allowed 1 at the start; 1 pod(s) held; at "
            f"most 1 of its pods mid-swap at once") in result.stdout


def test_a_budget_at_its_minimum_holds_the_rollout_until_its_not_ready_pod_is_ready(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet, runtime: FleetRuntime
) -> None:
    fleet = create_fleet(core, kubelet, [web_pod(i) for i in range(3)])
    # A fourth pod of the app, Ready only some seconds after it starts: until then the budget
    # (3 of 4 available) is at its minimum and allows no disruption.
    runtime.misbehave({"web-03"}, APP_IMAGE, FakeImage(ready_after_s=6.0))
    create_fleet(core, kubelet, [app_only_pod(3)], ready=False)
    create_budget(core, minAvailable=3)

    result = rollout(meshctl, "--max-parallel", "3", "--timeout", "120")

    assert result.exit_code == 0, result.output
    report = summary(result)
    assert results(report) == {"web-00": "upgraded", "web-01": "upgraded",
                               "web-02": "upgraded", "web-03": "skipped"}
    progress = events_of(result)
    first_wait = named(progress, "budget_wait")[0]
    assert first_wait["budgets"] == [{"budget": f"{NAMESPACE}/web", "expected": 4,
                                      "desired_healthy": 3, "healthy": 3, "mid_swap": 0,
                                      "allowed": 0}]
    started = named(progress, "pod_started")
    assert progress.index(first_wait) < progress.index(started[0])
    assert most_in_flight(progress) == 1  # then one at a time: 4 Ready, 3 needed
    assert all(images(read_pod(core, name)) == NEW for name in fleet)


def test_a_budget_that_never_allows_a_disruption_ends_at_the_deadline_with_exit_2(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, kubelet: FakeKubelet,
    runtime: FleetRuntime
) -> None:
    fleet = create_fleet(core, kubelet, [web_pod(i) for i in range(2)])
    runtime.misbehave({"web-02"}, APP_IMAGE, FakeImage(ready_after_s=None))
    create_fleet(core, kubelet, [app_only_pod(2)], ready=False)
    create_budget(core, minAvailable=2)

    result = rollout(meshctl, "--timeout", "3")

    assert result.exit_code == 2, result.output
    report = summary(result)
    assert report["result"] == "deadline_exceeded"
    assert report["counts"]["pending"] == 2
    for pod in report["pods"][:2]:
        assert pod["detail"].startswith("not started (the rollout's deadline (3s) passed): "
                                        f"PodDisruptionBudget {NAMESPACE}/web needs 2 healthy")
    assert [r for r in from_meshctl(api) if r.method == "PATCH"] == []
    assert all(images(read_pod(core, name)) == OLD for name in fleet)


def test_without_a_deadline_a_pod_held_past_its_pod_timeout_fails(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet, runtime: FleetRuntime
) -> None:
    create_fleet(core, kubelet, [web_pod(0)])
    create_budget(core, minAvailable=1)  # its only pod: never a disruption to spare

    result = rollout(meshctl, "--pod-timeout", "2")

    assert result.exit_code == 1, result.output
    pod = summary(result)["pods"][0]
    assert (pod["result"], pod["reason_code"]) == ("failed", "budget")
    assert pod["detail"].startswith("not started: held 2s (past --pod-timeout): "
                                    f"PodDisruptionBudget {NAMESPACE}/web needs 1 healthy")


def test_the_only_ready_pod_of_its_controller_without_a_budget_needs_force(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    create_fleet(core, kubelet, [owned(web_pod(0))])

    refused = rollout(meshctl)
    assert refused.exit_code == 0, refused.output  # skipped pods are listed, not failures
    pod = summary(refused)["pods"][0]
    assert (pod["result"], pod["reason_code"]) == ("skipped", "only_ready")
    assert pod["detail"].startswith(f"the only Ready pod of ReplicaSet {NAMESPACE}/web-7d4b9, "
                                    f"and no PodDisruptionBudget covers it")
    assert images(read_pod(core, "web-00")) == OLD

    forced = rollout(meshctl, "--force")
    assert forced.exit_code == 0, forced.output
    assert results(summary(forced)) == {"web-00": "upgraded"}
    assert images(read_pod(core, "web-00")) == NEW


def test_pods_of_one_controller_without_a_budget_swap_one_after_the_other(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    create_fleet(core, kubelet, [owned(web_pod(i)) for i in range(2)])
    result = rollout(meshctl, "--max-parallel", "2")
    assert result.exit_code == 0, result.output
    assert set(results(summary(result)).values()) == {"upgraded"}
    progress = events_of(result)
    assert most_in_flight(progress) == 1
    assert "the other pod(s) of ReplicaSet" in named(progress, "budget_wait")[0]["reason"]


def test_a_pod_left_mid_swap_by_another_rollout_counts_as_disrupted(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    # web-02 carries another rollout's record, still `upgrading` (that rollout was killed
    # mid-swap): Ready or not, it is disrupted, and the budget's one disruption is taken.
    other = RolloutRecord(id="r-0123456789", image="registry.example/meshctl/proxy:9.9.9",
                          state=PodPhase.UPGRADING, slot="b", from_image=PROXY_OLD,
                          container_id=None, canary=False, time="2026-12-07T08:00:00.000Z")
    mid_swap = web_pod(2)
    mid_swap["metadata"]["annotations"] = {**mid_swap["metadata"].get("annotations", {}),
                                           ROLLOUT: other.encode()}
    fleet = create_fleet(core, kubelet, [web_pod(0), web_pod(1), mid_swap])
    create_budget(core, maxUnavailable=1)

    result = rollout(meshctl, "--timeout", "3")

    assert result.exit_code == 2, result.output
    pods = {p["pod"]: p for p in summary(result)["pods"]}
    assert pods["web-02"]["reason_code"] == "other_rollout"
    assert pods["web-00"]["result"] == "pending"
    assert "has 2 (1 mid-swap): 0 more disruption(s) allowed" in pods["web-00"]["detail"]
    assert [r for r in from_meshctl(api) if r.method == "PATCH"] == []
    assert images(read_pod(core, fleet[0])) == OLD


def test_no_permission_to_list_budgets_is_refused_with_exit_3_before_any_change(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    fleet = create_fleet(core, kubelet, [web_pod(i) for i in range(2)])
    api.add_fault(Fault("GET", "poddisruptionbudgets", 403, times=-1))
    result = rollout(meshctl)
    assert result.exit_code == 3, result.output
    assert one_error_line(result) == (
        f"meshctl: error: forbidden: cannot list poddisruptionbudgets in namespace "
        f"{NAMESPACE} (needs RBAC verb list on poddisruptionbudgets)")
    assert [r for r in from_meshctl(api) if r.method == "PATCH"] == []
    assert all(images(read_pod(core, name)) == OLD for name in fleet)


# ----------------------------------------------------------------- meshctl upgrade --pod


def upgrade_pod(meshctl: Invoke, *args: str) -> Result:
    return meshctl("upgrade", "--pod", "web-00", "--image", PROXY_NEW, *args)


def test_upgrade_pod_refuses_the_only_ready_pod_of_its_controller_without_force(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    create_fleet(core, kubelet, [owned(web_pod(0))])

    refused = upgrade_pod(meshctl, "--timeout", "30")
    assert refused.exit_code == 6, refused.output
    assert one_error_line(refused).startswith(
        f"meshctl: error: pod {NAMESPACE}/web-00 not swapped: the only Ready pod of "
        f"ReplicaSet {NAMESPACE}/web-7d4b9")
    assert [r for r in from_meshctl(api) if r.method != "GET"] == []

    forced = upgrade_pod(meshctl, "--timeout", "30", "--force", "-o", "json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["result"] == "succeeded"
    assert images(read_pod(core, "web-00")) == NEW


def test_upgrade_pod_waits_for_its_budget_then_gives_up_with_exit_4_changing_nothing(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    create_fleet(core, kubelet, [web_pod(0)])
    create_budget(core, minAvailable=1)

    held = upgrade_pod(meshctl, "--timeout", "2")
    assert held.exit_code == 4, held.output
    assert one_error_line(held) == (
        f"meshctl: error: pod {NAMESPACE}/web-00 not swapped: still held after 2s: "
        f"PodDisruptionBudget {NAMESPACE}/web needs 1 healthy pod(s) of 1, has 1 "
        f"(0 mid-swap): 0 more disruption(s) allowed; nothing was changed")
    assert [r for r in from_meshctl(api) if r.method == "PATCH"] == []
    assert images(read_pod(core, "web-00")) == OLD
    assert [(e["involvedObject"]["name"], e["reason"]) for e in events(core)] == [
        ("web-00", "MeshctlUpgradeHeld")]


def test_upgrade_pod_goes_ahead_when_its_budget_allows_it(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    create_fleet(core, kubelet, [web_pod(0), web_pod(1)])
    create_budget(core, maxUnavailable=1)
    done = upgrade_pod(meshctl, "--timeout", "60", "-o", "json")
    assert done.exit_code == 0, done.output
    record = json.loads(done.stdout)
    assert record["result"] == "succeeded"
    allowed = next(s for s in record["steps"] if s["step"] == "disruption_allowed")
    assert allowed["detail"] == (f"may be disrupted: PodDisruptionBudget {NAMESPACE}/web needs 1 "
                                 f"healthy pod(s) of 2, has 2 (0 mid-swap): 1 more "
                                 f"disruption(s) allowed")
