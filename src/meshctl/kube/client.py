"""The one module that talks to Kubernetes (imports `kubernetes`): a thin client for what the
in-pod swap needs (get, JSON-patch and watch a pod; create Events) and the mapping of API
failures to meshctl's own errors.

Every call counts as API requests (each attempt and each watch connection), is retried with
exponential backoff on 429, 5xx and connection errors (tenacity), and ends as data or as a
`KubeError` raised `from` the client's exception. Objects are plain dicts, as the API sends
them: `meshctl.podswap.plan` reads them without knowing the client's model classes.

A watch never outlives its deadline: each connection asks the server to end it in time
(`timeoutSeconds`) and also bounds the socket reads (`_request_timeout`), since not every
server ends a watch when asked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import tenacity
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from meshctl.clock import Deadline
from meshctl.errors import MeshctlError
from meshctl.exitcodes import ExitCode

log = logging.getLogger(__name__)

T = TypeVar("T")

FIELD_MANAGER = "meshctl"
JSON_PATCH = "application/json-patch+json"
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
_GONE = 410
_WATCH_MIN_S = 0.2
_READER_JOIN_S = 2.0
REFRESH_CREDENTIALS_EVERY_S = 10.0
"""How often the kubeconfig's credentials are checked for renewal (the client would check
before every request)."""


class KubeError(MeshctlError):
    """A Kubernetes API call failed; the message is one line naming what and why."""

    exit_code = ExitCode.FAILED


class NotFound(KubeError):
    """The object (or its namespace) does not exist: refused before any change."""

    exit_code = ExitCode.PREFLIGHT


class Forbidden(KubeError):
    """RBAC (403) or authentication (401) refused the request: refused before any change."""

    exit_code = ExitCode.PREFLIGHT


class Conflict(KubeError):
    """The object changed meanwhile (409, or 422 from a failed JSON-patch `test`)."""

    exit_code = ExitCode.BUSY


class Invalid(KubeError):
    """The API server refused the request as invalid (422, 400)."""

    exit_code = ExitCode.FAILED


class ApiUnavailable(KubeError):
    """No answer after the retries: 429, 5xx or connection errors all along."""

    exit_code = ExitCode.FAILED


class ConfigError(KubeError):
    """No usable kubeconfig, context or in-cluster configuration."""

    exit_code = ExitCode.BAD_INPUT


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


@dataclass(frozen=True)
class _Call:
    verb: str
    resource: str
    namespace: str
    name: str | None = None

    def what(self) -> str:
        singular = self.resource.removesuffix("s")
        if self.name:
            return f"{singular} {self.namespace}/{self.name}"
        return f"{self.resource} in namespace {self.namespace}"


class Kube:
    """A connection to one API server. Use as a context manager, or `close()` it."""

    def __init__(self, api: k8s.ApiClient, default_namespace: str = "default",
                 settings: KubeSettings | None = None) -> None:
        self._api = api
        self._core = CoreV1(api)
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
        call = _Call("get", "pods", namespace, name)
        return self._json(call, lambda: self._core.read_namespaced_pod(
            name, namespace, _preload_content=False, _request_timeout=self._timeouts()))

    def patch_pod(self, namespace: str, name: str,
                  patch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Apply a JSON patch (RFC 6902); a failed `test` operation raises Conflict."""
        call = _Call("patch", "pods", namespace, name)
        body = [dict(op) for op in patch]
        return self._json(call, lambda: self._core.patch_namespaced_pod(
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
        call = _Call("create", "events", namespace)
        # The client validates the dict into its CoreV1Event model.
        event: Any = body
        self._json(call, lambda: self._core.create_namespaced_event(
            namespace, event, _preload_content=False, _request_timeout=self._timeouts()))

    def wait_pod(self, namespace: str, name: str, check: Callable[[dict[str, Any]], bool],
                 deadline: Deadline) -> dict[str, Any] | None:
        """Watch one pod until `check(pod)` is true (return that pod) or the deadline passes
        (return None). `check` sees the current state first, then every change; it may raise
        to stop early. Raises NotFound if the pod is deleted."""
        call = _Call("watch", "pods", namespace, name)
        while not deadline.expired():
            opened = time.monotonic()
            response = self._call(call, lambda: self._open_watch(namespace, name, deadline))
            # The stream is read in a thread, so that the deadline is kept to the millisecond
            # however long the server stays silent (a socket read timeout would only bound
            # each read, and each read could start just before the deadline).
            lines: queue.Queue[str | None] = queue.Queue()
            reader = threading.Thread(target=_pump, args=(response, lines), daemon=True,
                                      name=f"watch-{name}")
            reader.start()
            try:
                while True:
                    try:
                        line = lines.get(timeout=deadline.remaining())
                    except queue.Empty:
                        return None
                    if line is None:
                        break  # the stream ended: connect again while time is left
                    pod = self._watch_event(line, call)
                    if pod is not None and check(pod):
                        return pod
                    if deadline.expired():
                        return None
            finally:
                _end_stream(response, reader)
            if time.monotonic() - opened < _WATCH_MIN_S:
                time.sleep(min(_WATCH_MIN_S, deadline.remaining()))  # no tight reconnect loop
        return None

    def _watch_event(self, line: str, call: _Call) -> dict[str, Any] | None:
        """The pod of one watch line; None for lines that carry none."""
        if not line.strip():
            return None
        event = json.loads(line)
        kind = event.get("type")
        obj: dict[str, Any] = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == _GONE:
                return None  # too old a resourceVersion; the next connection starts from now
            raise _from_status(obj, call)
        if (obj.get("metadata") or {}).get("name") != call.name:
            return None  # a server that ignores the field selector
        if kind == "DELETED":
            raise NotFound(f"{call.what()} was deleted")
        return obj if kind in ("ADDED", "MODIFIED") else None

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    def _open_watch(self, namespace: str, name: str, deadline: Deadline) -> Any:
        remaining = deadline.remaining()
        return self._core.list_namespaced_pod(
            namespace, field_selector=f"metadata.name={name}", watch=True,
            timeout_seconds=max(1, int(remaining)), allow_watch_bookmarks=False,
            _preload_content=False,
            _request_timeout=(self.settings.connect_timeout_s, max(0.05, remaining)))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _timeouts(self) -> tuple[float, float]:
        return self.settings.connect_timeout_s, self.settings.request_timeout_s

    def _json(self, call: _Call, request: Callable[[], Any]) -> dict[str, Any]:
        response = self._call(call, request)
        try:
            data = response.data
        finally:
            response.release_conn()
        return json.loads(data) if data else {}

    def _call(self, call: _Call, request: Callable[[], T]) -> T:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.settings.attempts),
            wait=self._wait, retry=tenacity.retry_if_exception(_transient), reraise=True,
            before_sleep=lambda state: log.info(
                "kube: %s %s failed (%s), retry %d of %d", call.verb, call.what(),
                _short(state.outcome.exception() if state.outcome else None),
                state.attempt_number, self.settings.attempts - 1))
        try:
            for attempt in retrying:
                with attempt:
                    self._requests += 1
                    return request()
        except k8s.ApiException as exc:
            raise _from_api_exception(exc, call, self.settings.attempts) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ApiUnavailable(
                f"cannot reach the API server at {self.host} to {call.verb} {call.what()} "
                f"after {self.settings.attempts} attempts: {_short(exc)}") from exc
        raise AssertionError("tenacity returned without a result")  # pragma: no cover

    def _wait(self, state: tenacity.RetryCallState) -> float:
        delay = self.settings.backoff_initial_s * 2 ** (state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, k8s.ApiException) and exc.headers:
            retry_after = exc.headers.get("Retry-After")
            if retry_after and retry_after.isdigit():
                delay = max(delay, float(retry_after))
        return float(min(delay, self.settings.backoff_max_s))


