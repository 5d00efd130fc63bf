"""End to end: `meshctl upgrade --pod` against the kmock API server, with the fake kubelet
running the pod's containers as real processes: `meshctl run --slot` with real Envoy 1.39.3
and 1.40.0, `meshctl standby`, traffic through the pod's proxy all along."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

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
    events,
    images,
    read_pod,
)
from tests.k8s.process_runtime import CRASHING, ProcessRuntime, real_pod

pytestmark = pytest.mark.envoy



@pytest.fixture
def ports() -> Ports:
    return Ports()


@pytest.fixture
def runtime(ports: Ports, envoy_old: Path, envoy_new: Path) -> Iterator[ProcessRuntime]:
    with real_pod(POD, lambda path: envoy_config(path, ports), envoy_old, envoy_new,
                  {PROXY_OLD: envoy_old, PROXY_NEW: envoy_new, }, STANDBY,
                  "mck-") as runtime:
        yield runtime


def slot_status(runtime: ProcessRuntime, slot: str) -> dict[str, object]:
    return operations.status(runtime.pod_dir(POD) / f"slot-{slot}")


def test_a_pod_is_upgraded_from_1_39_3_to_1_40_0_in_place_without_a_failed_request(
        running_pod: dict[str, object], meshctl: Invoke, core: k8s.CoreV1Api,
        runtime: ProcessRuntime, ports: Ports) -> None:
    assert slot_status(runtime, "a")["live"]["version"] == "1.39.3"  # type: ignore[index]

    with Traffic(ports.http) as traffic:
        done = meshctl("upgrade", "--pod", POD, "--image", PROXY_NEW, "--timeout", "90",
                       "--output", "json")
        after = slot_status(runtime, "b")

    assert done.exit_code == 0, done.output
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert {"0", "1"} <= set(traffic.stats.by_epoch), traffic.stats.to_json()
    assert after["live"]["version"] == "1.40.0"  # type: ignore[index]
    pod = read_pod(core)
    assert images(pod)["meshctl-proxy-a"] == STANDBY
    assert images(pod)["meshctl-proxy-b"] == PROXY_NEW
    assert pod["metadata"]["annotations"]["meshctl.io/active-slot"] == "b"  # type: ignore[index]
    assert len(events(core)) >= 3


def test_a_crashing_image_is_rolled_back_with_the_old_slot_serving_every_request(
        running_pod: dict[str, object], meshctl: Invoke, core: k8s.CoreV1Api,
        runtime: ProcessRuntime, ports: Ports) -> None:
    with Traffic(ports.http) as traffic:
        done = meshctl("upgrade", "--pod", POD, "--image", CRASHING, "--timeout", "20",
                       "--output", "json")

    assert done.exit_code == ExitCode.ROLLED_BACK, done.output
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    pod = read_pod(core)
    assert images(pod)["meshctl-proxy-a"] == PROXY_OLD
    assert images(pod)["meshctl-proxy-b"] == STANDBY
    assert slot_status(runtime, "a")["live"]["version"] == "1.39.3"  # type: ignore[index]
    assert json.loads(done.stdout)["result"] in ("rolled_back", "rolled back")
