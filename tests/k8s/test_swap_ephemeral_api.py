"""`meshctl upgrade --pod --handover ephemeral` over real HTTP against kmock, with the fake
kubelet and its fake runtime: what the CLI sends and refuses, and the simulator's
`ephemeralcontainers` subresource (validated as the real API server does). The handover itself,
with real supervisors and Envoy: tests/k8s/test_swap_ephemeral.py."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from kubernetes import client as k8s
from kubesim.apiserver import ApiServer, Fault
from kubesim.kubelet import FakeImage, FakeRuntime

from meshctl.exitcodes import ExitCode
from meshctl.kube import CoreV1
from tests.k8s.conftest import (
    APP_IMAGE,
    IMAGES,
    NAMESPACE,
    POD,
    PROXY_NEW,
    Invoke,
    events,
    from_meshctl,
    read_pod,
)
from tests.k8s.test_swap import one_error_line

PULLS_FOREVER = "registry.example/meshctl/proxy:pulls-forever"


class VerdictRuntime(FakeRuntime):
    """The fake runtime, where a check container (`meshctl-check-<N>`) exits after 0.1 s with
    `verdict`: what `meshctl pod-check` would say (it runs for real in test_swap_ephemeral.py).
    What is under test here is the CLI's reading of it."""

    verdict = 0

    def start(self, pod: Mapping[str, Any], container_name: str, image: str,
              args: Sequence[str]) -> str:
        cid = super().start(pod, container_name, image, args)
        if container_name.startswith("meshctl-check-"):
            self.containers[cid].behaviour = FakeImage(ready_after_s=None, exit_after_s=0.1,
                                                       exit_code=self.verdict)
        return cid


@pytest.fixture
def runtime() -> VerdictRuntime:
    return VerdictRuntime({**IMAGES, PULLS_FOREVER: FakeImage(pull_s=3600)}, default=APP_IMAGE)


def annotations(core: k8s.CoreV1Api) -> dict[str, str]:
    return read_pod(core)["metadata"]["annotations"]  # type: ignore[no-any-return]


def test_a_zero_from_the_check_is_success_and_switches_the_active_slot(
        meshctl: Invoke, core: k8s.CoreV1Api, running_pod: dict[str, Any]) -> None:
    result = upgrade(meshctl, "-o", "json")

    assert result.exit_code == ExitCode.OK, result.output
    record = json.loads(result.stdout)
    assert record["result"] == "succeeded"
    assert record["not_ready"]["ready_flips"] == 0
    assert annotations(core)["meshctl.io/active-slot"] == "e1"
    assert json.loads(annotations(core)["meshctl.io/last-upgrade"])["handover"] == "ephemeral"
    assert [e["reason"] for e in events(core)] == [
        "MeshctlUpgradeStarted", "EphemeralSlotAdded", "EphemeralSlotRunning",
        "HandoverConfirmed"]


@pytest.mark.parametrize(("verdict", "code", "result"), [
    (8, ExitCode.ROLLED_BACK, "rolled_back"), (10, ExitCode.TIMEOUT, "incomplete"),
    (1, ExitCode.TIMEOUT, "incomplete")])
def test_a_failing_check_leaves_the_old_slot_active_and_says_what_is_known(
        meshctl: Invoke, core: k8s.CoreV1Api, runtime: VerdictRuntime,
        running_pod: dict[str, Any], verdict: int, code: ExitCode, result: str) -> None:
    runtime.verdict = verdict
    done = upgrade(meshctl, "-o", "json")

    assert done.exit_code == code, done.output
    record = json.loads(done.stdout)
    assert record["result"] == result
    assert f"meshctl-check-1 exited with code {verdict}" in record["error"]
    assert annotations(core)["meshctl.io/active-slot"] == "a"
    if verdict == 8:
        assert json.loads(annotations(core)["meshctl.io/last-upgrade"])["result"] == result


def test_an_image_still_pulling_at_the_timeout_is_incomplete_and_changes_no_annotation(
        meshctl: Invoke, core: k8s.CoreV1Api, running_pod: dict[str, Any]) -> None:
    done = meshctl("upgrade", "--pod", POD, "--image", PULLS_FOREVER, "--handover",
                   "ephemeral", "--timeout", "2", "-o", "json")

    assert done.exit_code == ExitCode.TIMEOUT, done.output
    record = json.loads(done.stdout)
    assert record["result"] == "incomplete"
    assert "not confirmed within 2s" in record["error"]
    assert annotations(core)["meshctl.io/active-slot"] == "a"


def upgrade(meshctl: Invoke, *args: str) -> Any:
    return meshctl("upgrade", "--pod", POD, "--image", PROXY_NEW, "--handover", "ephemeral",
                   "--timeout", "10", *args)


def add(core: k8s.CoreV1Api, patch: list[dict[str, Any]]) -> None:
    """A JSON patch through the subresource, as the test's own client (not meshctl's `Kube`)."""
    CoreV1(core.api_client).patch_namespaced_pod_ephemeralcontainers(POD, NAMESPACE, patch)


def test_a_dry_run_prints_both_ephemeral_containers_and_changes_nothing(
        meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api,
        running_pod: dict[str, Any]) -> None:
    result = upgrade(meshctl, "--dry-run", "-o", "json")

    assert result.exit_code == ExitCode.OK, result.output
    record = json.loads(result.stdout)
    assert (record["result"], record["old_slot"], record["new_slot"]) == ("dry_run", "a", "e1")
    start = record["patches"]["start"]
    assert start[0]["path"] == "/spec/ephemeralContainers"
    assert start[0]["value"][0]["name"] == "meshctl-e1"
    assert record["patches"]["check"]["command"] == ["meshctl", "pod-check"]
    assert [r.method for r in from_meshctl(api)] == ["GET"]
    assert "ephemeralContainers" not in read_pod(core)["spec"]