_QUERY_NAMES = {
    "label_selector": "labelSelector", "field_selector": "fieldSelector", "limit": "limit",
    "_continue": "continue", "watch": "watch", "timeout_seconds": "timeoutSeconds",
    "allow_watch_bookmarks": "allowWatchBookmarks", "resource_version": "resourceVersion",
    "field_manager": "fieldManager",
}
_ACCEPT_JSON = {"Accept": "application/json"}


class CoreV1:
    """The core/v1 calls meshctl makes (a pod: read, patch, list, watch; an Event: create),
    with the official client's `ApiClient` doing the work: authentication (the kubeconfig's
    credential refresh included), TLS, the connection pool and `ApiException` for non-2xx.

    Why not the client's own `CoreV1Api`: since kubernetes 37 its class body builds a pydantic
    validator for each of its ~400 methods, and importing it costs 1.5 CPU-s here, more than
    the rest of a `meshctl upgrade --pod` and a third of a 500-pod rollout's CPU. The
    arguments keep `CoreV1Api`'s names (`_preload_content` is accepted and ignored: a call
    always returns the raw urllib3 response, which the callers read as JSON or as a stream).
    """

    def __init__(self, api: k8s.ApiClient) -> None:
        self._api = api

    def read_namespaced_pod(self, name: str, namespace: str, **options: Any) -> Any:
        return self._request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}", options)

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, *,
                             _content_type: str = JSON_PATCH, **options: Any) -> Any:
        return self._request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", options,
                             body=body, content_type=_content_type)

    def create_namespaced_event(self, namespace: str, body: Any, **options: Any) -> Any:
        return self._request("POST", f"/api/v1/namespaces/{namespace}/events", options,
                             body=body, content_type="application/json")

    def list_namespaced_pod(self, namespace: str, **options: Any) -> Any:
        return self._request("GET", f"/api/v1/namespaces/{namespace}/pods", options)

    def list_pod_for_all_namespaces(self, **options: Any) -> Any:
        return self._request("GET", "/api/v1/pods", options)

    def _request(self, method: str, path: str, options: Mapping[str, Any], *,
                 body: Any = None, content_type: str | None = None) -> Any:
        timeout = options.get("_request_timeout")
        query = [(_QUERY_NAMES[key], value) for key, value in options.items()
                 if not key.startswith("_preload") and key != "_request_timeout"
                 and value is not None]
        headers = dict(_ACCEPT_JSON)
        if content_type:
            headers["Content-Type"] = content_type
        request = self._api.param_serialize(
            method=method, resource_path=path, query_params=query, header_params=headers,
            body=body, auth_settings=["BearerToken"])
        response = self._api.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()  # type: ignore[no-untyped-call]
            # from_response raises the status's subclass (403: ForbiddenException, ...).
            raise k8s.ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response


