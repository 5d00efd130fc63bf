"""A fake kubelet for the tests and the rollout benchmark: it watches the API server's pods
and plays the node.

For every container of a pod (and every native sidecar) it asks a `Runtime` to start it;
when the spec's image of a container changes, it stops that container and starts the new
image in a new container (a new containerID, restartCount + 1), as the real kubelet does for
the one mutable field of a running pod. A container that exits is restarted after a growing
back-off (CrashLoopBackOff). Readiness is the runtime's answer. Container statuses, the pod's
Ready condition and `status.observedGeneration` are written back through the status
subresource (a merge patch), only when they change.

The runtime is pluggable: `FakeRuntime` answers from a table of images (ready after a delay,
never ready, exits); a runtime that starts real processes (`meshctl run --slot`, `meshctl
standby`) and probes their health ports implements the same `Runtime` protocol.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import urllib3
from kubernetes import client as k8s
from kubernetes.watch.watch import iter_resp_lines


class Runtime(Protocol):
    """What runs a pod's containers. Called from the kubelet's one sync thread."""

    def start(self, pod: Mapping[str, Any], container_name: str, image: str,
              args: Sequence[str]) -> str:
        """Start a container of `pod` running `image` with `args`; return its container id."""
        ...

    def stop(self, container_id: str) -> None:
        """Stop it (SIGTERM, then what it takes); a stopped or unknown id is not an error."""
        ...

    def ready(self, container_id: str) -> bool:
        """Whether its readiness probe passes now."""
        ...

    def exited(self, container_id: str) -> int | None:
        """Its exit code if it ended on its own, else None (still running)."""
        ...


@dataclass(frozen=True)
class FakeImage:
    ready_after_s: float | None = 0.1
    """Ready this long after the start; None: never ready (a bad image)."""
    exit_after_s: float | None = None
    """Ends on its own this long after the start (a crashing image); None: runs on."""
    exit_code: int = 1


@dataclass
class _FakeContainer:
    pod: str
    name: str
    image: str
    behaviour: FakeImage
    started_at: float
    stopped: bool = False


class FakeRuntime:
    """Containers that are only entries in a table; images behave as `images` says."""

    def __init__(self, images: Mapping[str, FakeImage] | None = None,
                 default: FakeImage | None = None) -> None:
        self.images = dict(images or {})
        self.default = default or FakeImage()
        self.containers: dict[str, _FakeContainer] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, pod: Mapping[str, Any], container_name: str, image: str,
              args: Sequence[str]) -> str:
        container_id = f"{next(self._ids):012x}"
        with self._lock:
            self.containers[container_id] = _FakeContainer(
                pod=str(pod["metadata"]["name"]), name=container_name, image=image,
                behaviour=self.images.get(image, self.default), started_at=time.monotonic())
        return container_id

    def stop(self, container_id: str) -> None:
        with self._lock:
            if container_id in self.containers:
                self.containers[container_id].stopped = True

    def ready(self, container_id: str) -> bool:
        c = self.containers.get(container_id)
        if c is None or c.stopped or self.exited(container_id) is not None:
            return False
        after = c.behaviour.ready_after_s
        return after is not None and time.monotonic() - c.started_at >= after

    def exited(self, container_id: str) -> int | None:
        c = self.containers.get(container_id)
        if c is None or c.behaviour.exit_after_s is None:
            return None
        if time.monotonic() - c.started_at >= c.behaviour.exit_after_s:
            return c.behaviour.exit_code
        return None

    def running(self, pod: str) -> dict[str, str]:
        """{container name: image} of what runs now in `pod` (for assertions)."""
        with self._lock:
            return {c.name: c.image for c in self.containers.values()
                    if c.pod == pod and not c.stopped}


@dataclass
class _Container:
    image: str
    container_id: str | None
    last_id: str
    started_at: str
    restarts: int = 0
    last_exit: int | None = None
    backoff_until: float = 0.0


@dataclass
class _Pod:
    containers: dict[str, _Container] = field(default_factory=dict)
    written: str = ""


class FakeKubelet:
    """Plays the node for the pods of one namespace; `start()`, then `stop()`."""

    def __init__(self, api: k8s.ApiClient, namespace: str, runtime: Runtime, *,
                 tick_s: float = 0.03, backoff_s: float = 0.2) -> None:
        self._core = k8s.CoreV1Api(api)
        self.namespace = namespace
        self.runtime = runtime
        self.tick_s = tick_s
        self.backoff_s = backoff_s
        self._desired: dict[str, dict[str, Any]] = {}
        self._pods: dict[str, _Pod] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._watch, name="kubelet-watch", daemon=True),
                         threading.Thread(target=self._sync, name="kubelet-sync", daemon=True)]
        self.errors: list[BaseException] = []

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(5)
        for pod in self._pods.values():
            for c in pod.containers.values():
                if c.container_id:
                    self.runtime.stop(c.container_id)
        if self.errors:
            raise RuntimeError(f"the fake kubelet failed: {self.errors[0]!r}") from self.errors[0]

    def wait_ready(self, name: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """Wait until the pod's Ready condition is True (read through the API)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pod = json.loads(_raw(self._core.read_namespaced_pod(
                name, self.namespace, _preload_content=False)).data)
            conditions = (pod.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                return pod  # type: ignore[no-any-return]
            time.sleep(self.tick_s)
        raise TimeoutError(f"pod {self.namespace}/{name} not Ready within {timeout_s}s")

    # ------------------------------------------------------------------ the watch thread

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                response = _raw(self._core.list_namespaced_pod(
                    self.namespace, watch=True, _preload_content=False,
                    _request_timeout=(2.0, 0.3)))
            except Exception as exc:  # the server is going away with the test
                if not self._stopping.wait(0.1):
                    self.errors.append(exc)
                return
            try:
                for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    pod = event.get("object") or {}
                    name = (pod.get("metadata") or {}).get("name")
                    if not isinstance(name, str):
                        continue
                    with self._lock:
                        if event.get("type") == "DELETED":
                            self._desired.pop(name, None)
                        elif event.get("type") in ("ADDED", "MODIFIED"):
                            self._desired[name] = pod
                    self._wake.set()
                    if self._stopping.is_set():
                        break
            except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError):
                pass  # a quiet stream: connect again (and see whether to stop)
            finally:
                response.close()
                response.release_conn()

    # ------------------------------------------------------------------ the sync thread

    def _sync(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.tick_s)
            self._wake.clear()
            with self._lock:
                desired = dict(self._desired)
            try:
                for name in set(self._pods) - set(desired):
                    for c in self._pods.pop(name).containers.values():
                        if c.container_id:
                            self.runtime.stop(c.container_id)
                for name, pod in desired.items():
                    self._reconcile(name, pod)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                self.errors.append(exc)
                return

    def _reconcile(self, name: str, pod: dict[str, Any]) -> None:
        state = self._pods.setdefault(name, _Pod())
        spec = pod.get("spec") or {}
        sidecars = [c for c in spec.get("initContainers") or []
                    if c.get("restartPolicy") == "Always"]
        statuses: dict[str, list[dict[str, Any]]] = {"containerStatuses": [],
                                                     "initContainerStatuses": []}
        for key, containers in (("initContainerStatuses", sidecars),
                                ("containerStatuses", spec.get("containers") or [])):
            for container in containers:
                c = self._run(pod, state, container)
                statuses[key].append(self._status(container, c))
        all_ready = all(s["ready"] for group in statuses.values() for s in group)
        status: dict[str, Any] = {
            "phase": "Running",
            "observedGeneration": (pod.get("metadata") or {}).get("generation"),
            "conditions": [
                {"type": "ContainersReady", "status": str(all_ready)},
                {"type": "Ready", "status": str(all_ready)},
            ],
            **{k: v for k, v in statuses.items() if v},
        }
        text = json.dumps(status, sort_keys=True)
        if text != state.written:
            self._core.patch_namespaced_pod_status(
                name, self.namespace, {"status": status},
                _content_type="application/merge-patch+json", _preload_content=False,
                _request_timeout=(2.0, 5.0))
            state.written = text

    def _run(self, pod: dict[str, Any], state: _Pod, container: Mapping[str, Any]) -> _Container:
        cname, image = str(container["name"]), str(container["image"])
        args = [str(a) for a in container.get("args") or []]
        c = state.containers.get(cname)
        now = time.monotonic()
        if c is None or c.image != image:
            restarts = 0
            if c is not None:  # the image changed: this container is replaced
                restarts = c.restarts + 1
                if c.container_id:
                    self.runtime.stop(c.container_id)
            cid = self.runtime.start(pod, cname, image, args)
            c = state.containers[cname] = _Container(
                image=image, container_id=cid, last_id=cid, started_at=_now_iso(),
                restarts=restarts)
            return c
        if c.container_id is not None:
            code = self.runtime.exited(c.container_id)
            if code is not None:  # it died: back off, then start it again
                self.runtime.stop(c.container_id)
                c.container_id = None
                c.last_exit = code
                c.backoff_until = now + self.backoff_s * 2 ** min(c.restarts, 5)
                c.restarts += 1
        if c.container_id is None and now >= c.backoff_until:
            c.container_id = c.last_id = self.runtime.start(pod, cname, image, args)
            c.started_at = _now_iso()
        return c

    def _status(self, container: Mapping[str, Any], c: _Container) -> dict[str, Any]:
        running = c.container_id is not None
        ready = running and self.runtime.ready(c.container_id or "")
        status: dict[str, Any] = {
            "name": container["name"], "image": c.image, "imageID": f"fake://{c.image}",
            "containerID": f"fake://{c.last_id}", "restartCount": c.restarts,
            "started": running, "ready": ready,
            "state": ({"running": {"startedAt": c.started_at}} if running else
                      {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off restarting failed container "
                                              f"{container['name']}"}}),
        }
        if c.last_exit is not None:
            status["lastState"] = {"terminated": {"exitCode": c.last_exit, "reason": "Error"}}
        return status


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _raw(response: object) -> urllib3.HTTPResponse:
    """What a `kubernetes` call made with `_preload_content=False` returns (its stubs say the
    decoded model)."""
    return cast(urllib3.HTTPResponse, response)
