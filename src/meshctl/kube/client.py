"""`Kube`, the client for what meshctl asks of Kubernetes: a pod's get, JSON patch and wait
(and its `ephemeralcontainers` subresource);
Events; the fleet's paged list and watch; the namespace's PodDisruptionBudgets.

Every call counts as API requests (each attempt and each watch connection), is retried with
exponential backoff on 429, 5xx and connection errors (tenacity), and ends as data or as a
`KubeError` raised `from` the client's exception (`meshctl.kube.errors`). Objects are plain
dicts, as the API sends them: `meshctl.podswap.plan` reads them without knowing the client's
model classes. Watches are read through `meshctl.kube.watch`.

A watch never outlives its deadline: each connection asks the server to end it in time
(`timeoutSeconds`) and also bounds the socket reads (`_request_timeout`), since not every
server ends a watch when asked.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import tenacity
import urllib3
from kubernetes import client as k8s

from meshctl.clock import Deadline
from meshctl.kube.corev1 import JSON_PATCH, CoreV1
from meshctl.kube.errors import (
    ApiCall,
    ApiUnavailable,
    NotFound,
    WatchExpired,
    from_api_exception,
    is_transient,
    short,
)
from meshctl.kube.policyv1 import PodDisruptionBudget
from meshctl.kube.watch import EventType, PodWatch

log = logging.getLogger(__name__)

T = TypeVar("T")

FIELD_MANAGER = "meshctl"
_WATCH_MIN_S = 0.2
_PAGE = 500
WATCH_SERVER_TIMEOUT_S = 290
"""Asked of the server for each fleet watch connection; the client reconnects from the last
resourceVersion when it ends (the real API server ends watches after at most ~30 min)."""
_WATCH_READ_SLACK_S = 15.0
_CHANGES = frozenset({EventType.ADDED, EventType.MODIFIED})


@dataclass(frozen=True)
class KubeSettings:
    attempts: int = 4
    """Tries per call (the first and the retries) on 429, 5xx and connection errors."""
    backoff_initial_s: float = 0.25
    """The first retry's delay; it doubles on each retry."""
    backoff_max_s: float = 4.0
    """No delay is longer, a server's Retry-After included."""
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    """Read timeout of one request (a watch: of one read, bounded by its deadline)."""


