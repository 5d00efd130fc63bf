"""`meshctl upgrade --pod --handover ephemeral` against the kmock API server over real HTTP (the
real `kubernetes` client inside meshctl), with the fake kubelet running the pod's containers as
real processes: `meshctl run --slot a|e1|e2` with real Envoy, `meshctl standby`, and the check
container's `meshctl pod-check`; traffic through the pod's proxy all along. What is asserted
about readiness is the pod's Ready condition as the API server records it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubesim.apiserver import ApiServer

from meshctl.exitcodes import ExitCode
from meshctl.manager import operations
from tests.integration.conftest import Ports, envoy_config
from tests.integration.test_failures import Traffic
from tests.k8s.conftest import (
    POD,
    PROXY_NEW,
    PROXY_OLD,
    STANDBY,
    Invoke,
    from_meshctl,
    images,
    read_pod,
)
from tests.k8s.process_runtime import CRASHING, ProcessRuntime, real_pod

pytestmark = pytest.mark.envoy

PROXY_NEWER = "registry.example/meshctl/proxy:1.40.0-r2"


@pytest.fixture
def ports() -> Ports:
    return Ports()


@pytest.fixture
def runtime(ports: Ports, envoy_old: Path, envoy_new: Path) -> Iterator[ProcessRuntime]:
    with real_pod(POD, lambda path: envoy_config(path, ports), envoy_old, envoy_new,
                  {PROXY_OLD: envoy_old, PROXY_NEW: envoy_new, PROXY_NEWER: envoy_new, }, STANDBY,
                  "mce-") as runtime:
        yield runtime


def upgrade(meshctl: Invoke, image: str) -> Any:
    result = meshctl("upgrade", "--pod", POD, "--image", image, "--handover", "ephemeral",
                     "--timeout", "90", "--output", "json")
    return result, json.loads(result.stdout) if result.stdout.strip() else {}


def ready_condition(pod: dict[str, Any]) -> tuple[str, str]:
    cond = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    return cond["status"], cond["lastTransitionTime"]


def statuses(pod: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in pod["status"].get(key, [])}


def slot_status(runtime: ProcessRuntime, slot: str) -> dict[str, Any]:
    return dict(operations.status(runtime.pod_dir(POD) / f"slot-{slot}"))


def wait_terminated(core: k8s.CoreV1Api, name: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = statuses(read_pod(core), "ephemeralContainerStatuses").get(name, {})
        if "terminated" in status.get("state", {}):
            return status["state"]["terminated"]  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise TimeoutError(f"{name} did not exit within {timeout_s}s")


def test_two_ephemeral_handovers_in_a_row_keep_the_pod_ready_and_lose_no_request(
        running_pod: dict[str, Any], meshctl: Invoke, core: k8s.CoreV1Api, api: ApiServer,
        runtime: ProcessRuntime, ports: Ports) -> None:
    before = ready_condition(read_pod(core))
    assert before[0] == "True"

    with Traffic(ports.http) as traffic:
        first, record1 = upgrade(meshctl, PROXY_NEW)
        on_e1 = slot_status(runtime, "e1")
        second, record2 = upgrade(meshctl, PROXY_NEWER)
        on_e2 = slot_status(runtime, "e2")
        # The idle ephemeral slot's supervisor exits (0): nothing would restart it.
        e1_exit = wait_terminated(core, "meshctl-e1")

    assert first.exit_code == ExitCode.OK, first.output
    assert second.exit_code == ExitCode.OK, second.output
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert {"0", "1", "2"} <= set(traffic.stats.by_epoch), traffic.stats.to_json()
    # The Ready condition, as the API server holds it, never moved; nor did meshctl, which
    # watched every change, see it flip.
    pod = read_pod(core)
    assert ready_condition(pod) == before
    for record in (record1, record2):
        assert record["not_ready"]["ready_flips"] == 0, record["not_ready"]
        assert record["not_ready"]["not_ready_s"] == 0.0
    assert (record1["old_slot"], record1["new_slot"]) == ("a", "e1")
    assert (record2["old_slot"], record2["new_slot"]) == ("e1", "e2")
    assert [s["step"] for s in record2["steps"]] == [
        "started", "slot_added", "slot_running", "check_added", "handover_confirmed"]
    assert (on_e1["live"]["epoch"], on_e1["live"]["version"]) == (1, "1.40.0")
    assert on_e2["live"]["epoch"] == 2
    # No regular container restarted; slot a is the idle supervisor it became.
    regular = statuses(pod, "containerStatuses")
    assert all(s["restartCount"] == 0 for s in regular.values()), regular
    assert images(pod)["meshctl-proxy-a"] == PROXY_OLD
    assert slot_status(runtime, "a")["phase"] == "idle"
    ephemeral = statuses(pod, "ephemeralContainerStatuses")
    assert e1_exit["exitCode"] == 0
    assert ephemeral["meshctl-check-1"]["state"]["terminated"]["exitCode"] == 0
    assert ephemeral["meshctl-check-2"]["state"]["terminated"]["exitCode"] == 0
    assert "running" in ephemeral["meshctl-e2"]["state"]
    assert pod["metadata"]["annotations"]["meshctl.io/active-slot"] == "e2"
    assert pod["metadata"]["annotations"]["meshctl.io/proxy-image"] == PROXY_NEWER
    adds = [r for r in from_meshctl(api) if r.subresource == "ephemeralcontainers"]
    assert [r.method for r in adds] == ["PATCH"] * 4


def test_a_crashing_image_is_judged_failed_by_the_check_and_the_old_slot_still_serves(
        running_pod: dict[str, Any], meshctl: Invoke, core: k8s.CoreV1Api,
        runtime: ProcessRuntime, ports: Ports) -> None:
    before = ready_condition(read_pod(core))

    with Traffic(ports.http) as traffic:
        failed, record = upgrade(meshctl, CRASHING)
        # Slot a repairs the hot restart the crashed generation wedged (Trap 1), then the
        # next handover works.
        then, _ = upgrade(meshctl, PROXY_NEW)

    assert failed.exit_code == ExitCode.ROLLED_BACK, failed.output
    assert record["result"] == "rolled_back"
    assert "keeps serving" in record["steps"][-1]["detail"], record["steps"]
    assert then.exit_code == ExitCode.OK, then.output
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    pod = read_pod(core)
    assert ready_condition(pod) == before
    ephemeral = statuses(pod, "ephemeralContainerStatuses")
    assert ephemeral["meshctl-e1"]["state"]["terminated"]["exitCode"] == ExitCode.START_FAILED
    assert pod["metadata"]["annotations"]["meshctl.io/active-slot"] == "e2"


def test_after_the_ephemeral_slot_died_slot_a_serves_again_and_the_next_handover_is_from_it(
        running_pod: dict[str, Any], meshctl: Invoke, core: k8s.CoreV1Api,
        runtime: ProcessRuntime, ports: Ports) -> None:
    first, _ = upgrade(meshctl, PROXY_NEW)
    assert first.exit_code == ExitCode.OK, first.output
    live = slot_status(runtime, "e1")["live"]
    supervisor = next(p for p in runtime.procs.values()
                      if "e1" in p.popen.args and "run" in p.popen.args)  # type: ignore[operator]
    for pid in (supervisor.popen.pid, live["keeper_pid"], live["pid"]):  # the container's end
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_terminated(core, "meshctl-e1")
    deadline = time.monotonic() + 30
    while slot_status(runtime, "a")["phase"] != "running" and time.monotonic() < deadline:
        time.sleep(0.2)

    with Traffic(ports.http) as traffic:
        again, record = upgrade(meshctl, PROXY_NEWER)

    assert again.exit_code == ExitCode.OK, again.output
    assert (record["old_slot"], record["new_slot"]) == ("a", "e2")
    assert record["not_ready"]["ready_flips"] == 0
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert read_pod(core)["metadata"]["annotations"]["meshctl.io/active-slot"] == "e2"
