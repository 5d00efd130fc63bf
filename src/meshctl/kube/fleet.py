"""What a fleet rollout needs of Kubernetes beyond one pod: list the pods of a label selector
(paged) and follow all of them with one watch. An extension of `meshctl.kube.Kube`
(same connection, retries, request count and error mapping); like it, it never imports
`kubernetes` itself: the calls go through the client that `kube` built.

(Kept apart from `kube.py` only while that module is being finished; the two methods belong
there.)
"""

from __future__ import annotations

import functools
import json
import queue
import threading
from dataclasses import dataclass
from typing import Any, Self

from meshctl.kube.client import (
    Kube,
    KubeError,
    _Call,
    _end_stream,
    _from_status,
    _pump,
)

_PAGE = 500
_GONE = 410
WATCH_SERVER_TIMEOUT_S = 290
"""Asked of the server for each watch connection; the client reconnects from the last
resourceVersion when it ends (the real API server ends watches after at most ~30 min)."""
_WATCH_READ_SLACK_S = 15.0


class WatchExpired(KubeError):
    """The watch's resourceVersion is too old (410 Gone): list again, then watch again."""


@dataclass(frozen=True)
class PodEvent:
    type: str
    """ADDED, MODIFIED, DELETED or BOOKMARK."""
    pod: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        metadata = self.pod.get("metadata") or {}
        return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")

    @property
    def resource_version(self) -> str | None:
        value = (self.pod.get("metadata") or {}).get("resourceVersion")
        return str(value) if value else None


class PodWatch:
    """One watch connection; its stream is read by a thread into a queue, so that the reader
    of events keeps its own deadlines to the millisecond. `close()` it."""

    def __init__(self, response: Any, call: _Call) -> None:
        self._response = response
        self._call = call
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        self._reader = threading.Thread(target=_pump, args=(response, self._lines),
                                        daemon=True, name="rollout-watch")
        self._reader.start()

    @property
    def ended(self) -> bool:
        """The stream ended (the server closed it, or the connection broke): watch again."""
        return self._ended

    def next(self, timeout_s: float) -> PodEvent | None:
        """The next event, or None when none came within `timeout_s` or the stream ended.
        Raises WatchExpired on 410 Gone, and the KubeError of any other ERROR event."""
        while not self._ended:
            try:
                line = self._lines.get(timeout=max(0.0, timeout_s))
            except queue.Empty:
                return None
            if line is None:
                self._ended = True
                return None
            if not line.strip():
                continue
            event = json.loads(line)
            kind = str(event.get("type") or "")
            obj: dict[str, Any] = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == _GONE:
                    raise WatchExpired(f"the watch on {self._call.what()} expired (410 Gone)")
                raise _from_status(obj, self._call)
            return PodEvent(kind, obj)
        return None

    def close(self) -> None:
        _end_stream(self._response, self._reader)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FleetKube(Kube):
    """`Kube` plus a paged list and one watch over the pods of a label selector."""

    @classmethod
    def adopt(cls, kube: Kube) -> FleetKube:
        """The same connection (and settings) as `kube`; its requests are counted anew."""
        return cls(kube._api, default_namespace=kube.default_namespace,
                   settings=kube.settings)

    def list_pods(self, namespace: str | None,
                  label_selector: str) -> tuple[list[dict[str, Any]], str | None]:
        """Every pod of the selector (`namespace` None: all namespaces), page by page, and the
        list's resourceVersion (to watch from)."""
        call = _Call("list", "pods", namespace or "(all namespaces)")
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

    def watch_pods(self, namespace: str | None, label_selector: str,
                   resource_version: str | None, timeout_s: float) -> PodWatch:
        """Open one watch over the selector's pods, from `resource_version` (None: from now,
        the current pods first as ADDED). The server is asked to end it after `timeout_s`."""
        call = _Call("watch", "pods", namespace or "(all namespaces)")
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
        return PodWatch(response, call)

    def _list(self, namespace: str | None, kwargs: dict[str, Any]) -> Any:
        if namespace is None:
            return self._core.list_pod_for_all_namespaces(**kwargs)
        return self._core.list_namespaced_pod(namespace, **kwargs)
