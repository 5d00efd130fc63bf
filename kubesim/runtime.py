"""What runs the fake kubelet's containers: the `Runtime` protocol, and `FakeRuntime`, whose
containers are entries in a table and whose images behave as told (`FakeImage`: how long a
pull takes, when the process answers its readiness probe, when it exits).

A runtime that starts real processes (`tests/k8s/process_runtime.py`: `meshctl run --slot`,
`meshctl standby`) implements the same protocol.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Runtime(Protocol):
    """What runs a pod's containers. Called from the kubelet's one sync thread."""

    def start(self, pod: Mapping[str, Any], container_name: str, image: str,
              args: Sequence[str]) -> str:
        """Create a container of `pod` running `image` with `args` (pulling the image first
        if the node does not have it); return its container id at once."""
        ...

    def started_at(self, container_id: str) -> float | None:
        """When its process began running (the kubelet's monotonic clock); None while the
        image is pulled or the container created, or for an unknown id."""
        ...

    def stop(self, container_id: str) -> None:
        """Stop it (SIGTERM, then what it takes); a stopped or unknown id is not an error."""
        ...

    def ready(self, container_id: str) -> bool:
        """Run its readiness probe once, now: whether it passes. The kubelet decides when."""
        ...

    def exited(self, container_id: str) -> int | None:
        """Its exit code if it ended on its own, else None (still running)."""
        ...


@dataclass(frozen=True)
class FakeImage:
    ready_after_s: float | None = 0.1
    """The readiness probe passes from this long after the process starts; None: never (a
    bad image)."""
    exit_after_s: float | None = None
    """Ends on its own this long after the start (a crashing image); None: runs on."""
    exit_code: int = 1
    pull_s: float = 0.0
    """How long pulling it takes when the node does not have it yet (then the node has it)."""


@dataclass
class _FakeContainer:
    pod: str
    name: str
    image: str
    behaviour: FakeImage
    created_at: float
    running_at: float
    """created_at, plus the pull when the image was not on the node."""
    stopped: bool = False


class FakeRuntime:
    """Containers that are only entries in a table; images behave as `images` says. `clock`
    is the kubelet's (monotonic seconds); a test may give a clock it moves itself."""

    def __init__(self, images: Mapping[str, FakeImage] | None = None,
                 default: FakeImage | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.images = dict(images or {})
        self.default = default or FakeImage()
        self.clock = clock
        self.containers: dict[str, _FakeContainer] = {}
        self.pulled: dict[str, float] = {}
        """The images on the node: {image: when its pull ends}."""
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def behaviour(self, image: str) -> FakeImage:
        return self.images.get(image, self.default)

    def pull(self, image: str) -> float:
        """Put `image` on the node (a pre-pull: a DaemonSet's, or an ephemeral container's),
        as the kubelet's image manager would; returns when the pull ends. An image already
        on the node, or on its way, is not pulled twice."""
        with self._lock:
            return self._pull(image, self.clock())

    def _pull(self, image: str, now: float) -> float:
        if image not in self.pulled:
            self.pulled[image] = now + self.behaviour(image).pull_s
        return self.pulled[image]

    def start(self, pod: Mapping[str, Any], container_name: str, image: str,
              args: Sequence[str]) -> str:
        container_id = f"{next(self._ids):012x}"
        with self._lock:
            now = self.clock()
            self.containers[container_id] = _FakeContainer(
                pod=str(pod["metadata"]["name"]), name=container_name, image=image,
                behaviour=self.behaviour(image), created_at=now,
                running_at=max(now, self._pull(image, now)))
        return container_id

    def started_at(self, container_id: str) -> float | None:
        c = self.containers.get(container_id)
        if c is None or self.clock() < c.running_at:
            return None
        return c.running_at

    def stop(self, container_id: str) -> None:
        with self._lock:
            if container_id in self.containers:
                self.containers[container_id].stopped = True

    def ready(self, container_id: str) -> bool:
        c = self.containers.get(container_id)
        if c is None or c.stopped or self.exited(container_id) is not None:
            return False
        after = c.behaviour.ready_after_s
        return after is not None and self.clock() - c.running_at >= after

    def exited(self, container_id: str) -> int | None:
        c = self.containers.get(container_id)
        if c is None or c.behaviour.exit_after_s is None:
            return None
        if self.clock() - c.running_at >= c.behaviour.exit_after_s:
            return c.behaviour.exit_code
        return None

    def running(self, pod: str) -> dict[str, str]:
        """{container name: image} of what runs now in `pod` (for assertions)."""
        with self._lock:
            return {c.name: c.image for c in self.containers.values()
                    if c.pod == pod and not c.stopped}