def connect(kubeconfig: Path | None = None, context: str | None = None,
            settings: KubeSettings | None = None) -> Kube:
    """A client from the kubeconfig (`--kubeconfig`, else $KUBECONFIG or ~/.kube/config) and
    context; with neither given and inside a pod, the in-cluster service account."""
    in_cluster = (kubeconfig is None and context is None and not os.environ.get("KUBECONFIG")
                  and bool(os.environ.get("KUBERNETES_SERVICE_HOST")))
    configuration = k8s.Configuration()
    namespace = "default"
    try:
        if in_cluster:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
            if _SA_NAMESPACE.exists():
                namespace = _SA_NAMESPACE.read_text().strip() or namespace
        else:
            path = str(kubeconfig) if kubeconfig else None
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context, client_configuration=configuration)
            namespace = _context_namespace(path, context) or namespace
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        source = "in-cluster config" if in_cluster else f"kubeconfig {kubeconfig or '(default)'}"
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(f"cannot load the {source}"
                          + (f" (context {context})" if context else "") + f": {detail}") from exc
    # Retries are ours (tenacity, with backoff); urllib3's own would multiply them.
    configuration.retries = False
    hook = getattr(configuration, "refresh_api_key_hook", None)
    if hook is not None:
        # The client's stub types the hook as None (it is an untyped callable).
        throttled: Any = _Throttled(hook, REFRESH_CREDENTIALS_EVERY_S)
        configuration.refresh_api_key_hook = throttled
    return Kube(k8s.ApiClient(configuration), default_namespace=namespace, settings=settings)


