"""The pre-pull of the two-slot swap (`meshctl.podswap.prepull`): the ephemeral container that
puts the new image on the node, and when the image is there."""

from __future__ import annotations

from typing import Any

from tests.unit.test_images_plan import NEW, running_pod

from meshctl.podswap import plan, prepull
from meshctl.podswap.plan import Outcome


def with_pull(state: dict[str, Any] | None, name: str = "meshctl-pull-1") -> dict[str, Any]:
    pod = running_pod()
    pod["spec"]["ephemeralContainers"] = [{"name": name, "image": NEW}]
    if state is not None:
        pod["status"]["ephemeralContainerStatuses"] = [{"name": name, "state": state}]
    return pod


def test_the_pull_container_runs_a_no_op_in_the_new_image_as_the_slot_would() -> None:
    pod = running_pod()
    swap = plan.plan_swap(plan.pod_view(pod), NEW)
    container = prepull.pull_container(pod, swap, "meshctl-pull-1")
    assert container["image"] == NEW and container["command"] == ["meshctl", "version"]
    assert container["securityContext"]["runAsUser"] == 1337
    assert "readinessProbe" not in container  # the API refuses probes in ephemeral containers
    assert prepull.pull_patch(pod, container) == [
        {"op": "add", "path": "/spec/ephemeralContainers", "value": [container]}]


def test_each_pull_has_a_name_of_its_own() -> None:
    assert prepull.pull_name(running_pod()) == "meshctl-pull-1"
    assert prepull.pull_name(with_pull(None, "meshctl-pull-4")) == "meshctl-pull-5"


def test_the_image_is_on_the_node_once_the_container_runs_or_ran() -> None:
    def outcome(state: dict[str, Any] | None) -> Outcome:
        return prepull.pull_progress(with_pull(state), "meshctl-pull-1", NEW).outcome

    assert outcome(None) is Outcome.WAITING
    assert outcome({"waiting": {"reason": "ContainerCreating"}}) is Outcome.WAITING
    assert outcome({"waiting": {"reason": "ImagePullBackOff"}}) is Outcome.WAITING
    assert outcome({"running": {}}) is Outcome.DONE
    assert outcome({"terminated": {"exitCode": 0}}) is Outcome.DONE
    assert outcome({"terminated": {"exitCode": 127}}) is Outcome.DONE  # pulled all the same
    assert outcome({"waiting": {"reason": "CreateContainerError"}}) is Outcome.DONE
    refused = prepull.pull_progress(with_pull({"waiting": {"reason": "InvalidImageName"}}),
                                    "meshctl-pull-1", NEW)
    assert refused.outcome is Outcome.FAILED and "cannot be pulled" in refused.detail
