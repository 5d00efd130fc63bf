"""The pod simulator's kubelet follows the real kubelet's readiness rules (`kubesim.readiness`
says where each lives in the kubelet): tested through the API server over HTTP, as meshctl
sees a pod, with the fake runtime's images standing for the processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubesim.apiserver import ApiServer
from kubesim.kubelet import FakeImage, FakeKubelet, FakeRuntime

from tests.k8s.conftest import NAMESPACE, read_pod

SLOW_START = "registry.example/app:slow-start"
NEVER_READY = "registry.example/app:never-ready"
BIG = "registry.example/app:big"
QUICK = "registry.example/app:quick"
EXITS = "registry.example/tools:true"


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime({
        SLOW_START: FakeImage(ready_after_s=1.5),
        NEVER_READY: FakeImage(ready_after_s=None),
        BIG: FakeImage(ready_after_s=0.0, pull_s=1.5),
        QUICK: FakeImage(ready_after_s=0.0),
        EXITS: FakeImage(ready_after_s=None, exit_after_s=0.0, exit_code=0),
    })


@pytest.fixture
def kubelet(api: ApiServer, runtime: FakeRuntime) -> Iterator[FakeKubelet]:
    """The kubelet as it comes: a PLEG relist every second (not the conftest's evented one)."""
    configuration = k8s.Configuration()
    configuration.host = api.url
    client = k8s.ApiClient(configuration)
    node = FakeKubelet(client, NAMESPACE, runtime)
    assert node.relist_s == 1.0
    node.start()
    try:
        yield node
    finally:
        try:
            node.stop()
        finally:
            client.close()


def pod(name: str, *containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"containers": list(containers), **spec}}