class _Throttled:
    """The kubeconfig loader's credential refresh hook, run at most once per `every_s`.

    The client runs the hook before every request; it renews a token that expires within 5
    minutes (exec plugins, OIDC) and then sets the host, certificates and proxy again, which
    re-reads the whole environment for proxy variables: a quarter of the client's CPU per
    request, for nothing in between renewals. Once per `every_s` (far below those 5 minutes)
    still renews every token in time."""

    def __init__(self, hook: Callable[[Any], None], every_s: float) -> None:
        self._hook = hook
        self._every_s = every_s
        self._last = -math.inf
        self._lock = threading.Lock()

    def __call__(self, configuration: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._every_s:
                return
            self._last = now
            self._hook(configuration)
            # The loader's hook installs a fresh hook of its own each time it runs.
            fresh = getattr(configuration, "refresh_api_key_hook", None)
            if fresh is not None and fresh is not self:
                self._hook = fresh
                configuration.refresh_api_key_hook = self


def _pump(response: Any, lines: queue.Queue[str | None]) -> None:
    """Move a watch stream's lines to a queue; None when it ends, however it ends. The body of
    a reader thread: it never raises (an exception would end the thread unseen)."""
    try:
        for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
            lines.put(line)
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        log.debug("kube: watch stream ended: %s", _short(exc))
    except Exception as exc:  # the consumer sees the end; the log says why
        log.warning("kube: watch stream reader failed: %s: %s", type(exc).__name__, _short(exc))
    finally:
        lines.put(None)


def _end_stream(response: Any, reader: threading.Thread) -> None:
    """End a watch stream and its reader thread, in that order: shut the socket down (a read
    blocked in the reader returns at once), join the reader, and only then close the response.
    Closing it first would pull the file from under a read in progress (http.client then
    reads from None: an AttributeError in the reader thread)."""
    with contextlib.suppress(AttributeError, OSError, ValueError, RuntimeError):
        # urllib3 >= 2.3; ValueError/RuntimeError: already closed or released (ended anyway).
        response.shutdown()
    reader.join(timeout=_READER_JOIN_S)
    if reader.is_alive():
        log.warning("kube: a watch reader did not stop within %.0fs", _READER_JOIN_S)
    response.close()
    response.release_conn()


def _context_namespace(path: str | None, context: str | None) -> str | None:
    contexts, current = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=path)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return ((chosen or {}).get("context") or {}).get("namespace")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, k8s.ApiException):
        return exc.status in _TRANSIENT_STATUSES
    return isinstance(exc, urllib3.exceptions.HTTPError)


def _from_api_exception(exc: k8s.ApiException, call: _Call, attempts: int) -> KubeError:
    body: Any = None
    if exc.body:
        try:
            body = json.loads(exc.body)
        except ValueError:
            body = None
    status = body if isinstance(body, dict) else {"code": exc.status, "message": exc.reason}
    status.setdefault("code", exc.status)
    error = _from_status(status, call)
    if int(exc.status or 0) in _TRANSIENT_STATUSES:
        return ApiUnavailable(f"the API server did not {call.verb} {call.what()} after "
                              f"{attempts} attempts: HTTP {exc.status} {_message(status)}")
    return error


def _from_status(status: Mapping[str, Any], call: _Call) -> KubeError:
    code = int(status.get("code") or 0)
    message = _message(status)
    if code == 403:
        return Forbidden(f"forbidden: cannot {call.verb} {call.resource} in namespace "
                         f"{call.namespace} (needs RBAC verb {call.verb} on {call.resource})")
    if code == 401:
        return Forbidden(f"unauthorized: the API server refused the credentials to "
                         f"{call.verb} {call.what()} ({message})")
    if code == 404:
        return NotFound(f"{call.what()} not found")
    if code == 409:
        return Conflict(f"{call.what()} changed meanwhile: {message}")
    if code == 422 and call.verb == "patch":
        # A failed JSON-patch `test` is a 422: the object is no longer what we planned from.
        return Conflict(f"{call.what()} is not as planned (a patch test failed): {message}")
    if code in (400, 422):
        return Invalid(f"the API server refused to {call.verb} {call.what()}: {message}")
    if code in _TRANSIENT_STATUSES:
        return ApiUnavailable(f"the API server failed to {call.verb} {call.what()}: HTTP "
                              f"{code} {message}")
    return KubeError(f"cannot {call.verb} {call.what()}: HTTP {code} {message}")


def _message(status: Mapping[str, Any]) -> str:
    text = str(status.get("message") or status.get("reason") or "").strip()
    return " ".join(text.split())[:300]


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, k8s.ApiException):
        return f"HTTP {exc.status}"
    reason = getattr(exc, "reason", None)
    return " ".join(str(reason or exc).split())[:200]
