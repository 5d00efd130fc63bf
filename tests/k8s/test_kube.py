"""`meshctl.kube`, the one package that talks to Kubernetes, against kmock over real
HTTP: deadlines around watches, the request count, retries, and the error mapping."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubesim.apiserver import ApiServer, Fault

from meshctl import kube
from meshctl.clock import Deadline, SystemClock
from meshctl.exitcodes import ExitCode
from tests.k8s.conftest import NAMESPACE, POD, from_meshctl

FAST = kube.KubeSettings(attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05,
                         connect_timeout_s=1.0, request_timeout_s=2.0)


@pytest.fixture
def client(kubeconfig: Path) -> Any:
    with kube.connect(kubeconfig=kubeconfig, settings=FAST) as connected:
        yield connected


def test_the_namespace_comes_from_the_kubeconfig_context(client: kube.Kube) -> None:
    assert client.default_namespace == NAMESPACE


def test_a_watch_on_a_quiet_pod_ends_at_its_deadline_even_if_the_server_never_ends_it(
    client: kube.Kube, running_pod: dict[str, Any]
) -> None:
    seen: list[str] = []
    started = time.monotonic()
    result = client.wait_pod(NAMESPACE, POD, lambda pod: bool(seen.append("x")),
                             Deadline(SystemClock(), 0.7))
    took = time.monotonic() - started
    assert result is None
    assert seen  # the current state was seen first
    assert 0.7 <= took < 1.5


def test_a_watch_returns_the_first_state_the_check_accepts(
    client: kube.Kube, running_pod: dict[str, Any]
) -> None:
    pod = client.wait_pod(NAMESPACE, POD, lambda p: p["metadata"]["name"] == POD,
                          Deadline(SystemClock(), 5.0))
    assert pod is not None and pod["metadata"]["name"] == POD


def test_every_request_is_counted_retries_included(
    client: kube.Kube, api: ApiServer, running_pod: dict[str, Any]
) -> None:
    api.add_fault(Fault("GET", "pods", 500, name=POD, times=2))
    client.get_pod(NAMESPACE, POD)
    client.patch_pod(NAMESPACE, POD, [{"op": "add", "path": "/metadata/labels/x", "value": "1"}])
    assert client.requests == 4 == len(from_meshctl(api))


def test_a_json_patch_is_sent_as_json_patch(
    client: kube.Kube, api: ApiServer, running_pod: dict[str, Any]
) -> None:
    client.patch_pod(NAMESPACE, POD, [{"op": "add", "path": "/metadata/labels/x", "value": "1"}])
    (patch,) = [r for r in from_meshctl(api) if r.method == "PATCH"]
    assert patch.content_type == "application/json-patch+json"
    assert patch.query.get("fieldManager") == "meshctl"


def test_a_failed_patch_test_is_a_conflict(client: kube.Kube, running_pod: dict[str, Any]) -> None:
    with pytest.raises(kube.Conflict, match=f"pod {NAMESPACE}/{POD} is not as planned") as caught:
        client.patch_pod(NAMESPACE, POD, [
            {"op": "test", "path": "/spec/containers/0/image", "value": "something:else"}])
    assert caught.value.exit_code == ExitCode.BUSY
    assert isinstance(caught.value.__cause__, k8s.ApiException)


@pytest.mark.parametrize(("status", "error", "message"), [
    (403, kube.Forbidden, "forbidden: cannot get pods in namespace shop (needs RBAC verb get "
                          "on pods)"),
    (401, kube.Forbidden, "unauthorized: the API server refused the credentials to get pod "
                          "shop/web-0 (injected by the test)"),
    (404, kube.NotFound, "pod shop/web-0 not found"),
    (409, kube.Conflict, "pod shop/web-0 changed meanwhile: injected by the test"),
    (400, kube.Invalid, "the API server refused to get pod shop/web-0: injected by the test"),
    (503, kube.ApiUnavailable, "the API server did not get pod shop/web-0 after 3 attempts: "
                               "HTTP 503 injected by the test"),
    (418, kube.KubeError, "cannot get pod shop/web-0: HTTP 418 injected by the test"),
])
def test_api_errors_become_meshctl_errors_of_one_line(
    client: kube.Kube, api: ApiServer, status: int, error: type[kube.KubeError], message: str
) -> None:
    api.add_fault(Fault("GET", "pods", status, name=POD, times=-1))
    with pytest.raises(error) as caught:
        client.get_pod(NAMESPACE, POD)
    assert type(caught.value) is error
    assert str(caught.value) == message


def test_a_server_that_cannot_be_reached_is_retried_then_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ApiServer.kubeconfig_for(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    with kube.connect(kubeconfig=config, settings=FAST) as client:
        with pytest.raises(kube.ApiUnavailable,
                           match=rf"cannot reach the API server at http://127.0.0.1:{port} to "
                                 rf"get pod default/x after 3 attempts"):
            client.get_pod("default", "x")
        assert client.requests == 3


def test_a_missing_context_is_bad_input(kubeconfig: Path) -> None:
    with pytest.raises(kube.ConfigError, match=r"cannot load the kubeconfig .* \(context nope\)"):
        kube.connect(kubeconfig=kubeconfig, context="nope")
