"""The swap plan (`meshctl.podswap.plan`): pods in as dicts, pre-flight, patches, progress."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from meshctl import errors
from meshctl.podswap import plan
from meshctl.podswap.inject import InjectOptions, inject_object
from meshctl.podswap.plan import Outcome

OLD = "registry.example/meshctl/proxy:1.39.3"
NEW = "registry.example/meshctl/proxy:1.40.0"
STANDBY = "ghcr.io/meshctl/standby:0.1.0"
A, B = "meshctl-proxy-a", "meshctl-proxy-b"


def status(name: str, image: str, cid: str, *, ready: bool = True, started: bool = True,
           **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "containerID": f"containerd://{cid}",
            "ready": ready, "started": started, "restartCount": 0,
            "state": {"running": {}}, **extra}


def running_pod(native: bool = False) -> dict[str, Any]:
    pod, _ = inject_object({"kind": "Pod", "metadata": {"name": "web-0", "namespace": "shop"},
                            "spec": {"containers": [{"name": "web", "image": "nginx"}]}},
                           InjectOptions(image=OLD, native_sidecars=native))
    pod["metadata"]["generation"] = 1
    slots = [status(A, OLD, "a1"), status(B, STANDBY, "b1")]
    web = status("web", "docker.io/library/nginx:latest", "w")
    pod["status"] = {"observedGeneration": 1, "containerStatuses": [web]}
    if native:
        pod["status"]["initContainerStatuses"] = slots
    else:
        pod["status"]["containerStatuses"] += slots
    return pod


def slot_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for key in ("containerStatuses", "initContainerStatuses"):
        for s in pod["status"].get(key, []):
            if s["name"] == name:
                return s  # type: ignore[no-any-return]
    raise KeyError(name)


def set_image(pod: dict[str, Any], name: str, image: str) -> None:
    for c in pod["spec"]["containers"]:
        if c["name"] == name:
            c["image"] = image


# ----------------------------------------------------------------- reading the pod


def test_the_slots_are_found_by_name_with_their_json_pointers() -> None:
    view = plan.pod_view(running_pod())
    assert view.slots["a"].pointer == "/spec/containers/0"
    assert view.slots["b"].pointer == "/spec/containers/1"
    assert view.slots["a"].container_id == "containerd://a1"
    assert not view.native_sidecars


def test_native_sidecar_slots_are_found_in_the_init_containers() -> None:
    view = plan.pod_view(running_pod(native=True))
    assert view.native_sidecars
    assert view.slots["b"].pointer == "/spec/initContainers/1"
    assert view.slots["b"].ready


@pytest.mark.parametrize(("change", "reason"), [
    (lambda p: p["spec"].update(containers=p["spec"]["containers"][2:]),
     "has no meshctl proxy slots"),
    (lambda p: p["spec"].update(containers=p["spec"]["containers"][1:]),
     "has no container meshctl-proxy-a"),
])
def test_a_pod_without_both_slots_fails_preflight(change: Any, reason: str) -> None:
    pod = running_pod()
    change(pod)
    with pytest.raises(errors.PreflightFailed, match=reason):
        plan.pod_view(pod)


# ----------------------------------------------------------------- pre-flight


def test_the_plan_starts_the_new_image_in_the_standby_slot() -> None:
    swap = plan.plan_swap(plan.pod_view(running_pod()), NEW)
    assert (swap.old_slot, swap.new_slot) == ("a", "b")
    assert (swap.from_image, swap.to_image, swap.standby_image) == (OLD, NEW, STANDBY)
    assert swap.new_container_id == "containerd://b1"
    assert not swap.unchanged


def test_the_active_slot_annotation_decides_which_slot_is_live() -> None:
    pod = running_pod()
    set_image(pod, A, STANDBY)
    set_image(pod, B, OLD)
    slot_status(pod, A)["image"], slot_status(pod, B)["image"] = STANDBY, OLD
    pod["metadata"]["annotations"]["meshctl.io/active-slot"] = "b"
    swap = plan.plan_swap(plan.pod_view(pod), NEW)
    assert (swap.old_slot, swap.new_slot) == ("b", "a")


def test_without_annotations_the_slot_on_the_standby_image_stands_by() -> None:
    pod = running_pod()
    del pod["metadata"]["annotations"]
    swap = plan.plan_swap(plan.pod_view(pod), NEW)
    assert (swap.old_slot, swap.new_slot) == ("a", "b")


def test_upgrading_to_the_running_image_is_an_unchanged_plan() -> None:
    assert plan.plan_swap(plan.pod_view(running_pod()), OLD).unchanged


@pytest.mark.parametrize(("change", "reason"), [
    (lambda p: set_image(p, B, OLD), "both slots run registry.example/meshctl/proxy:1.39.3"),
    (lambda p: p["metadata"]["annotations"].update({"meshctl.io/active-slot": "c"}),
     "annotation meshctl.io/active-slot is 'c', not a or b"),
    (lambda p: p["metadata"]["annotations"].update({"meshctl.io/active-slot": "b"}),
     "the active slot b \\(meshctl-proxy-b\\) runs the standby image"),
    (lambda p: slot_status(p, A).update(ready=False),
     "slot a \\(meshctl-proxy-a\\) is not ready; nothing serves"),
    (lambda p: slot_status(p, A).update(image="registry.example/meshctl/proxy:1.38.0"),
     "slot a \\(meshctl-proxy-a\\) is changing image"),
    (lambda p: slot_status(p, B).update(image="ghcr.io/meshctl/standby:0.0.9"),
     "slot b \\(meshctl-proxy-b\\) is changing image .* another upgrade may be in progress"),
    (lambda p: set_image(p, B, "ghcr.io/meshctl/standby:0.0.9"),
     "the standby slot b \\(meshctl-proxy-b\\) runs ghcr.io/meshctl/standby:0.0.9, not the "
     "standby image"),
])
def test_preflight_refuses_with_the_reason_in_one_line(change: Any, reason: str) -> None:
    pod = running_pod()
    change(pod)
    with pytest.raises(errors.PreflightFailed, match=reason) as caught:
        plan.plan_swap(plan.pod_view(pod), NEW)
    assert "\n" not in str(caught.value)


def test_preflight_refuses_a_malformed_image_and_the_standby_image() -> None:
    view = plan.pod_view(running_pod())
    with pytest.raises(errors.PreflightFailed, match="bad image reference"):
        plan.plan_swap(view, "Registry/Proxy::1")
    with pytest.raises(errors.PreflightFailed, match="is the standby image"):
        plan.plan_swap(view, STANDBY)


# ----------------------------------------------------------------- patches


def test_the_start_patch_tests_both_slots_then_replaces_the_standby_image() -> None:
    swap = plan.plan_swap(plan.pod_view(running_pod()), NEW)
    assert plan.start_patch(swap) == [
        {"op": "test", "path": "/spec/containers/0/name", "value": A},
        {"op": "test", "path": "/spec/containers/0/image", "value": OLD},
        {"op": "test", "path": "/spec/containers/1/name", "value": B},
        {"op": "test", "path": "/spec/containers/1/image", "value": STANDBY},
        {"op": "replace", "path": "/spec/containers/1/image", "value": NEW},
    ]


def test_the_patches_apply_in_turn_and_fail_on_a_changed_pod() -> None:
    pod = running_pod()
    swap = plan.plan_swap(plan.pod_view(pod), NEW)
    started = jsonpatch.apply_patch(pod, plan.start_patch(swap))
    assert [c["image"] for c in started["spec"]["containers"][:2]] == [OLD, NEW]
    retired = jsonpatch.apply_patch(started, plan.retire_patch(swap))
    assert [c["image"] for c in retired["spec"]["containers"][:2]] == [STANDBY, NEW]
    rolled_back = jsonpatch.apply_patch(started, plan.rollback_patch(swap))
    assert [c["image"] for c in rolled_back["spec"]["containers"][:2]] == [OLD, STANDBY]
    # The start patch again, on the pod it already changed: a test fails.
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(started, plan.start_patch(swap))


def test_reordered_containers_fail_the_name_tests() -> None:
    pod = running_pod()
    swap = plan.plan_swap(plan.pod_view(pod), NEW)
    reordered = copy.deepcopy(pod)
    reordered["spec"]["containers"].reverse()
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(reordered, plan.start_patch(swap))


def test_native_sidecar_patches_point_into_the_init_containers() -> None:
    swap = plan.plan_swap(plan.pod_view(running_pod(native=True)), NEW)
    assert plan.start_patch(swap)[-1] == {"op": "replace", "path": "/spec/initContainers/1/image",
                                          "value": NEW}


def test_annotation_keys_are_escaped_and_a_missing_map_is_added_whole() -> None:
    assert plan.annotations_patch({}, {"meshctl.io/active-slot": "b"}) == [
        {"op": "add", "path": "/metadata/annotations/meshctl.io~1active-slot", "value": "b"}]
    assert plan.annotations_patch(None, {"meshctl.io/active-slot": "b"}) == [
        {"op": "add", "path": "/metadata/annotations", "value": {"meshctl.io/active-slot": "b"}}]
    pod = {"metadata": {}}
    assert jsonpatch.apply_patch(pod, plan.annotations_patch(None, {"a/b~c": "1"})) == {
        "metadata": {"annotations": {"a/b~c": "1"}}}
    assert jsonpatch.apply_patch({"metadata": {"annotations": {}}}, plan.annotations_patch(
        {}, {"a/b~c": "1"})) == {"metadata": {"annotations": {"a/b~c": "1"}}}


def test_the_last_upgrade_annotation_is_compact_json() -> None:
    swap = plan.plan_swap(plan.pod_view(running_pod()), NEW)
    text = plan.last_upgrade(swap, "rolled_back", "2026-01-01T00:00:00Z", reason="timeout")
    assert json.loads(text) == {"from": OLD, "to": NEW, "from_slot": "a", "to_slot": "b",
                                "result": "rolled_back", "time": "2026-01-01T00:00:00Z",
                                "reason": "timeout"}
    assert " " not in text.replace("rolled_back", "")


# ----------------------------------------------------------------- progress


def started_pod() -> tuple[dict[str, Any], plan.SwapPlan]:
    pod = running_pod()
    swap = plan.plan_swap(plan.pod_view(pod), NEW)
    pod = jsonpatch.apply_patch(pod, plan.start_patch(swap))
    pod["metadata"]["generation"] = 2
    return pod, swap


def test_the_new_slot_is_done_only_in_a_new_started_ready_container() -> None:
    pod, swap = started_pod()
    progress = plan.new_slot_progress(plan.pod_view(pod), swap, 2)
    assert progress.outcome is Outcome.WAITING
    assert "not seen generation 2" in progress.detail

    pod["status"]["observedGeneration"] = 2
    assert "waiting for the kubelet" in plan.new_slot_progress(
        plan.pod_view(pod), swap, 2).detail

    slot_status(pod, B).update(containerID="containerd://b2", image=NEW, ready=False)
    assert "started, not ready yet" in plan.new_slot_progress(plan.pod_view(pod), swap, 2).detail

    slot_status(pod, B).update(ready=True)
    assert plan.new_slot_progress(plan.pod_view(pod), swap, 2).outcome is Outcome.DONE


def test_a_server_without_observed_generation_is_not_waited_for() -> None:
    pod, swap = started_pod()
    del pod["status"]["observedGeneration"]
    slot_status(pod, B).update(containerID="containerd://b2", image=NEW)
    assert plan.new_slot_progress(plan.pod_view(pod), swap, 2).outcome is Outcome.DONE


def test_a_crash_loop_is_waited_for_and_described() -> None:
    pod, swap = started_pod()
    slot_status(pod, B).update(
        containerID="containerd://b3", image=NEW, ready=False, started=False, restartCount=3,
        state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        lastState={"terminated": {"exitCode": 1, "reason": "Error"}})
    progress = plan.new_slot_progress(plan.pod_view(pod), swap, None)
    assert progress.outcome is Outcome.WAITING
    assert progress.detail == ("slot b (meshctl-proxy-b): CrashLoopBackOff: back-off 40s "
                               "(restarted 3 times, last exit code 1 (Error))")


def test_an_invalid_image_name_fails_at_once() -> None:
    pod, swap = started_pod()
    slot_status(pod, B).update(containerID="containerd://b2", image=NEW, ready=False,
                               started=False, state={"waiting": {"reason": "InvalidImageName"}})
    assert plan.new_slot_progress(plan.pod_view(pod), swap, None).outcome is Outcome.FAILED


def test_someone_elses_image_in_the_new_slot_fails_the_wait() -> None:
    pod, swap = started_pod()
    set_image(pod, B, "registry.example/other:1")
    progress = plan.new_slot_progress(plan.pod_view(pod), swap, None)
    assert progress.outcome is Outcome.FAILED
    assert "changed to registry.example/other:1 by someone else" in progress.detail


def test_the_old_slot_stands_by_in_a_new_container() -> None:
    pod, swap = started_pod()
    pod = jsonpatch.apply_patch(pod, plan.retire_patch(swap))
    assert plan.old_slot_progress(plan.pod_view(pod), swap).outcome is Outcome.WAITING
    slot_status(pod, A).update(containerID="containerd://a2", image=STANDBY, ready=False)
    waiting = plan.old_slot_progress(plan.pod_view(pod), swap)
    assert waiting.outcome is Outcome.WAITING  # the pod is NotReady until the standby is ready
    assert "standing by, not ready yet" in waiting.detail
    slot_status(pod, A).update(ready=True)
    assert plan.old_slot_progress(plan.pod_view(pod), swap).outcome is Outcome.DONE


def test_a_pod_settles_when_every_slot_runs_its_spec_image() -> None:
    pod = running_pod()
    assert plan.settled(plan.pod_view(pod))
    set_image(pod, B, "ghcr.io/meshctl/standby:0.1.1")
    assert not plan.settled(plan.pod_view(pod))