def container(name: str, image: str = QUICK, **probe: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "image": image}
    if probe:
        spec["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 8080}, **probe}
    return spec


def ready_condition(p: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in p["status"]["conditions"] if c["type"] == "Ready")


def status_of(p: dict[str, Any], name: str) -> dict[str, Any]:
    statuses = [*p["status"].get("initContainerStatuses", []),
                *p["status"].get("containerStatuses", []),
                *p["status"].get("ephemeralContainerStatuses", [])]
    return next(s for s in statuses if s["name"] == name)


class Timeline:
    """The pod's Ready condition read through the API every 50 ms: (seconds since the start,
    status)."""

    def __init__(self, core: k8s.CoreV1Api, name: str) -> None:
        self.core, self.name, self.t0 = core, name, time.monotonic()
        self.points: list[tuple[float, bool]] = []

    def until(self, ready: bool, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            p = read_pod(self.core, self.name)
            if p.get("status", {}).get("conditions"):
                now = ready_condition(p)["status"] == "True"
                self.points.append((time.monotonic() - self.t0, now))
                if now is ready:
                    return self.points[-1][0]
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: Ready never {ready} within {timeout_s}s: "
                             f"{self.points[-3:]}")

    def stays(self, ready: bool, for_s: float) -> None:
        end = time.monotonic() + for_s
        while time.monotonic() < end:
            p = read_pod(self.core, self.name)
            if p.get("status", {}).get("conditions"):
                assert (ready_condition(p)["status"] == "True") is ready, p["status"]
            time.sleep(0.1)


def test_without_a_readiness_probe_a_container_is_ready_once_running(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("plain", container("app", NEVER_READY)))
    # NEVER_READY would fail any probe: with none, running is enough.
    assert Timeline(core, "plain").until(True, 3) < 2.0


def test_a_container_not_running_yet_is_not_ready(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("pulling", container("app", BIG)))
    timeline = Timeline(core, "pulling")
    timeline.until(False, 3)
    waiting = status_of(read_pod(core, "pulling"), "app")
    assert waiting["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert waiting["ready"] is False and waiting["started"] is False
    assert timeline.until(True, 5) >= 1.5  # the pull, then running


def test_with_a_readiness_probe_a_container_is_ready_only_once_a_probe_passes(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("probed", container("app", SLOW_START,
                                                                  periodSeconds=1)))
    timeline = Timeline(core, "probed")
    became = timeline.until(True, 6)
    assert 1.5 <= became < 3.5  # ready at 1.5 s; seen by the first probe after it
    assert any(not ready for _, ready in timeline.points)


def test_no_probe_passes_within_the_initial_delay(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("delayed", container(
        "app", QUICK, periodSeconds=1, initialDelaySeconds=3)))
    assert Timeline(core, "delayed").until(True, 7) >= 3.0


def test_a_container_is_ready_only_after_success_threshold_passes_in_a_row(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("thresholds", container(
        "app", QUICK, periodSeconds=1, successThreshold=3)))
    # Three passes: the first (at once or on a tick) and two more, a period apart.
    assert Timeline(core, "thresholds").until(True, 7) >= 2.0


def test_a_restarted_container_starts_not_ready_and_flips_the_pod(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("restarted", container(
        "app", QUICK, periodSeconds=1), container("other", QUICK)))
    timeline = Timeline(core, "restarted")
    timeline.until(True, 5)
    before = read_pod(core, "restarted")
    core.patch_namespaced_pod("restarted", NAMESPACE, [
        {"op": "replace", "path": "/spec/containers/0/image", "value": SLOW_START}])
    timeline.until(False, 3)
    timeline.until(True, 6)
    after = read_pod(core, "restarted")
    assert status_of(after, "app")["restartCount"] == 1
    assert status_of(after, "app")["containerID"] != status_of(before, "app")["containerID"]
    assert status_of(after, "other")["restartCount"] == 0  # only that container restarted


def test_a_native_sidecar_counts_for_the_pods_readiness(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    sidecar = {**container("proxy", NEVER_READY, periodSeconds=1), "restartPolicy": "Always"}
    core.create_namespaced_pod(NAMESPACE, pod("sidecar", container("app"),
                                              initContainers=[sidecar]))
    timeline = Timeline(core, "sidecar")
    timeline.until(False, 3)
    timeline.stays(False, 2.0)
    p = read_pod(core, "sidecar")
    assert status_of(p, "app")["ready"] is True
    assert ready_condition(p)["message"] == "containers with unready status: [proxy]"


def test_classic_init_and_ephemeral_containers_never_count(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, pod(
        "others", container("app"),
        initContainers=[{"name": "setup", "image": EXITS}],
        ephemeralContainers=[{"name": "debug", "image": NEVER_READY},
                             {"name": "prepull", "image": EXITS}]))
    timeline = Timeline(core, "others")
    timeline.until(True, 3)
    timeline.stays(True, 1.5)
    p = read_pod(core, "others")
    assert status_of(p, "debug")["ready"] is False
    assert status_of(p, "prepull")["state"]["terminated"]["exitCode"] == 0


def test_the_pod_is_ready_only_once_every_readiness_gate_is_true(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, pod(
        "gated", container("app"), readinessGates=[{"conditionType": "lb.example/ready"}]))
    timeline = Timeline(core, "gated")
    timeline.until(False, 3)
    timeline.stays(False, 1.0)
    assert ready_condition(read_pod(core, "gated"))["reason"] == "ReadinessGatesNotReady"
    core.patch_namespaced_pod_status("gated", NAMESPACE, {"status": {"conditions": [
        *read_pod(core, "gated")["status"]["conditions"],
        {"type": "lb.example/ready", "status": "True"}]}},
        _content_type="application/merge-patch+json")
    timeline.until(True, 3)
    conditions = read_pod(core, "gated")["status"]["conditions"]
    assert {"type": "lb.example/ready", "status": "True"} in conditions


def test_the_ready_conditions_transition_time_moves_only_when_its_status_changes(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("stamped", container(
        "app", QUICK, periodSeconds=1), container("other", QUICK)))
    timeline = Timeline(core, "stamped")
    timeline.until(True, 5)
    first = ready_condition(read_pod(core, "stamped"))["lastTransitionTime"]
    time.sleep(1.1)
    # Another container's restart changes the status, not the Ready condition's... until it
    # makes the pod NotReady: only then does the time move.
    core.patch_namespaced_pod("stamped", NAMESPACE, [
        {"op": "replace", "path": "/spec/containers/1/image", "value": BIG}])
    timeline.until(False, 3)
    down = ready_condition(read_pod(core, "stamped"))["lastTransitionTime"]
    assert down > first
    timeline.until(True, 6)
    up = read_pod(core, "stamped")
    assert ready_condition(up)["lastTransitionTime"] >= down
    assert status_of(up, "other")["restartCount"] == 1


def test_a_container_start_reaches_the_status_at_the_next_relist_not_at_once(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("relisted", container("app", periodSeconds=1)))
    timeline = Timeline(core, "relisted")
    timeline.until(True, 3)
    core.patch_namespaced_pod("relisted", NAMESPACE, [
        {"op": "replace", "path": "/spec/containers/0/image", "value": SLOW_START}])
    patched = time.monotonic()
    timeline.points.clear()
    timeline.until(False, 3)
    # The old container's status holds until a relist sees the new one (0 to 1 s later).
    assert time.monotonic() - patched <= 1.3
    assert status_of(read_pod(core, "relisted"), "app")["image"] == SLOW_START


def test_an_image_an_ephemeral_container_pulled_starts_a_restarted_container_without_a_pull(
        core: k8s.CoreV1Api, kubelet: FakeKubelet, runtime: FakeRuntime) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("prepulled", container("app", QUICK,
                                                                     periodSeconds=1)))
    timeline = Timeline(core, "prepulled")
    timeline.until(True, 3)
    # The pre-pull: an ephemeral container of the new image (it never counts for readiness).
    core.patch_namespaced_pod("prepulled", NAMESPACE, [{"op": "add", "path":
        "/spec/ephemeralContainers", "value": [{"name": "prepull", "image": BIG}]}])
    time.sleep(1.6)  # its pull
    assert BIG in runtime.pulled
    timeline.stays(True, 0.5)
    core.patch_namespaced_pod("prepulled", NAMESPACE, [
        {"op": "replace", "path": "/spec/containers/0/image", "value": BIG}])
    patched = time.monotonic()
    while time.monotonic() - patched < 3:
        app = status_of(read_pod(core, "prepulled"), "app")
        if app["image"] == BIG and app["ready"] and app["restartCount"] == 1:
            break
        time.sleep(0.02)
    # A relist and a probe (its NotReady may be one status write, too short to poll), not the
    # 1.5 s pull.
    assert time.monotonic() - patched < 1.4
    assert status_of(read_pod(core, "prepulled"), "prepull")["ready"] is False


def test_with_a_startup_probe_a_container_is_not_started_until_it_passes(
        core: k8s.CoreV1Api, kubelet: FakeKubelet) -> None:
    app = {**container("app", SLOW_START), "startupProbe": {
        "httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1,
        "failureThreshold": 30}}
    core.create_namespaced_pod(NAMESPACE, pod("starting", app))
    timeline = Timeline(core, "starting")
    deadline = time.monotonic() + 3
    early: dict[str, Any] = {"state": {}}
    while "running" not in early["state"] and time.monotonic() < deadline:
        p = read_pod(core, "starting")
        early = status_of(p, "app") if p.get("status") else early
        time.sleep(0.05)
    assert "running" in early["state"] and early["started"] is False  # running, not started
    assert early["ready"] is False
    # No readiness probe: ready as soon as started, which the startup probe decides (1.5 s).
    assert timeline.until(True, 5) >= 1.5
    assert status_of(read_pod(core, "starting"), "app")["started"] is True
