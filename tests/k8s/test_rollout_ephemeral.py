"""`meshctl rollout --handover ephemeral` over real HTTP against kubesim (the real `kubernetes`
client inside meshctl, the fake kubelet and its fake runtime): every pod's new image in an
ephemeral slot, in batches, the pods' Ready condition untouched, a failed check rolled back,
an interrupted rollout continued by the same command.

The check container's verdict is simulated, as in test_swap_ephemeral_api.py: a
`meshctl-check-<N>` container exits with the code chosen for its pod (`meshctl pod-check`
runs for real in test_swap_ephemeral.py). What is under test is the rollout's reading of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from kubernetes import client as k8s
from kubesim.apiserver import ApiServer, Fault, LeanApiServer
from kubesim.kubelet import FakeImage, FakeKubelet
from typer.testing import Result

from tests.k8s.conftest import (
    IMAGES,
    PROXY_NEW,
    PROXY_OLD,
    Invoke,
    events,
    from_meshctl,
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
from tests.k8s.rollout_fixtures import record_of as maybe_record

A, B = "meshctl-proxy-a", "meshctl-proxy-b"


class VerdictFleet(FleetRuntime):
    """The fleet's runtime, where each pod's check container exits with the code `verdicts`
    gives its pod (0 unless told), `check_s` after its start."""

    def __init__(self) -> None:
        super().__init__(IMAGES)
        self.verdicts: dict[str, int] = {}
        self.check_s = 0.1

    def start(self, pod: Mapping[str, Any], container_name: str, image: str,
              args: Sequence[str]) -> str:
        cid = super().start(pod, container_name, image, args)
        if container_name.startswith("meshctl-check-"):
            code = self.verdicts.get(str(pod["metadata"]["name"]), 0)
            self.containers[cid].behaviour = FakeImage(ready_after_s=None,
                                                       exit_after_s=self.check_s,
                                                       exit_code=code)
        return cid


@pytest.fixture
def api() -> Iterator[ApiServer]:
    server = LeanApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def runtime() -> VerdictFleet:
    return VerdictFleet()


@pytest.fixture
def fleet(core: k8s.CoreV1Api, kubelet: FakeKubelet) -> list[str]:
    """Four injected pods `web-00`..`web-03` (app=web), Ready, slot a serving PROXY_OLD."""
    return create_fleet(core, kubelet, [web_pod(i) for i in range(4)])


def rollout(meshctl: Invoke, *args: str) -> Result:
    return meshctl("rollout", "--selector", SELECTOR, "--image", PROXY_NEW, "--handover",
                   "ephemeral", "--canary", "0", "--max-parallel", "2", "-o", "json", *args)


def record_of(pod: Mapping[str, Any]) -> dict[str, Any]:
    record = maybe_record(pod)
    assert record is not None
    return record


def ready_condition(pod: Mapping[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")


def restarts(pod: Mapping[str, Any]) -> dict[str, int]:
    return {c["name"]: c["restartCount"] for c in pod["status"]["containerStatuses"]}


def ephemeral_names(pod: Mapping[str, Any]) -> list[str]:
    return [c["name"] for c in pod["spec"].get("ephemeralContainers") or []]


def test_four_pods_two_at_a_time_all_end_served_by_an_ephemeral_slot_and_stay_ready(
        meshctl: Invoke, core: k8s.CoreV1Api, fleet: list[str]) -> None:
    before = {name: read_pod(core, name) for name in fleet}
    result = rollout(meshctl, "--events", "all")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["result"] == "succeeded"
    assert report["rollout"]["handover"] == "ephemeral"
    assert report["counts"]["upgraded"] == 4
    assert [b["pods"] for b in report["batches"]] == [
        ["shop/web-00", "shop/web-01"], ["shop/web-02", "shop/web-03"]]
    for p in report["pods"]:
        assert (p["result"], p["handover"], p["from_slot"], p["to_slot"], p["serving_slot"]) \
            == ("upgraded", "ephemeral", "a", "e1", "e1"), p
        assert p["not_ready"]["ready_flips"] == 0
        assert p["api_requests"] == 5  # record, slot, check, verdict; the Event (--events all)
    for name in fleet:
        pod = read_pod(core, name)
        annotations = pod["metadata"]["annotations"]
        assert annotations["meshctl.io/active-slot"] == "e1"
        assert annotations["meshctl.io/proxy-image"] == PROXY_NEW
        assert record_of(pod) == record_of(pod) | {"state": "upgraded", "slot": "e1",
                                                   "check": "meshctl-check-1"}
        assert ephemeral_names(pod) == ["meshctl-e1", "meshctl-check-1"]
        # The Ready condition as the API server records it never moved; nothing restarted.
        assert ready_condition(pod) == ready_condition(before[name])
        assert restarts(pod) == restarts(before[name])
        assert pod["spec"]["containers"] == before[name]["spec"]["containers"]
    progress = events_of(result)
    started = named(progress, "pod_started")
    assert {(e["pod"], e["slot"], e["handover"]) for e in started} == {
        (name, "e1", "ephemeral") for name in fleet}
    assert not named(progress, "budget_wait")
    assert len(named(progress, "pod_upgraded")) == 4


def test_a_pod_whose_check_fails_is_rolled_back_and_the_rollout_exits_1(
        meshctl: Invoke, core: k8s.CoreV1Api, runtime: VerdictFleet, fleet: list[str]) -> None:
    runtime.verdicts["web-02"] = 8  # pod-check: the new generation failed
    result = rollout(meshctl, "--max-failures", "2")

    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["result"] == "failed"
    outcome = {p["pod"]: p for p in report["pods"]}
    assert {name: p["result"] for name, p in outcome.items()} == {
        "web-00": "upgraded", "web-01": "upgraded", "web-02": "rolled_back",
        "web-03": "upgraded"}
    failed = outcome["web-02"]
    assert failed["serving_slot"] == "a"
    assert "meshctl-check-1 exited with code 8" in failed["detail"]
    assert failed["not_ready"]["ready_flips"] == 0
    pod = read_pod(core, "web-02")
    assert pod["metadata"]["annotations"]["meshctl.io/active-slot"] == "a"
    assert record_of(pod)["state"] == "rolled_back"
    assert [e["reason"] for e in events(core)
            if e["involvedObject"]["name"] == "web-02"] == ["MeshctlRolloutRolledBack"]

    again = rollout(meshctl, "--max-failures", "2")  # a failed pod stays failed
    assert again.exit_code == 1, again.output
    assert json.loads(again.stdout)["counts"] | {"selected": 4} == {
        "selected": 4, "upgraded": 0, "already_upgraded": 3, "rolled_back": 1,
        "incomplete": 0, "failed": 0, "interrupted": 0, "skipped": 0, "gone": 0, "pending": 0}


def test_a_rollout_stopped_mid_handover_is_finished_by_the_same_command(
        meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, runtime: VerdictFleet,
        fleet: list[str]) -> None:
    runtime.check_s = 4.0  # the checks outlive the first run's deadline
    stopped = rollout(meshctl, "--max-parallel", "4", "--timeout", "1.5")

    assert stopped.exit_code == 2, stopped.output
    report = json.loads(stopped.stdout)
    assert report["result"] == "deadline_exceeded"
    assert report["counts"]["interrupted"] == 4
    for name in fleet:  # nothing set back: the handover goes on in the pod, recorded
        pod = read_pod(core, name)
        assert record_of(pod) == record_of(pod) | {"state": "upgrading", "slot": "e1",
                                                   "check": "meshctl-check-1"}
        assert pod["metadata"]["annotations"]["meshctl.io/active-slot"] == "a"

    before = len(from_meshctl(api))
    finished = rollout(meshctl, "--max-parallel", "4", "--timeout", "30")
    assert finished.exit_code == 0, finished.output
    again = json.loads(finished.stdout)
    assert [b["kind"] for b in again["batches"]] == ["resume"]
    assert all(p["resumed"] and p["result"] == "upgraded" and p["to_slot"] == "e1"
               for p in again["pods"])
    # Followed, not started again: one patch each (the verdict), no container added.
    sent = [r for r in from_meshctl(api)[before:] if r.method == "PATCH"]
    assert sorted(str(r.name) for r in sent) == fleet
    assert all(r.subresource is None for r in sent)
    for name in fleet:
        pod = read_pod(core, name)
        assert ephemeral_names(pod) == ["meshctl-e1", "meshctl-check-1"]
        assert pod["metadata"]["annotations"]["meshctl.io/active-slot"] == "e1"
        assert record_of(pod)["state"] == "upgraded"


def test_a_two_slot_rollout_continues_a_handover_its_ephemeral_run_left_and_skips_e_slots(
        meshctl: Invoke, core: k8s.CoreV1Api, runtime: VerdictFleet, fleet: list[str]) -> None:
    runtime.check_s = 3.0
    stopped = rollout(meshctl, "--max-parallel", "4", "--timeout", "1")
    assert stopped.exit_code == 2, stopped.output

    # The same rollout (same selector and image) without --handover: the records say e1.
    result = meshctl("rollout", "--selector", SELECTOR, "--image", PROXY_NEW, "--canary", "0",
                     "--timeout", "30", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["upgraded"] == 4
    assert all(read_pod(core, n)["metadata"]["annotations"]["meshctl.io/active-slot"] == "e1"
               for n in fleet)
    other = meshctl("rollout", "--selector", SELECTOR, "--image", PROXY_OLD, "--canary", "0",
                    "--timeout", "30", "-o", "json")
    assert other.exit_code == 0, other.output
    assert {p["reason_code"] for p in json.loads(other.stdout)["pods"]} == {"preflight"}
    assert "runs in ephemeral slot e1" in other.stdout


def test_force_does_not_apply_with_the_ephemeral_handover(meshctl: Invoke) -> None:
    result = rollout(meshctl, "--force")
    assert result.exit_code == 3
    assert "--force does not apply with --handover ephemeral" in result.stderr



def test_a_dry_run_prints_each_pod_s_record_containers_and_verdict_patches_only(
        meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, fleet: list[str]) -> None:
    result = rollout(meshctl, "--dry-run")

    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    first = plan["pods"][0]
    assert (first["from_slot"], first["to_slot"]) == ("a", "e1")
    assert set(first["patches"]) == {"record", "start", "check", "done", "rolled_back"}
    assert first["patches"]["start"][0]["value"][0]["name"] == "meshctl-e1"
    assert first["patches"]["check"]["command"] == ["meshctl", "pod-check"]
    assert {r.method for r in from_meshctl(api)} == {"GET"}
    assert all("ephemeralContainers" not in read_pod(core, n)["spec"] for n in fleet)


def test_no_permission_to_add_ephemeral_containers_is_refused_and_leaves_the_pods_as_they_were(
        meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, fleet: list[str]) -> None:
    before = {name: read_pod(core, name)["metadata"]["annotations"] for name in fleet}
    api.add_fault(Fault("PATCH", "pods", 403, subresource="ephemeralcontainers", times=-1))
    result = rollout(meshctl)

    assert result.exit_code == 3, result.output
    assert "pods/ephemeralcontainers" in result.stderr
    assert "Traceback" not in result.output
    for name in fleet:  # the record written before the add was undone
        pod = read_pod(core, name)
        assert pod["metadata"]["annotations"] == before[name]
        assert ephemeral_names(pod) == []
