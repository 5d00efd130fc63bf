"""`meshctl upgrade --pod --prepull`: the new image pulled onto the node in an ephemeral
container before the standby slot restarts, so that the pull is not NotReady time (kubesim's
fake runtime models the pull)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s
from kubesim.kubelet import FakeImage, FakeRuntime

from meshctl.exitcodes import ExitCode
from tests.k8s.conftest import APP_IMAGE, IMAGES, POD, PROXY_NEW, Invoke, read_pod

PULL_S = 1.5


@pytest.fixture
def runtime() -> FakeRuntime:
    runtime = FakeRuntime({**IMAGES, PROXY_NEW: FakeImage(ready_after_s=0.0, pull_s=PULL_S)},
                          default=APP_IMAGE)
    for image in IMAGES:
        runtime.pull(image)
    return runtime


def upgrade(meshctl: Invoke, *args: str) -> dict[str, Any]:
    result = meshctl("upgrade", "--pod", POD, "--image", PROXY_NEW, "--timeout", "10",
                     "-o", "json", *args)
    assert result.exit_code == ExitCode.OK, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_pulled_image_is_not_time_the_pod_is_not_ready(
    meshctl: Invoke, core: k8s.CoreV1Api, running_pod: dict[str, Any]
) -> None:
    record = upgrade(meshctl, "--prepull")

    steps = [s["step"] for s in record["steps"]]
    assert steps.index("image_pulled") < steps.index("standby_patched")
    pulled = next(s for s in record["steps"] if s["step"] == "image_pulled")
    assert pulled["elapsed_s"] >= PULL_S
    assert record["not_ready"]["ready_flips"] == 2
    assert record["not_ready"]["not_ready_s"] < PULL_S  # the pull was before the restart
    pull = read_pod(core)["spec"]["ephemeralContainers"][0]
    assert pull["name"] == "meshctl-pull-1" and pull["image"] == PROXY_NEW
    assert pull["command"] == ["meshctl", "version"]
    assert pull["securityContext"]["runAsNonRoot"] is True


def test_without_the_pull_first_the_pull_is_inside_the_first_window(
    meshctl: Invoke, running_pod: dict[str, Any]
) -> None:
    record = upgrade(meshctl)
    assert "image_pulled" not in [s["step"] for s in record["steps"]]
    assert record["not_ready"]["not_ready_s"] >= PULL_S


def test_prepull_does_not_apply_to_the_ephemeral_handover(meshctl: Invoke) -> None:
    result = meshctl("upgrade", "--pod", POD, "--image", PROXY_NEW, "--prepull",
                     "--handover", "ephemeral")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "--prepull applies to the two-slot handover" in result.stderr
