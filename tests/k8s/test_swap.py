"""`meshctl upgrade --pod`: the in-pod image swap against kmock's API server over real HTTP,
with the real `kubernetes` client inside meshctl and a fake kubelet playing the node."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client as k8s
from kubesim.apiserver import ApiServer, Fault
from kubesim.kubelet import FakeKubelet, FakeRuntime
from typer.testing import Result

from meshctl.exitcodes import ExitCode
from tests.k8s.conftest import (
    CRASHES,
    KUBELET_AGENT,
    NAMESPACE,
    NEVER_READY,
    POD,
    PROXY_NEW,
    PROXY_OLD,
    STANDBY,
    Invoke,
    app_pod,
    create_pod,
    events,
    from_meshctl,
    images,
    json_patches,
    read_pod,
)

A, B = "meshctl-proxy-a", "meshctl-proxy-b"
STEPS = ["started", "standby_patched", "new_slot_ready", "handover_confirmed",
         "old_slot_standby"]


def upgrade(meshctl: Invoke, *args: str, image: str = PROXY_NEW, timeout: str = "10") -> Result:
    return meshctl("upgrade", "--pod", POD, "--image", image, "--timeout", timeout, *args)


def one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("meshctl: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def last_upgrade(pod: dict[str, Any]) -> dict[str, Any]:
    return json.loads(pod["metadata"]["annotations"]["meshctl.io/last-upgrade"])  # type: ignore[no-any-return]


# ----------------------------------------------------------------- the swap


def test_an_upgrade_starts_the_new_image_in_the_standby_slot_and_returns_the_old_to_standby(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, runtime: FakeRuntime,
    running_pod: dict[str, Any]
) -> None:
    result = upgrade(meshctl, "-o", "json")

    assert result.exit_code == ExitCode.OK, result.output
    pod = read_pod(core)
    assert images(pod) == {A: STANDBY, B: PROXY_NEW, "web": "nginx:1.27"}
    assert runtime.running(POD) == {A: STANDBY, B: PROXY_NEW, "web": "nginx:1.27"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["meshctl.io/active-slot"] == "b"
    assert annotations["meshctl.io/proxy-image"] == PROXY_NEW
    assert annotations["meshctl.io/standby-image"] == STANDBY
    assert last_upgrade(pod) | {"time": None} == {
        "from": PROXY_OLD, "to": PROXY_NEW, "from_slot": "a", "to_slot": "b",
        "result": "succeeded", "time": None}
    record = json.loads(result.stdout)
    assert record["result"] == "succeeded"
    assert [s["step"] for s in record["steps"]] == STEPS
    assert record["api_requests"] == len(from_meshctl(api))


def test_every_step_is_an_event_on_the_pod(
    meshctl: Invoke, core: k8s.CoreV1Api, running_pod: dict[str, Any]
) -> None:
    assert upgrade(meshctl).exit_code == ExitCode.OK
    recorded = events(core)
    assert [e["reason"] for e in recorded] == [
        "MeshctlUpgradeStarted", "StandbyPatched", "NewSlotReady", "HandoverConfirmed",
        "OldSlotStandby"]
    assert all(e["involvedObject"]["name"] == POD and e["involvedObject"]["kind"] == "Pod"
               and e["type"] == "Normal" for e in recorded)
    assert PROXY_NEW in recorded[0]["message"]
    assert recorded[1]["involvedObject"]["fieldPath"] == f"spec.containers{{{B}}}"
    assert recorded[4]["involvedObject"]["fieldPath"] == f"spec.containers{{{A}}}"


def test_the_image_patches_test_both_slots_before_changing_one(
    meshctl: Invoke, api: ApiServer, running_pod: dict[str, Any]
) -> None:
    assert upgrade(meshctl).exit_code == ExitCode.OK
    start, retire = json_patches(api)
    guards = [
        {"op": "test", "path": "/spec/containers/0/name", "value": A},
        {"op": "test", "path": "/spec/containers/0/image", "value": PROXY_OLD},
        {"op": "test", "path": "/spec/containers/1/name", "value": B},
    ]
    assert start[:5] == [*guards,
                         {"op": "test", "path": "/spec/containers/1/image", "value": STANDBY},
                         {"op": "replace", "path": "/spec/containers/1/image",
                          "value": PROXY_NEW}]
    assert retire[:5] == [*guards,
                          {"op": "test", "path": "/spec/containers/1/image", "value": PROXY_NEW},
                          {"op": "replace", "path": "/spec/containers/0/image",
                           "value": STANDBY}]
    # The annotations switch in the same (atomic) patch that retires the old slot.
    assert {"op": "add", "path": "/metadata/annotations/meshctl.io~1active-slot",
            "value": "b"} in retire


def test_a_second_upgrade_goes_back_into_slot_a(
    meshctl: Invoke, core: k8s.CoreV1Api, running_pod: dict[str, Any]
) -> None:
    assert upgrade(meshctl).exit_code == ExitCode.OK
    result = upgrade(meshctl, image=PROXY_OLD)
    assert result.exit_code == ExitCode.OK, result.output
    pod = read_pod(core)
    assert images(pod) == {A: PROXY_OLD, B: STANDBY, "web": "nginx:1.27"}
    assert pod["metadata"]["annotations"]["meshctl.io/active-slot"] == "a"


def test_native_sidecar_slots_are_swapped_in_the_init_containers(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    create_pod(core, kubelet, app_pod(native_sidecars=True))
    result = upgrade(meshctl)
    assert result.exit_code == ExitCode.OK, result.output
    assert images(read_pod(core)) == {A: STANDBY, B: PROXY_NEW, "web": "nginx:1.27"}
    start = json_patches(api)[0]
    assert {"op": "replace", "path": "/spec/initContainers/1/image", "value": PROXY_NEW} in start


def test_upgrading_to_the_image_already_serving_changes_nothing(
    meshctl: Invoke, api: ApiServer, running_pod: dict[str, Any]
) -> None:
    result = upgrade(meshctl, image=PROXY_OLD)
    assert result.exit_code == ExitCode.OK, result.output
    assert "unchanged" in result.stdout
    assert [r.method for r in from_meshctl(api)] == ["GET"]


# ----------------------------------------------------------------- rollback


def test_a_new_image_that_never_becomes_ready_is_rolled_back_and_the_old_slot_keeps_serving(
    meshctl: Invoke, core: k8s.CoreV1Api, runtime: FakeRuntime, running_pod: dict[str, Any]
) -> None:
    result = upgrade(meshctl, image=NEVER_READY, timeout="1")

    assert result.exit_code == ExitCode.ROLLED_BACK == 8, result.output
    assert "rolled_back" in result.stdout
    assert "not ready within 1s" in result.stdout
    pod = read_pod(core)
    assert images(pod) == {A: PROXY_OLD, B: STANDBY, "web": "nginx:1.27"}
    assert pod["metadata"]["annotations"]["meshctl.io/active-slot"] == "a"
    assert last_upgrade(pod)["result"] == "rolled_back"
    assert "not ready within 1s" in last_upgrade(pod)["reason"]
    rolled_back = [e for e in events(core) if e["reason"] == "RolledBack"]
    assert len(rolled_back) == 1 and rolled_back[0]["type"] == "Warning"
    assert runtime.running(POD)[A] == PROXY_OLD


def test_a_crash_looping_image_is_rolled_back_with_the_crash_loop_as_the_reason(
    meshctl: Invoke, core: k8s.CoreV1Api, running_pod: dict[str, Any]
) -> None:
    result = upgrade(meshctl, "-o", "json", image=CRASHES, timeout="1.5")

    assert result.exit_code == ExitCode.ROLLED_BACK, result.output
    record = json.loads(result.stdout)
    assert record["result"] == "rolled_back"
    assert "CrashLoopBackOff" in record["error"]
    assert record["steps"][-1]["step"] == "rolled_back"
    assert images(read_pod(core)) == {A: PROXY_OLD, B: STANDBY, "web": "nginx:1.27"}


# ----------------------------------------------------------------- a concurrent change


def test_a_change_between_read_and_patch_fails_the_patch_test_and_the_swap_replans(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, running_pod: dict[str, Any]
) -> None:
    newer_standby = "ghcr.io/meshctl/standby:0.1.1"
    # Someone else moves the standby slot to a newer standby image, after meshctl's read.
    api.interleave(POD, [
        {"op": "replace", "path": "/spec/containers/1/image", "value": newer_standby},
        {"op": "add", "path": "/metadata/annotations/meshctl.io~1standby-image",
         "value": newer_standby},
    ])
    result = upgrade(meshctl)

    assert result.exit_code == ExitCode.OK, result.output
    assert "changed since it was read; re-reading" in result.stderr
    first, second, _retire = json_patches(api)
    assert {"op": "test", "path": "/spec/containers/1/image", "value": STANDBY} in first
    assert {"op": "test", "path": "/spec/containers/1/image", "value": newer_standby} in second
    # The old slot now stands by on the standby image the re-plan found.
    assert images(read_pod(core)) == {A: newer_standby, B: PROXY_NEW, "web": "nginx:1.27"}


# ----------------------------------------------------------------- API errors


def test_a_missing_pod_is_one_clear_line_and_a_preflight_exit(meshctl: Invoke) -> None:
    result = meshctl("upgrade", "--pod", "nope", "--image", PROXY_NEW)
    assert result.exit_code == ExitCode.PREFLIGHT
    assert one_error_line(result) == f"meshctl: error: pod {NAMESPACE}/nope not found"


def test_a_forbidden_patch_names_the_missing_permission_and_changes_nothing(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, running_pod: dict[str, Any]
) -> None:
    api.add_fault(Fault("PATCH", "pods", 403, name=POD, times=-1))
    result = upgrade(meshctl)

    assert result.exit_code == ExitCode.PREFLIGHT
    assert one_error_line(result) == (
        f"meshctl: error: forbidden: cannot patch pods in namespace {NAMESPACE} "
        f"(needs RBAC verb patch on pods)")
    assert images(read_pod(core)) == {A: PROXY_OLD, B: STANDBY, "web": "nginx:1.27"}
    assert [e["reason"] for e in events(core)] == ["MeshctlUpgradeStarted",
                                                   "MeshctlUpgradeFailed"]


def test_a_forbidden_read_names_the_missing_permission(
    meshctl: Invoke, api: ApiServer, running_pod: dict[str, Any]
) -> None:
    api.add_fault(Fault("GET", "pods", 403, name=POD))
    result = upgrade(meshctl)
    assert result.exit_code == ExitCode.PREFLIGHT
    assert one_error_line(result) == (
        f"meshctl: error: forbidden: cannot get pods in namespace {NAMESPACE} "
        f"(needs RBAC verb get on pods)")


def test_an_unavailable_api_server_is_retried_with_backoff(
    meshctl: Invoke, api: ApiServer, running_pod: dict[str, Any]
) -> None:
    api.add_fault(Fault("GET", "pods", 503, name=POD, times=2))
    result = upgrade(meshctl, "-o", "json")
    assert result.exit_code == ExitCode.OK, result.output
    gets = [r for r in from_meshctl(api) if r.method == "GET" and r.name == POD
            and "watch" not in r.query]
    assert len(gets) >= 3  # two refused, then the read; later the handover's read
    assert json.loads(result.stdout)["api_requests"] == len(from_meshctl(api))


def test_an_api_server_that_stays_unavailable_is_one_line_after_the_retries(
    meshctl: Invoke, api: ApiServer, running_pod: dict[str, Any]
) -> None:
    api.add_fault(Fault("GET", "pods", 503, name=POD, times=-1))
    result = upgrade(meshctl)
    assert result.exit_code == ExitCode.FAILED
    assert "after 4 attempts: HTTP 503" in one_error_line(result)
    assert len(from_meshctl(api)) == 4


def test_an_api_failure_while_the_new_slot_starts_rolls_back_then_is_one_line(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, running_pod: dict[str, Any]
) -> None:
    api.add_fault(Fault("GET", "pods", 503, watch=True, times=-1, spare_agents=(KUBELET_AGENT,)))
    result = upgrade(meshctl)
    assert result.exit_code == ExitCode.FAILED
    assert "did not watch pod shop/web-0 after 4 attempts" in one_error_line(result)
    pod = read_pod(core)
    assert images(pod) == {A: PROXY_OLD, B: STANDBY, "web": "nginx:1.27"}
    assert last_upgrade(pod)["result"] == "rolled_back"
    assert last_upgrade(pod)["reason"].startswith("API error: the API server did not watch")


def test_forbidden_events_do_not_stop_the_upgrade(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, running_pod: dict[str, Any]
) -> None:
    api.add_fault(Fault("POST", "events", 403, times=-1))
    result = upgrade(meshctl)
    assert result.exit_code == ExitCode.OK, result.output
    warnings = [line for line in result.stderr.splitlines() if "no Events" in line]
    assert warnings == ["warning: no Events will be recorded: forbidden: cannot create events "
                        f"in namespace {NAMESPACE} (needs RBAC verb create on events)"]
    assert images(read_pod(core))[B] == PROXY_NEW


# ----------------------------------------------------------------- refused before any change


def test_a_dry_run_prints_the_plan_and_the_patches_and_changes_nothing(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, running_pod: dict[str, Any]
) -> None:
    before = read_pod(core)
    result = upgrade(meshctl, "--dry-run", "-o", "json")

    assert result.exit_code == ExitCode.OK, result.output
    record = json.loads(result.stdout)
    assert record["result"] == "dry_run"
    assert record["plan"]["new_slot"] == "b"
    assert set(record["patches"]) == {"start", "retire", "rollback"}
    assert {"op": "replace", "path": "/spec/containers/1/image",
            "value": PROXY_NEW} in record["patches"]["start"]
    assert [r.method for r in from_meshctl(api)] == ["GET"]
    assert read_pod(core)["spec"] == before["spec"]
    assert events(core) == []


def test_a_pod_without_the_proxy_slots_is_refused_in_preflight(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    create_pod(core, kubelet, {"metadata": {"name": POD, "namespace": NAMESPACE},
                               "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
    result = upgrade(meshctl)
    assert result.exit_code == ExitCode.PREFLIGHT
    assert "has no meshctl proxy slots" in one_error_line(result)


def test_a_malformed_image_is_refused_before_connecting(meshctl: Invoke, api: ApiServer) -> None:
    result = upgrade(meshctl, image="Proxy:1.40.0")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "bad image reference 'Proxy:1.40.0'" in one_error_line(result)
    assert from_meshctl(api) == []


def test_a_kubeconfig_that_cannot_be_read_is_one_line(meshctl: Invoke) -> None:
    result = meshctl("upgrade", "--pod", POD, "--image", PROXY_NEW, "--context", "nowhere")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "cannot load the kubeconfig" in one_error_line(result)
