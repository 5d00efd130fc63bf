"""What the API server recorded of a pod's Ready condition: the kubelet's own status writes
(the condition's status and lastTransitionTime), read back from the server's request log. The
reference the NotReady windows meshctl reports are checked against."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubesim.apiserver import ApiServer

from tests.k8s.conftest import KUBELET_AGENT, TEST_AGENT


def recorded_transitions(api: ApiServer, pod: str) -> list[tuple[bool, str]]:
    """(Ready, lastTransitionTime) at each change of `pod`'s Ready condition the kubelet wrote
    after meshctl's first patch of that pod."""
    seen = api.seen()
    first = next(i for i, r in enumerate(seen)
                 if r.user_agent not in (TEST_AGENT, KUBELET_AGENT) and r.method == "PATCH"
                 and r.name == pod)
    changes: list[tuple[bool, str]] = []
    last: bool | None = None
    for index, r in enumerate(seen):
        if r.user_agent != KUBELET_AGENT or r.subresource != "status" or r.name != pod:
            continue
        ready = _ready(r.data)
        if index > first and ready is not last:
            changes.append((ready, _ready_since(r.data)))
        last = ready
    return changes


def server_not_ready_s(recorded: list[tuple[bool, str]]) -> float:
    """The NotReady seconds the recorded transitions span (to the second, as they are)."""
    return sum(_seconds(up) - _seconds(down)
               for (_, down), (_, up) in zip(recorded[::2], recorded[1::2], strict=True))


def _ready(status_patch: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in status_patch["status"]["conditions"])


def _ready_since(status_patch: dict[str, Any]) -> str:
    return str(next(c["lastTransitionTime"] for c in status_patch["status"]["conditions"]
                    if c["type"] == "Ready"))


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
