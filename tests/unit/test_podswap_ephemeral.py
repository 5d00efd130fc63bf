"""The ephemeral handover's plan (`meshctl.podswap.ephemeral`): pods in as dicts, the
ephemeral slot's container, the check container, the subresource patch and the verdicts."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from tests.unit.test_images_plan import NEW, OLD, STANDBY, running_pod

from meshctl import errors
from meshctl.podswap import ephemeral
from meshctl.podswap.plan import Outcome

NEWER = "registry.example/meshctl/proxy:1.40.1"


def with_ephemeral(pod: dict[str, Any], name: str, image: str,
                   state: dict[str, Any] | None = None) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["spec"].setdefault("ephemeralContainers", []).append({"name": name, "image": image})
    if state is not None:
        pod["status"].setdefault("ephemeralContainerStatuses", []).append(
            {"name": name, "image": image, "ready": False, "state": state})
    return pod


def test_the_first_ephemeral_slot_is_e1_handed_over_from_the_live_regular_slot() -> None:
    p = ephemeral.plan_ephemeral(running_pod(), NEW)
    assert (p.old_slot, p.new_slot, p.container, p.check_container) == (
        "a", "e1", "meshctl-e1", "meshctl-check-1")
    assert (p.from_image, p.to_image, p.template) == (OLD, NEW, "meshctl-proxy-a")
    assert not p.unchanged


def test_the_next_slot_follows_every_meshctl_ephemeral_container_the_pod_ever_had() -> None:
    pod = with_ephemeral(running_pod(), "meshctl-e1", NEW, {"terminated": {"exitCode": 0}})
    pod = with_ephemeral(pod, "meshctl-check-1", NEW, {"terminated": {"exitCode": 0}})
    pod = with_ephemeral(pod, "debugger-7", "busybox", {"running": {}})
    pod = with_ephemeral(pod, "meshctl-e2", NEWER, {"running": {}})
    pod["metadata"]["annotations"]["meshctl.io/active-slot"] = "e2"
    p = ephemeral.plan_ephemeral(pod, NEW)
    assert (p.old_slot, p.new_slot, p.index, p.from_image) == ("e2", "e3", 3, NEWER)


def test_after_the_active_ephemeral_slot_ended_the_ready_regular_slot_hands_over() -> None:
    pod = with_ephemeral(running_pod(), "meshctl-e1", NEW, {"terminated": {"exitCode": 137}})
    pod["metadata"]["annotations"]["meshctl.io/active-slot"] = "e1"
    p = ephemeral.plan_ephemeral(pod, NEWER)
    assert (p.old_slot, p.new_slot, p.from_image) == ("a", "e2", OLD)
    for s in pod["status"]["containerStatuses"]:
        s["ready"] = s["name"] != "meshctl-proxy-a"
    with pytest.raises(errors.PreflightFailed, match=r"slot a .* is not ready"):
        ephemeral.plan_ephemeral(pod, NEWER)


def test_an_active_ephemeral_slot_the_pod_never_had_is_refused() -> None:
    pod = running_pod()
    pod["metadata"]["annotations"]["meshctl.io/active-slot"] = "e5"
    with pytest.raises(errors.PreflightFailed, match="no ephemeral container meshctl-e5"):
        ephemeral.plan_ephemeral(pod, NEWER)


def test_the_same_image_is_unchanged_and_the_standby_image_is_refused() -> None:
    assert ephemeral.plan_ephemeral(running_pod(), OLD).unchanged
    with pytest.raises(errors.PreflightFailed, match="standby image"):
        ephemeral.plan_ephemeral(running_pod(), STANDBY)


def test_the_slot_container_copies_the_slot_spec_with_its_own_slot_and_no_port() -> None:
    pod = running_pod()
    template = next(c for c in pod["spec"]["containers"] if c["name"] == "meshctl-proxy-a")
    p = ephemeral.plan_ephemeral(pod, NEW)
    c = ephemeral.slot_container(pod, p)
    assert c["name"] == "meshctl-e1" and c["image"] == NEW
    assert c["volumeMounts"] == template["volumeMounts"]
    assert c["securityContext"] == template["securityContext"]
    assert c["args"][c["args"].index("--slot") + 1] == "e1"
    assert c["args"][c["args"].index("--health-address") + 1] == "off"
    assert c["args"][c["args"].index("--state-dir") + 1] == "/var/run/meshctl"
    assert not set(c) & {"ports", "readinessProbe", "livenessProbe", "startupProbe",
                         "resources", "lifecycle"}


def test_the_check_runs_pod_check_in_the_new_image_on_the_pod_dir_only() -> None:
    pod = running_pod()
    p = ephemeral.plan_ephemeral(pod, NEW)
    c = ephemeral.check_container(pod, p, 95.5)
    assert (c["name"], c["image"], c["command"]) == ("meshctl-check-1", NEW,
                                                    ["meshctl", "pod-check"])
    assert c["args"] == ["--slot", "e1", "--state-dir", "/var/run/meshctl", "--timeout", "95.5"]
    assert [m["name"] for m in c["volumeMounts"]] == ["meshctl-state"]
    for container in pod["spec"]["containers"]:
        if container["name"].startswith("meshctl-proxy-"):
            container["args"][container["args"].index("--state-dir") + 1] = "/run/mesh"
    assert ephemeral.check_container(pod, p, 1)["args"][3] == "/run/mesh"


def test_the_patch_adds_the_list_or_appends_to_it_behind_a_test_of_the_last_one() -> None:
    pod = running_pod()
    first = ephemeral.add_patch(pod, {"name": "meshctl-e1"})
    assert first == [{"op": "add", "path": "/spec/ephemeralContainers",
                      "value": [{"name": "meshctl-e1"}]}]
    pod = jsonpatch.apply_patch(pod, first)
    second = ephemeral.add_patch(pod, {"name": "meshctl-check-1"})
    assert second[0] == {"op": "test", "path": "/spec/ephemeralContainers",
                         "value": [{"name": "meshctl-e1"}]}
    after = jsonpatch.apply_patch(pod, second)
    assert [c["name"] for c in after["spec"]["ephemeralContainers"]] == [
        "meshctl-e1", "meshctl-check-1"]
    raced = with_ephemeral(pod, "debugger", "busybox")
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(raced, second)


def test_the_slot_is_done_when_it_runs_and_failed_when_it_ended_or_cannot_start() -> None:
    pod = running_pod()
    p = ephemeral.plan_ephemeral(pod, NEW)
    assert ephemeral.slot_progress(pod, p).outcome is Outcome.WAITING
    pulling = with_ephemeral(pod, "meshctl-e1", NEW, {"waiting": {"reason": "ErrImagePull"}})
    assert ephemeral.slot_progress(pulling, p).outcome is Outcome.WAITING
    bad = with_ephemeral(pod, "meshctl-e1", NEW, {"waiting": {"reason": "InvalidImageName"}})
    assert ephemeral.slot_progress(bad, p).outcome is Outcome.FAILED
    ended = with_ephemeral(pod, "meshctl-e1", NEW, {"terminated": {"exitCode": 9}})
    assert "exited with code 9" in ephemeral.slot_progress(ended, p).detail
    running = with_ephemeral(pod, "meshctl-e1", NEW, {"running": {}})
    assert ephemeral.slot_progress(running, p).outcome is Outcome.DONE


def test_the_verdict_is_the_check_containers_exit_code_with_its_message() -> None:
    pod = with_ephemeral(running_pod(), "meshctl-e1", NEW, {"running": {}})
    p = ephemeral.plan_ephemeral(running_pod(), NEW)
    assert ephemeral.check_progress(pod, p).outcome is Outcome.WAITING
    done = with_ephemeral(pod, "meshctl-check-1", NEW, {"terminated": {
        "exitCode": 0, "message": "done: epoch 1 in slot e1 is LIVE"}})
    assert ephemeral.check_progress(done, p).detail == "done: epoch 1 in slot e1 is LIVE"
    failed = with_ephemeral(pod, "meshctl-check-1", NEW, {"terminated": {
        "exitCode": 8, "message": "failed:\n epoch 1 never became LIVE"}})
    verdict = ephemeral.check_progress(failed, p)
    assert verdict.outcome is Outcome.FAILED
    assert verdict.detail == ("meshctl-check-1 exited with code 8: failed: epoch 1 never "
                              "became LIVE")


def test_a_slot_that_ended_before_its_check_ran_is_the_verdict() -> None:
    p = ephemeral.plan_ephemeral(running_pod(), NEW)
    ended = with_ephemeral(running_pod(), "meshctl-e1", NEW, {"terminated": {"exitCode": 9}})
    assert ephemeral.check_progress(ended, p).outcome is Outcome.FAILED
    checking = with_ephemeral(ended, "meshctl-check-1", NEW, {"running": {}})
    assert ephemeral.check_progress(checking, p).outcome is Outcome.WAITING