def test_a_forbidden_subresource_names_the_missing_permission_and_changes_nothing(
        meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api,
        running_pod: dict[str, Any]) -> None:
    api.add_fault(Fault("PATCH", "pods", 403, name=POD, times=-1))
    result = upgrade(meshctl)

    assert result.exit_code == ExitCode.PREFLIGHT
    assert one_error_line(result) == (
        f"meshctl: error: forbidden: cannot patch pods/ephemeralcontainers in namespace "
        f"{NAMESPACE} (needs RBAC verb patch on pods/ephemeralcontainers)")
    pod = read_pod(core)
    assert "ephemeralContainers" not in pod["spec"]
    assert "meshctl.io/last-upgrade" not in pod["metadata"]["annotations"]
    assert [e["reason"] for e in events(core)] == ["MeshctlUpgradeStarted",
                                                   "MeshctlUpgradeFailed"]


def test_a_cluster_without_the_subresource_is_told_to_use_two_slot_and_nothing_changes(
        meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api,
        running_pod: dict[str, Any]) -> None:
    api.add_fault(Fault("PATCH", "pods", 404, name=POD, times=-1))
    result = upgrade(meshctl)

    assert result.exit_code == ExitCode.PREFLIGHT
    assert one_error_line(result) == (
        f"meshctl: error: pod {NAMESPACE}/{POD}: the API server does not serve "
        f"pods/ephemeralcontainers (Kubernetes before 1.23, or the feature off); use "
        f"--handover two-slot")
    assert "ephemeralContainers" not in read_pod(core)["spec"]


def test_a_rollout_skips_a_pod_served_by_an_ephemeral_slot_and_says_why(
        meshctl: Invoke, core: k8s.CoreV1Api, running_pod: dict[str, Any]) -> None:
    core.patch_namespaced_pod(POD, NAMESPACE, {"metadata": {"annotations": {
        "meshctl.io/active-slot": "e3"}}})
    result = meshctl("rollout", "--selector", "app=web", "-n", NAMESPACE, "--image",
                     PROXY_NEW, "--timeout", "10", "-o", "json")

    assert result.exit_code == 0, result.output  # a skipped pod is not a failure
    assert "Traceback" not in result.output
    assert "runs in ephemeral slot e3" in result.output, result.output
    assert "ephemeralContainers" not in read_pod(core)["spec"]


def test_a_two_slot_upgrade_of_a_pod_served_by_an_ephemeral_slot_is_refused_in_one_line(
        meshctl: Invoke, core: k8s.CoreV1Api, running_pod: dict[str, Any]) -> None:
    core.patch_namespaced_pod(POD, NAMESPACE, {"metadata": {"annotations": {
        "meshctl.io/active-slot": "e3"}}})
    result = meshctl("upgrade", "--pod", POD, "--image", PROXY_NEW, "--timeout", "10")

    assert result.exit_code == ExitCode.PREFLIGHT
    assert "runs in ephemeral slot e3" in one_error_line(result)


@pytest.mark.parametrize("field", ["ports", "readinessProbe", "resources"])
def test_the_api_server_refuses_an_ephemeral_container_with_what_none_may_have(
        core: k8s.CoreV1Api, running_pod: dict[str, Any], field: str) -> None:
    container = {"name": "dbg", "image": "busybox", field: {} if field != "ports" else []}
    with pytest.raises(k8s.ApiException) as refused:
        add(core, [{"op": "add", "path": "/spec/ephemeralContainers", "value": [container]}])
    assert refused.value.status == 422
    assert f"{field}: Forbidden" in str(refused.value.body)


def test_the_api_server_refuses_changes_beyond_adding_ephemeral_containers(
        core: k8s.CoreV1Api, running_pod: dict[str, Any]) -> None:
    add(core, [{"op": "add", "path": "/spec/ephemeralContainers",
                "value": [{"name": "dbg", "image": "busybox"}]}])
    for patch in (
            [{"op": "replace", "path": "/spec/containers/0/image", "value": "evil"}],
            [{"op": "replace", "path": "/spec/ephemeralContainers/0/image", "value": "evil"}],
            [{"op": "add", "path": "/spec/ephemeralContainers/-",
              "value": {"name": "dbg", "image": "busybox"}}]):
        with pytest.raises(k8s.ApiException) as refused:
            add(core, patch)
        assert refused.value.status == 422, patch
    assert [c["name"] for c in read_pod(core)["spec"]["ephemeralContainers"]] == ["dbg"]


def test_the_kubelet_runs_an_added_ephemeral_container_and_never_counts_it(
        core: k8s.CoreV1Api, running_pod: dict[str, Any]) -> None:
    before = next(c for c in running_pod["status"]["conditions"] if c["type"] == "Ready")
    add(core, [{"op": "add", "path": "/spec/ephemeralContainers",
                "value": [{"name": "dbg", "image": "busybox"}]}])
    for _ in range(100):
        pod = read_pod(core)
        status = pod["status"].get("ephemeralContainerStatuses") or []
        if status and "running" in status[0]["state"]:
            break
        time.sleep(0.05)
    assert status[0]["ready"] is False
    assert next(c for c in pod["status"]["conditions"] if c["type"] == "Ready") == before