class Kube:
    """A connection to one API server. Use as a context manager, or `close()` it."""

    def __init__(self, api: k8s.ApiClient, default_namespace: str = "default",
                 settings: KubeSettings | None = None) -> None:
        self._api = api
        self._core = CoreV1(api)
        self._policy: Any = None  # k8s.PolicyV1Api, made on first use
        self.default_namespace = default_namespace
        self.settings = settings or KubeSettings()
        self._requests = 0

    @property
    def requests(self) -> int:
        """API requests made so far: every attempt and every watch connection."""
        return self._requests

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        call = ApiCall("get", "pods", namespace, name)
        return self._json(call, lambda: self._core.read_namespaced_pod(
            name, namespace, _preload_content=False, _request_timeout=self._timeouts()))

    def patch_pod(self, namespace: str, name: str,
                  patch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Apply a JSON patch (RFC 6902); a failed `test` operation raises Conflict."""
        call = ApiCall("patch", "pods", namespace, name)
        body = [dict(op) for op in patch]
        return self._json(call, lambda: self._core.patch_namespaced_pod(
            name, namespace, body, field_manager=FIELD_MANAGER, _content_type=JSON_PATCH,
            _preload_content=False, _request_timeout=self._timeouts()))

    def add_ephemeral_container(self, namespace: str, name: str,
                                patch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """A JSON patch of the pod through its `ephemeralcontainers` subresource (the only way
        to add one; RBAC `pods/ephemeralcontainers` patch); a failed `test` raises Conflict."""
        call = ApiCall("patch", "pods/ephemeralcontainers", namespace, name)
        body = [dict(op) for op in patch]
        return self._json(call, lambda: self._core.patch_namespaced_pod_ephemeralcontainers(
            name, namespace, body, field_manager=FIELD_MANAGER, _content_type=JSON_PATCH,
            _preload_content=False, _request_timeout=self._timeouts()))

    def create_event(self, pod: Mapping[str, Any], reason: str, message: str, *,
                     warning: bool = False, field_path: str | None = None) -> None:
        """A core/v1 Event on the pod (what `kubectl describe pod` shows); `field_path` names
        a container, e.g. `spec.containers{meshctl-proxy-b}`."""
        metadata = pod.get("metadata") or {}
        namespace = str(metadata.get("namespace") or self.default_namespace)
        name = str(metadata.get("name") or "")
        now = datetime.now(tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        involved: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "name": name,
                                    "namespace": namespace}
        if metadata.get("uid"):
            involved["uid"] = metadata["uid"]
        if metadata.get("resourceVersion"):
            involved["resourceVersion"] = metadata["resourceVersion"]
        if field_path:
            involved["fieldPath"] = field_path
        body = {
            "apiVersion": "v1", "kind": "Event",
            # The name kubectl and the kubelet use: the object's name and a unique suffix.
            "metadata": {"name": f"{name}.{time.time_ns():x}{secrets.token_hex(2)}",
                         "namespace": namespace},
            "involvedObject": involved,
            "reason": reason, "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "meshctl"},
            "reportingComponent": "meshctl", "reportingInstance": os.uname().nodename,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        call = ApiCall("create", "events", namespace)
        # The client validates the dict into its CoreV1Event model.
        event: Any = body
        self._json(call, lambda: self._core.create_namespaced_event(
            namespace, event, _preload_content=False, _request_timeout=self._timeouts()))

    def wait_pod(self, namespace: str, name: str, check: Callable[[dict[str, Any]], bool],
                 deadline: Deadline) -> dict[str, Any] | None:
        """Watch one pod until `check(pod)` is true (return that pod) or the deadline passes
        (return None). `check` sees the current state first, then every change; it may raise
        to stop early. Raises NotFound if the pod is deleted."""
        call = ApiCall("watch", "pods", namespace, name)
        while not deadline.expired():
            opened = time.monotonic()
            response = self._call(call, lambda: self._open_watch(namespace, name, deadline))
            with PodWatch(response, call, name=f"watch-{name}") as watch:
                while not deadline.expired():
                    try:
                        event = watch.next(deadline.remaining())
                    except WatchExpired:
                        break  # too old a resourceVersion; the next connection starts from now
                    if event is None:
                        if watch.ended:
                            break  # connect again while time is left
                        return None
                    if event.key[1] != name:
                        continue  # a server that ignores the field selector
                    if event.type is EventType.DELETED:
                        raise NotFound(f"{call.what()} was deleted")
                    if event.type in _CHANGES and check(event.pod):
                        return event.pod
                else:
                    return None
            if time.monotonic() - opened < _WATCH_MIN_S:
                time.sleep(min(_WATCH_MIN_S, deadline.remaining()))  # no tight reconnect loop
        return None

    def list_pods(self, namespace: str | None,
                  label_selector: str) -> tuple[list[dict[str, Any]], str | None]:
        """Every pod of the selector (`namespace` None: all namespaces), page by page, and the
        list's resourceVersion (to watch from)."""
        call = ApiCall("list", "pods", namespace or "(all namespaces)")
        items: list[dict[str, Any]] = []
        token: str | None = None
        version: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": label_selector, "limit": _PAGE,
                                      "_preload_content": False,
                                      "_request_timeout": self._timeouts()}
            if token:
                kwargs["_continue"] = token
            page = self._json(call, functools.partial(self._list, namespace, kwargs))
            items.extend(page.get("items") or [])
            metadata = page.get("metadata") or {}
            version = metadata.get("resourceVersion") or version
            token = metadata.get("continue") or None
            if not token:
                return items, version

    def list_pod_disruption_budgets(self, namespace: str) -> list[PodDisruptionBudget]:
        """Every policy/v1 PodDisruptionBudget of the namespace (their specs), page by page."""
        call = ApiCall("list", "poddisruptionbudgets", namespace)
        if self._policy is None:
            self._policy = k8s.PolicyV1Api(self._api)
        policy = self._policy
        budgets: list[PodDisruptionBudget] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": _PAGE, "_preload_content": False,
                                      "_request_timeout": self._timeouts()}
            if token:
                kwargs["_continue"] = token
            page = self._json(call, functools.partial(
                policy.list_namespaced_pod_disruption_budget, namespace, **kwargs))
            budgets.extend(PodDisruptionBudget.from_json(item)
                           for item in page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return budgets

    def watch_pods(self, namespace: str | None, label_selector: str,
                   resource_version: str | None, timeout_s: float) -> PodWatch:
        """Open one watch over the selector's pods, from `resource_version` (None: from now,
        the current pods first as ADDED). The server is asked to end it after `timeout_s`."""
        call = ApiCall("watch", "pods", namespace or "(all namespaces)")
        server_s = max(1, min(WATCH_SERVER_TIMEOUT_S, int(timeout_s)))
        kwargs: dict[str, Any] = {
            "label_selector": label_selector, "watch": True, "timeout_seconds": server_s,
            "allow_watch_bookmarks": True, "_preload_content": False,
            # A read timeout ends a stream that went silent past the server's own timeout.
            "_request_timeout": (self.settings.connect_timeout_s,
                                 server_s + _WATCH_READ_SLACK_S),
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        response = self._call(call, lambda: self._list(namespace, kwargs))
        return PodWatch(response, call, name="rollout-watch")

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    def _open_watch(self, namespace: str, name: str, deadline: Deadline) -> Any:
        remaining = deadline.remaining()
        return self._core.list_namespaced_pod(
            namespace, field_selector=f"metadata.name={name}", watch=True,
            timeout_seconds=max(1, int(remaining)), allow_watch_bookmarks=False,
            _preload_content=False,
            _request_timeout=(self.settings.connect_timeout_s, max(0.05, remaining)))

    def _list(self, namespace: str | None, kwargs: dict[str, Any]) -> Any:
        if namespace is None:
            return self._core.list_pod_for_all_namespaces(**kwargs)
        return self._core.list_namespaced_pod(namespace, **kwargs)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _timeouts(self) -> tuple[float, float]:
        return self.settings.connect_timeout_s, self.settings.request_timeout_s

    def _json(self, call: ApiCall, request: Callable[[], Any]) -> dict[str, Any]:
        response = self._call(call, request)
        try:
            data = response.data
        finally:
            response.release_conn()
        return json.loads(data) if data else {}

    def _call(self, call: ApiCall, request: Callable[[], T]) -> T:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.settings.attempts),
            wait=self._wait, retry=tenacity.retry_if_exception(is_transient), reraise=True,
            before_sleep=lambda state: log.info(
                "kube: %s %s failed (%s), retry %d of %d", call.verb, call.what(),
                short(state.outcome.exception() if state.outcome else None),
                state.attempt_number, self.settings.attempts - 1))
        try:
            for attempt in retrying:
                with attempt:
                    self._requests += 1
                    return request()
        except k8s.ApiException as exc:
            raise from_api_exception(exc, call, self.settings.attempts) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ApiUnavailable(
                f"cannot reach the API server at {self.host} to {call.verb} {call.what()} "
                f"after {self.settings.attempts} attempts: {short(exc)}") from exc
        raise AssertionError("tenacity returned without a result")  # pragma: no cover

    def _wait(self, state: tenacity.RetryCallState) -> float:
        delay = self.settings.backoff_initial_s * 2 ** (state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, k8s.ApiException) and exc.headers:
            retry_after = exc.headers.get("Retry-After")
            if retry_after and retry_after.isdigit():
                delay = max(delay, float(retry_after))
        return float(min(delay, self.settings.backoff_max_s))
