"""Fixtures of the rollout tests: a fleet of injected pods on the fake kubelet, a runtime whose
images can misbehave in chosen pods only, and readers of the rollout's output."""

from __future__ import annotations

import copy
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from kubernetes import client as k8s
from kubesim.kubelet import FakeImage, FakeKubelet, FakeRuntime
from typer.testing import Result

from tests.k8s.conftest import APP_IMAGE, NAMESPACE, app_pod

SELECTOR = "app=web"
NEVER = FakeImage(ready_after_s=None)
"""An image that starts but never becomes ready (a bad image)."""


class FleetRuntime(FakeRuntime):
    """`FakeRuntime`, where an image may behave differently in chosen pods (the same image
    fails in two pods of twenty), and every container start is recorded."""

    def __init__(self, images: Mapping[str, FakeImage] | None = None) -> None:
        super().__init__(images, default=APP_IMAGE)
        self.per_pod: dict[tuple[str, str], FakeImage] = {}
        self.starts: list[tuple[str, str, str]] = []
        """(pod, container, image) of every container started, in order."""

    def misbehave(self, pods: Collection[str], image: str, behaviour: FakeImage) -> None:
        for pod in pods:
            self.per_pod[(pod, image)] = behaviour

    def behave(self) -> None:
        self.per_pod.clear()

    def start(self, pod: Mapping[str, Any], container_name: str, image: str,
              args: Sequence[str]) -> str:
        container_id = super().start(pod, container_name, image, args)
        name = str(pod["metadata"]["name"])
        behaviour = self.per_pod.get((name, image))
        if behaviour is not None:
            self.containers[container_id].behaviour = behaviour
        self.starts.append((name, container_name, image))
        return container_id


def web_pod(index: int, *, labels: Mapping[str, str] | None = None,
            injected: bool = True) -> dict[str, Any]:
    name = f"web-{index:02d}"
    if injected:
        pod = copy.deepcopy(app_pod())
        pod["metadata"]["name"] = name
    else:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NAMESPACE},
               "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
    pod["metadata"]["labels"] = dict(labels or {"app": "web"})
    return pod


def create_fleet(core: k8s.CoreV1Api, kubelet: FakeKubelet, pods: Sequence[dict[str, Any]],
                 *, ready: bool = True) -> list[str]:
    """Create the pods, then wait until they are Ready (all at once, not one by one)."""
    for pod in pods:
        core.create_namespaced_pod(NAMESPACE, pod)
    names = [str(p["metadata"]["name"]) for p in pods]
    if ready:
        wait_ready(kubelet, names)
    return names


def wait_ready(kubelet: FakeKubelet, names: Sequence[str]) -> None:
    for name in names:
        kubelet.wait_ready(name, timeout_s=10.0)


def events_of(result: Result) -> list[dict[str, Any]]:
    """The JSON-lines progress events the command wrote on stderr."""
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def named(events: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in events if e["event"] == name]


def record_of(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    text = (pod["metadata"].get("annotations") or {}).get("meshctl.io/rollout")
    return json.loads(text) if text else None
