"""A Kubernetes API server for the tests and the rollout benchmark: kmock's KubernetesEmulator
on a real HTTP port, in a thread with its own event loop, so that the synchronous `kubernetes`
client (meshctl's, the fake kubelet's, the test's) reaches it like a cluster.

What the emulator adds to kmock's, to behave like the real API server where meshctl relies on
it:
  - a JSON patch whose `test` fails (or that does not apply) is refused with 422 and changes
    nothing (kmock answers 500);
  - `metadata.resourceVersion` on every write, `metadata.generation` bumped on spec changes;
  - faults: chosen requests answered with an error status before anything is changed (a
    kmock reaction would answer, but the emulator would have applied the write already);
  - a change by "someone else" applied just before the next JSON patch of a pod, as if their
    write had landed between meshctl's read and meshctl's patch;
  - the `ephemeralcontainers` subresource of a pod, validated as the real API server does
    (only adds, unique names, no ports, probes or resources).
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import apps, enums

T = TypeVar("T")


@dataclass
class Fault:
    """Answer matching requests with `status` (HTTP method, resource plural, object name)."""

    method: str
    resource: str
    status: int
    name: str | None = None
    times: int = 1
    """How many requests it answers; -1: all of them."""
    message: str = "injected by the test"
    watch: bool | None = None
    """True: only watch requests; False: only the others; None: both."""
    spare_agents: tuple[str, ...] = ()
    """User agents it does not answer (e.g. the fake kubelet's)."""
    subresource: str | None = None
    """Only requests to this subresource (e.g. `ephemeralcontainers`); None: any, or none."""

    def matches(self, request: kmock.Request) -> bool:
        method = str(getattr(request.method, "value", request.method))
        is_watch = request.params.get("watch") == "true"
        return (self.times != 0 and method.upper() == self.method.upper()
                and request.resource is not None and request.resource.plural == self.resource
                and (self.name is None or request.name == self.name)
                and (self.watch is None or self.watch == is_watch)
                and (self.subresource is None or request.subresource == self.subresource)
                and request.headers.get("User-Agent", "") not in self.spare_agents)


@dataclass(frozen=True)
class Seen:
    """A request as the server saw it, for assertions."""

    method: str
    path: str
    query: Mapping[str, str]
    content_type: str
    data: Any
    resource: str | None
    name: str | None
    subresource: str | None
    user_agent: str


class PodEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API server behaviours listed in the module docstring."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.faults: list[Fault] = []
        self.interleaved: dict[str, Any] = {}
        self.resource_version = 0

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        for fault in self.faults:
            if fault.matches(request):
                fault.times -= 1
                raise kmock.KubernetesError(status=fault.status, reason=_REASONS.get(
                    fault.status, "Error"), message=fault.message, details={"fault": True})
        if (request.action == enums.action.CREATE and request.resource is not None
                and isinstance(request.data, dict)):
            self.resource_version += 1
            metadata = request.data.setdefault("metadata", {})
            metadata["resourceVersion"] = str(self.resource_version)
            metadata.setdefault("uid", f"uid-{self.resource_version}")
            if request.resource.plural == "pods":
                metadata.setdefault("generation", 1)
        if (request.action == enums.action.UPDATE and request.resource is not None
                and request.name is not None):
            await self._update(request)
            # The object is written; kmock's reactions and fallback serve the response.
            return await apps.RawHandler._handle(self, request)
        return await super()._handle(request)

    async def _update(self, request: kmock.Request) -> None:
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            obj = self.objects[key]
            if request.subresource == "ephemeralcontainers":
                _check_ephemeral(obj.raw, request.data)
            if isinstance(request.data, list) and request.name in self.interleaved:
                await self._write(request, obj, self.interleaved.pop(request.name))
            try:
                await self._write(request, obj, request.data)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise kmock.KubernetesError(
                    status=422, reason="Invalid",
                    message=f"the server rejected our request due to an error in our "
                            f"request: {exc}", details={"patch": True}) from exc

    async def _write(self, request: kmock.Request, obj: kmock.Object, change: Any) -> None:
        assert request.resource is not None
        before = copy.deepcopy(obj.raw)
        obj.patch(change)  # a dict merges, a list is a JSON patch; raises before any change
        self.resource_version += 1
        stamp: dict[str, Any] = {"resourceVersion": str(self.resource_version)}
        if request.resource.plural == "pods" and before.get("spec") != obj.raw.get("spec"):
            stamp["generation"] = int((before.get("metadata") or {}).get("generation") or 1) + 1
        obj.patch({"metadata": stamp})
        await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})


_EPHEMERAL_FORBIDDEN = ("ports", "livenessProbe", "readinessProbe", "startupProbe",
                        "resources", "lifecycle", "restartPolicy")
"""Fields the API server refuses in an ephemeral container (`validateEphemeralContainers`)."""


