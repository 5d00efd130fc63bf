"""A fake kubelet for the tests and the benchmarks: it watches the API server's pods and plays
the node, following the real kubelet's rules where meshctl depends on them (a pod's readiness
above all: `kubesim.readiness` holds the rules and where each one lives in the kubelet).

  - Containers: every regular container and native sidecar (an init container with
    `restartPolicy: Always`) is started through a `Runtime`; when the spec's image of one
    changes, that container is stopped and the new image started in a new container (a new
    containerID, restartCount + 1), as `kuberuntime`'s `computePodActions` and `SyncPod` do
    for the one mutable field of a running pod (kill, then pull, then start). A container
    that exits is restarted after a growing back-off (CrashLoopBackOff). Ephemeral
    containers run once and are never restarted. Classic init containers are not run: they
    are reported as completed.
  - What the kubelet knows of its containers is what its last relist saw (PLEG,
    `pkg/kubelet/pleg/generic.go`: a relist every second): a start, an exit, a new container
    reach the status at the next relist, not at once. The probes read that view too, as a
    prober worker reads the status manager's cached status.
  - Probes: a readiness and a startup worker per container that has one
    (`kubesim.readiness.ProbeWorker`), each on its own ticker from when the pod was first
    seen; `Runtime.ready()` is the probe itself.
  - Status: container statuses (`started` and `ready` by the rules), ContainersReady and Ready
    with a lastTransitionTime that moves only when the status changes (to the second, as
    `metav1.Time` is), the conditions of readiness gates kept as others set them, and
    `status.observedGeneration`; written back through the status subresource (a merge patch)
    only when something changed.

Known differences from the real kubelet: one sync thread for all pods (the real one has a
worker per pod), so a runtime whose `stop()` blocks holds up every pod; a startup probe that
fails for good does not restart the container; the status is replaced whole by a merge patch
(the real kubelet sends a strategic merge patch keyed by condition type), so a readiness gate
set between the kubelet's read and its write is lost until the next change.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import urllib3
from kubernetes import client as k8s
from kubernetes.watch.watch import iter_resp_lines

from kubesim import readiness
from kubesim.readiness import ContainerView, ProbeSpec, ProbeType, ProbeWorker
from kubesim.runtime import FakeImage, FakeRuntime, Runtime

__all__ = ["FakeImage", "FakeKubelet", "FakeRuntime", "Runtime"]

_CREATING: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}

RELIST_S = 1.0
"""The generic PLEG's relist period (`relistPeriod`, pkg/kubelet/kubelet.go)."""


@dataclass
class _Container:
    image: str
    container_id: str | None
    """The container in the runtime now; None while backing off after an exit."""
    last_id: str
    restarts: int = 0
    last_exit: int | None = None
    backoff_until: float = 0.0
    ephemeral: bool = False
    created_s: float = 0.0
    """When the kubelet asked the runtime for it (a relist before that cannot see it)."""
    seen: ContainerView = field(default_factory=lambda: ContainerView(None, running=False))
    """What the last relist saw (the status manager's view)."""
    seen_image: str = ""
    seen_started_iso: str = ""
    seen_exit: int | None = None
    """An ephemeral container's exit code, once a relist saw it end."""
    seen_state: dict[str, Any] = field(default_factory=lambda: dict(_CREATING))


@dataclass
class _Pod:
    containers: dict[str, _Container] = field(default_factory=dict)
    workers: dict[tuple[str, ProbeType], ProbeWorker] = field(default_factory=dict)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    """The kubelet-owned conditions last written (for lastTransitionTime)."""
    written: str = ""
    spec: str = ""
    """The spec last synced (a change is a reason to sync the pod)."""

    @property
    def settled(self) -> bool:
        """Every container runs, is seen running by the last relist, and is ready: nothing
        will change until the spec does (for a kubelet that skips such pods)."""
        return all(c.seen.running and c.seen.container_id == c.container_id
                   for c in self.containers.values() if not c.ephemeral) \
            and '"ready": false' not in self.written


