"""Fixtures of the Kubernetes tests: a kmock API server over real HTTP, a kubeconfig pointing
at it, the fake kubelet with its fake runtime, an injected pod running on it, and the
`meshctl` CLI (in-process, the real `kubernetes` client inside)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubesim.apiserver import ApiServer, Seen
from kubesim.kubelet import FakeImage, FakeKubelet, FakeRuntime
from typer.testing import CliRunner, Result

from meshctl.cli.app import app
from meshctl.podswap.inject import InjectOptions, inject_object

NAMESPACE = "shop"
POD = "web-0"
PROXY_OLD = "registry.example/meshctl/proxy:1.39.3"
PROXY_NEW = "registry.example/meshctl/proxy:1.40.0"
NEVER_READY = "registry.example/meshctl/proxy:never-ready"
CRASHES = "registry.example/meshctl/proxy:crashes"
STANDBY = "ghcr.io/meshctl/standby:0.1.0"

IMAGES = {
    NEVER_READY: FakeImage(ready_after_s=None),
    CRASHES: FakeImage(ready_after_s=None, exit_after_s=0.05),
}

Invoke = Callable[..., Result]
TEST_AGENT = "meshctl-tests"
KUBELET_AGENT = "fake-kubelet"


@pytest.fixture
def api() -> Iterator[ApiServer]:
    server = ApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(api: ApiServer, tmp_path: Path) -> Path:
    return api.kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)


@pytest.fixture
def core(api: ApiServer) -> Iterator[k8s.CoreV1Api]:
    """The test's own client, to set up and to look."""
    configuration = k8s.Configuration()
    configuration.host = api.url
    client = k8s.ApiClient(configuration)
    client.user_agent = TEST_AGENT
    try:
        yield k8s.CoreV1Api(client)
    finally:
        client.close()


APP_IMAGE = FakeImage(ready_after_s=0.0)
"""What an image does unless IMAGES says otherwise: it passes its first readiness probe."""


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime(IMAGES, default=APP_IMAGE)


@pytest.fixture
def kubelet(api: ApiServer, runtime: FakeRuntime) -> Iterator[FakeKubelet]:
    configuration = k8s.Configuration()
    configuration.host = api.url
    client = k8s.ApiClient(configuration)
    client.user_agent = KUBELET_AGENT
    # The kubelet's rules, on a node whose runtime reports container events as they happen
    # (Evented PLEG, KEP-3386) rather than at a relist a second later: the tests of meshctl's
    # logic do not wait out a relist at each container start. tests/k8s/test_kubesim_readiness
    # and bench/pod_readiness.py run the default relist.
    node = FakeKubelet(client, NAMESPACE, runtime, relist_s=0.0)
    node.start()
    try:
        yield node
    finally:
        try:
            node.stop()
        finally:
            client.close()


def app_pod(native_sidecars: bool = False) -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": POD, "namespace": NAMESPACE, "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
    injected, _ = inject_object(pod, InjectOptions(image=PROXY_OLD,
                                                   native_sidecars=native_sidecars))
    return injected


def create_pod(core: k8s.CoreV1Api, kubelet: FakeKubelet, pod: dict[str, Any]) -> dict[str, Any]:
    core.create_namespaced_pod(NAMESPACE, pod)
    return kubelet.wait_ready(pod["metadata"]["name"])


@pytest.fixture
def running_pod(core: k8s.CoreV1Api, kubelet: FakeKubelet) -> dict[str, Any]:
    """An injected pod, Ready: slot a serves PROXY_OLD, slot b stands by."""
    return create_pod(core, kubelet, app_pod())


def read_pod(core: k8s.CoreV1Api, name: str = POD) -> dict[str, Any]:
    return json.loads(core.read_namespaced_pod(name, NAMESPACE, _preload_content=False).data)


def events(core: k8s.CoreV1Api) -> list[dict[str, Any]]:
    data = json.loads(core.list_namespaced_event(NAMESPACE, _preload_content=False).data)
    return data["items"]  # type: ignore[no-any-return]


def images(pod: dict[str, Any]) -> dict[str, str]:
    spec = pod["spec"]
    return {c["name"]: c["image"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]}


@pytest.fixture
def meshctl(kubeconfig: Path) -> Invoke:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, [*args, "--kubeconfig", str(kubeconfig)],
                             env={"MESHCTL_DEBUG": None, "KUBECONFIG": None})

    return invoke


def from_meshctl(api: ApiServer) -> list[Seen]:
    """The requests meshctl made (not the kubelet's, not the test's)."""
    return [r for r in api.seen() if r.user_agent not in (TEST_AGENT, KUBELET_AGENT)]


def json_patches(api: ApiServer) -> list[list[dict[str, Any]]]:
    return [r.data for r in from_meshctl(api)
            if r.method == "PATCH" and r.content_type == "application/json-patch+json"]