def _check_ephemeral(pod: dict[str, Any], change: Any) -> None:
    """The `ephemeralcontainers` subresource, as the real API server validates it: the patch
    may only add ephemeral containers (none changed or removed, nothing else of the pod), each
    with a unique name and none of the fields an ephemeral container may not have."""
    def invalid(message: str) -> kmock.KubernetesError:
        return kmock.KubernetesError(status=422, reason="Invalid", message=message,
                                     details={"ephemeral": True})

    if not isinstance(change, list):
        return  # a merge patch (kubectl debug's kind) is merged unchecked
    try:
        after = jsonpatch.apply_patch(pod, change)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise invalid(f"the server rejected our request due to an error in our request: "
                      f"{exc}") from exc
    before_spec = dict(pod.get("spec") or {})
    after_spec = dict(after.get("spec") or {})
    old = before_spec.pop("ephemeralContainers", None) or []
    new = after_spec.pop("ephemeralContainers", None) or []
    if before_spec != after_spec or {k: v for k, v in pod.items() if k != "spec"} != \
            {k: v for k, v in after.items() if k != "spec"}:
        raise invalid("Pod is invalid: only spec.ephemeralContainers may be changed")
    if new[:len(old)] != old:
        raise invalid("Pod is invalid: spec.ephemeralContainers: Forbidden: existing ephemeral "
                      "containers may not be changed")
    names = [c.get("name") for c in [*(before_spec.get("containers") or []),
                                     *(before_spec.get("initContainers") or []), *new]]
    for container in new[len(old):]:
        if names.count(container.get("name")) > 1:
            raise invalid(f"Pod is invalid: spec.ephemeralContainers: Duplicate value: "
                          f"{container.get('name')!r}")
        bad = [k for k in _EPHEMERAL_FORBIDDEN if k in container]
        if bad:
            raise invalid(f"Pod is invalid: spec.ephemeralContainers[{container.get('name')}]."
                          f"{bad[0]}: Forbidden: cannot be set for an Ephemeral Container")


_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable"}


class ApiServer:
    """The emulator served on 127.0.0.1, from a thread; `call()` reaches its state safely."""

    emulator_class: type[PodEmulator] = PodEmulator
    """Which emulator is served (a subclass may trade features for speed)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name="apiserver", daemon=True)
        self._emulator: PodEmulator | None = None
        self._error: BaseException | None = None
        self.url = ""

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the kmock API server did not start within 10 s")
        if self._error is not None:
            raise RuntimeError("the kmock API server failed to start") from self._error

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the kmock API server did not stop within 10 s")

    def call(self, fn: Callable[[PodEmulator], T]) -> T:
        """Run `fn(emulator)` in the server's loop (its state is not thread-safe)."""
        async def run() -> T:
            assert self._emulator is not None
            return fn(self._emulator)

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout=10)

    def add_fault(self, fault: Fault) -> Fault:
        self.call(lambda em: em.faults.append(fault))
        return fault

    def interleave(self, pod: str, change: Any) -> None:
        """Apply `change` (a merge-patch dict or a JSON-patch list) to the pod just before its
        next JSON patch is applied: someone else's write, landed between read and patch."""
        self.call(lambda em: em.interleaved.__setitem__(pod, change))

    def seen(self) -> list[Seen]:
        return self.call(lambda em: [
            Seen(method=str(getattr(r.method, "value", r.method)).upper(), path=r.url.path,
                 query=dict(r.params), content_type=r.headers.get("Content-Type", ""),
                 data=copy.deepcopy(r.data), resource=r.resource.plural if r.resource else None,
                 name=r.name, subresource=r.subresource,
                 user_agent=r.headers.get("User-Agent", ""))
            for r in list(em)])

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        return self.kubeconfig_for(path, self.url, namespace)

    @staticmethod
    def kubeconfig_for(path: Path, url: str, namespace: str = "default") -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": url}}],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
            "contexts": [{"name": "kmock", "context": {
                "cluster": "kmock", "user": "tester", "namespace": namespace}}],
        }))
        return path

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with self.emulator_class() as emulator, kmock.Server(emulator) as server:
            emulator.resources["v1/pods"] = kmock.ResourceInfo(
                kind="Pod", namespaced=True, subresources={"status", "ephemeralcontainers"})
            emulator.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True)
            # What meshctl's disruption-budget checks list (kmock would guess it from the path;
            # declared, so the kind and scope are the real API server's).
            emulator.resources["policy/v1/poddisruptionbudgets"] = kmock.ResourceInfo(
                kind="PodDisruptionBudget", namespaced=True, subresources={"status"})
            self._emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()


_KMOCK_KEEP = 8
"""Requests kmock keeps in its own list (`_LeanEmulator`)."""


class _LeanEmulator(PodEmulator):
    """`PodEmulator`, but kmock's own request list is kept short: kmock matches each request
    against its reactions by scanning every request served so far, so a long run (hundreds of
    pods, thousands of requests) would slow down with each request. The full log is kept
    here, for `seen()`."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.log: list[kmock.Request] = []

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self.log.append(request)
        del self._requests[:-_KMOCK_KEEP]
        return await super()._handle(request)


class LeanApiServer(ApiServer):
    """`ApiServer` on `_LeanEmulator`: the same API, at a constant cost per request."""

    emulator_class = _LeanEmulator

    def seen(self) -> list[Seen]:
        def snapshot(em: PodEmulator) -> list[Seen]:
            assert isinstance(em, _LeanEmulator)
            return [Seen(method=str(getattr(r.method, "value", r.method)).upper(),
                         path=r.url.path, query=dict(r.params),
                         content_type=r.headers.get("Content-Type", ""),
                         data=copy.deepcopy(r.data),
                         resource=r.resource.plural if r.resource else None, name=r.name,
                         subresource=r.subresource, user_agent=r.headers.get("User-Agent", ""))
                    for r in list(em.log)]

        return self.call(snapshot)