class FakeKubelet:
    """Plays the node for the pods of one namespace; `start()`, then `stop()`. `relist_s` is
    the PLEG period (0: the runtime is seen at every pass); `clock` is monotonic seconds."""

    def __init__(self, api: k8s.ApiClient, namespace: str, runtime: Runtime, *,
                 tick_s: float = 0.03, backoff_s: float = 0.2, relist_s: float = RELIST_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._core = k8s.CoreV1Api(api)
        self.namespace = namespace
        self.runtime = runtime
        self.tick_s = tick_s
        self.backoff_s = backoff_s
        self.relist_s = relist_s
        self.clock = clock
        self._next_relist = clock()
        self._relist_now = True
        self._relist_at = self._next_relist
        """When the relist of this pass happened (its point on the relist grid): it sees no
        container created after that."""
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
            if readiness.ready_status((pod.get("status") or {}).get("conditions") or []):
                return pod  # type: ignore[no-any-return]
            time.sleep(self.tick_s)
        raise TimeoutError(f"pod {self.namespace}/{name} not Ready within {timeout_s}s")

    # The watch thread: the desired pods, as the API server has them.

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                response = _raw(self._core.list_namespaced_pod(
                    self.namespace, watch=True, _preload_content=False,
                    _request_timeout=(2.0, 0.3)))
            except Exception as exc:  # the server is going away with the test
                if _slow(exc) and not self._stopping.wait(0.05):
                    continue  # a loaded machine: the headers took longer than a read
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

    # The sync thread: containers, probes and statuses, one pass per tick or change.

    def _sync(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.tick_s)
            self._wake.clear()
            with self._lock:
                desired = dict(self._desired)
            now = self.clock()
            self._relist_now = now >= self._next_relist
            if self._relist_now and self.relist_s > 0:  # the latest relist, on its grid
                late = int((now - self._next_relist) // self.relist_s)
                self._relist_at = self._next_relist + late * self.relist_s
                self._next_relist = self._relist_at + self.relist_s
            elif self._relist_now:
                self._relist_at = now
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
        now = self.clock()
        state = self._pods.get(name)
        if state is None:
            state = self._pods[name] = _Pod(workers=_workers(pod, now))
        spec = pod.get("spec") or {}
        spec_text = json.dumps(spec, sort_keys=True)
        sync = spec_text != state.spec  # HandlePodUpdates: a spec change syncs the pod
        state.spec = spec_text
        sidecars = [c for c in spec.get("initContainers") or []
                    if c.get("restartPolicy") == "Always"]
        groups = (("initContainerStatuses", sidecars),
                  ("containerStatuses", spec.get("containers") or []),
                  ("ephemeralContainerStatuses", spec.get("ephemeralContainers") or []))
        for key, containers in groups:
            for container in containers:
                c = self._run(pod, state, container, ephemeral=key.startswith("ephemeral"))
                if self._relist_now:
                    sync = self._relist(c) or sync  # a PLEG event syncs the pod
        sync = self._probe(state, now) or sync  # so does a probe result that changed
        statuses: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in groups}
        ready: dict[str, bool] = {}
        for key, containers in groups:
            for container in containers:
                cname = str(container["name"])
                reported = self._status(state, cname, sync=sync)
                ready[cname] = bool(reported["ready"])
                statuses[key].append(reported)
        statuses["initContainerStatuses"] += [
            _completed(c) for c in spec.get("initContainers") or []
            if c.get("restartPolicy") != "Always"]
        others = [c for c in (pod.get("status") or {}).get("conditions") or []
                  if c.get("type") not in readiness.KUBELET_CONDITIONS]
        state.conditions = readiness.pod_conditions(
            spec, ready, [*state.conditions, *others], _now_iso())
        status: dict[str, Any] = {
            "phase": "Running",
            "observedGeneration": (pod.get("metadata") or {}).get("generation"),
            "conditions": state.conditions,
            **{k: v for k, v in statuses.items() if v},
        }
        state.conditions = [c for c in state.conditions
                            if c["type"] in readiness.KUBELET_CONDITIONS]
        text = json.dumps(status, sort_keys=True)
        if text != state.written:
            self._core.patch_namespaced_pod_status(
                name, self.namespace, {"status": status},
                _content_type="application/merge-patch+json", _preload_content=False,
                _request_timeout=(2.0, 5.0))
            state.written = text

    def _run(self, pod: dict[str, Any], state: _Pod, container: Mapping[str, Any], *,
             ephemeral: bool) -> _Container:
        """Start, replace or restart one container, as `SyncPod` would now."""
        cname, image = str(container["name"]), str(container["image"])
        args = [str(a) for a in container.get("args") or []]
        c = state.containers.get(cname)
        now = self.clock()
        if c is None or (c.image != image and not ephemeral):
            restarts = 0
            if c is not None:  # the image changed: this container is replaced
                restarts = c.restarts + 1
                if c.container_id:
                    self.runtime.stop(c.container_id)
            cid = self.runtime.start(pod, cname, image, args)
            c = state.containers[cname] = _Container(
                image=image, container_id=cid, last_id=cid, restarts=restarts,
                ephemeral=ephemeral, created_s=self.clock(),  # after the stop, however long
                seen=c.seen if c else ContainerView(None, running=False),
                seen_image=c.seen_image if c else image,
                seen_started_iso=c.seen_started_iso if c else "",
                seen_state=c.seen_state if c else dict(_CREATING))
            return c
        if ephemeral:
            return c  # never restarted (an ephemeral container's restartPolicy is Never)
        if c.container_id is None and now >= c.backoff_until:
            c.container_id = c.last_id = self.runtime.start(pod, cname, image, args)
            c.created_s = now
        return c

    def _relist(self, c: _Container) -> bool:
        """What PLEG sees of one container now: its id, whether it runs, an exit. True when
        that changed (a PLEG event)."""
        before = (c.seen.container_id, c.seen.running, c.seen_state)
        if c.created_s > self._relist_at:
            return False  # created after this relist looked (a stop took long): the next one
        cid = c.container_id
        if cid is not None:
            code = self.runtime.exited(cid)
            if code is not None and c.ephemeral:
                c.seen_exit = code
            elif code is not None:  # it died: back off, then start it again
                self.runtime.stop(cid)
                c.container_id = None
                c.last_exit = code
                c.backoff_until = self.clock() + self.backoff_s * 2 ** min(c.restarts, 5)
                c.restarts += 1
                cid = None
        running_at = self.runtime.started_at(cid) if cid is not None else None
        running = running_at is not None and c.seen_exit is None
        if running and (cid != c.seen.container_id or not c.seen.running):
            c.seen_started_iso = _now_iso()
        c.seen = ContainerView(cid if cid is not None else c.last_id if c.last_exit is not None
                               else None, running=running, started_at_s=running_at,
                               started=c.seen.started and cid == c.seen.container_id)
        c.seen_image = c.image
        c.seen_state = _state(c)
        return before != (c.seen.container_id, c.seen.running, c.seen_state)

    def _probe(self, state: _Pod, now: float) -> bool:
        """Run the probes due now; True when a result changed (the kubelet then syncs the
        pod: `syncLoopIteration` on the readiness and startup managers' updates)."""
        changed = False
        for (cname, _), worker in state.workers.items():
            c = state.containers.get(cname)
            if c is None or not worker.due(now):
                continue
            before = worker.result_for(c.seen.container_id)
            probe = functools.partial(self.runtime.ready, c.seen.container_id or "")
            worker.do_probe(now, c.seen, probe)
            changed = changed or worker.result_for(c.seen.container_id) is not before
        return changed

    def _status(self, state: _Pod, cname: str, *, sync: bool) -> dict[str, Any]:
        c = state.containers[cname]
        seen = c.seen
        started = readiness.container_started(
            seen.running, seen.container_id, state.workers.get((cname, ProbeType.STARTUP)))
        ready = (not c.ephemeral) and readiness.container_ready(
            seen.running, started, seen.container_id,
            state.workers.get((cname, ProbeType.READINESS)), sync=sync)
        c.seen = ContainerView(seen.container_id, seen.running, seen.started_at_s, started)
        status: dict[str, Any] = {
            "name": cname, "image": c.seen_image, "imageID": f"fake://{c.seen_image}",
            "containerID": f"fake://{seen.container_id}" if seen.container_id else None,
            "restartCount": c.restarts, "started": started, "ready": ready,
            "state": c.seen_state,
        }
        if status["containerID"] is None:
            del status["containerID"]
        if c.last_exit is not None:
            status["lastState"] = {"terminated": {"exitCode": c.last_exit, "reason": "Error"}}
        return status


def _workers(pod: Mapping[str, Any], now: float) -> dict[tuple[str, ProbeType], ProbeWorker]:
    """`manager.AddPod`: a worker per probe of each regular container and native sidecar."""
    spec = pod.get("spec") or {}
    workers: dict[tuple[str, ProbeType], ProbeWorker] = {}
    containers = [*(c for c in spec.get("initContainers") or []
                    if c.get("restartPolicy") == "Always"), *(spec.get("containers") or [])]
    for container in containers:
        for kind, key in ((ProbeType.STARTUP, "startupProbe"),
                          (ProbeType.READINESS, "readinessProbe")):
            probe = ProbeSpec.from_spec(container.get(key))
            if probe is not None:
                workers[(str(container["name"]), kind)] = ProbeWorker(kind, probe, now)
    return workers


def _state(c: _Container) -> dict[str, Any]:
    """The container's `state` as a relist sees it."""
    if c.seen.running:
        return {"running": {"startedAt": c.seen_started_iso}}
    if c.seen_exit is not None:
        return {"terminated": {"exitCode": c.seen_exit,
                               "reason": "Completed" if c.seen_exit == 0 else "Error"}}
    if c.container_id is None and c.last_exit is not None:
        return {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting "
                            "failed container"}}
    return dict(_CREATING)


def _completed(container: Mapping[str, Any]) -> dict[str, Any]:
    """A classic init container, reported as having run to completion (not run here)."""
    return {"name": container["name"], "image": container["image"], "ready": True,
            "started": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}


def _now_iso() -> str:
    """`metav1.Now()` as the API holds it: RFC 3339 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _slow(exc: Exception) -> bool:
    """A read timeout opening the watch (the server answers, late), not a server gone."""
    reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    return isinstance(reason, urllib3.exceptions.ReadTimeoutError)


def _raw(response: object) -> urllib3.HTTPResponse:
    """What a `kubernetes` call made with `_preload_content=False` returns (its stubs say the
    decoded model)."""
    return cast(urllib3.HTTPResponse, response)
