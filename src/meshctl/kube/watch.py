"""The one watch implementation: a watch connection's stream read by a thread into a queue,
so that whoever reads the events keeps its deadlines to the millisecond however long the
server stays silent (a socket read timeout would only bound each read, and each read could
start just before the deadline). Both a pod's wait (`Kube.wait_pod`) and the fleet's watch
(`Kube.watch_pods`) read their events from a `PodWatch`."""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Self

import urllib3
from kubernetes.watch.watch import iter_resp_lines

from meshctl.kube.errors import GONE, ApiCall, WatchExpired, from_status, short

log = logging.getLogger(__name__)

_READER_JOIN_S = 2.0


class EventType(enum.Enum):
    """The type of a watch event (an ERROR event is raised, never returned)."""

    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    BOOKMARK = "BOOKMARK"


@dataclass(frozen=True)
class PodEvent:
    type: EventType
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
    """One watch connection over an open streaming response. `close()` it."""

    def __init__(self, response: Any, call: ApiCall, name: str = "watch") -> None:
        self._response = response
        self._call = call
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        self._reader = threading.Thread(target=_pump, args=(response, self._lines),
                                        daemon=True, name=name)
        self._reader.start()

    @property
    def ended(self) -> bool:
        """The stream ended (the server closed it, or the connection broke): watch again."""
        return self._ended

    def next(self, timeout_s: float) -> PodEvent | None:
        """The next event, or None when none came within `timeout_s` or the stream ended
        (then `ended`). Raises WatchExpired on 410 Gone, and the KubeError of any other ERROR
        event. Events of a type this version does not know are skipped."""
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
                if obj.get("code") == GONE:
                    raise WatchExpired(f"the watch on {self._call.what()} expired (410 Gone)")
                raise from_status(obj, self._call)
            with contextlib.suppress(ValueError):
                return PodEvent(EventType(kind), obj)
        return None

    def close(self) -> None:
        """End the stream and its reader thread, in that order: shut the socket down (a read
        blocked in the reader returns at once), join the reader, and only then close the
        response. Closing it first would pull the file from under a read in progress
        (http.client then reads from None: an AttributeError in the reader thread)."""
        with contextlib.suppress(AttributeError, OSError, ValueError, RuntimeError):
            # urllib3 >= 2.3; ValueError/RuntimeError: already closed or released.
            self._response.shutdown()
        self._reader.join(timeout=_READER_JOIN_S)
        if self._reader.is_alive():
            log.warning("kube: a watch reader did not stop within %.0fs", _READER_JOIN_S)
        self._response.close()
        self._response.release_conn()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pump(response: Any, lines: queue.Queue[str | None]) -> None:
    """Move a watch stream's lines to a queue; None when it ends, however it ends. The body of
    a reader thread: it never raises (an exception would end the thread unseen)."""
    try:
        for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
            lines.put(line)
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        log.debug("kube: watch stream ended: %s", short(exc))
    except Exception as exc:  # the consumer sees the end; the log says why
        log.warning("kube: watch stream reader failed: %s: %s", type(exc).__name__, short(exc))
    finally:
        lines.put(None)
