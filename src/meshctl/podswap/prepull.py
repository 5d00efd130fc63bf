"""The new image put on the pod's node before the two-slot swap restarts anything (`meshctl
upgrade --pod --prepull`): a short-lived ephemeral container of the new image
(`meshctl-pull-<N>`, running `meshctl version`), which the kubelet can only start once the
image is pulled, and which no readiness rule counts. Pure: pods in, a container, a patch and
progress out.

Why: the kubelet pulls a missing image after it has stopped the container it replaces, so a
pull is NotReady time; pulled beforehand, it is not (docs/pod-slots.md, "Pod readiness during
a swap": a 3 s pull took the NotReady time of a swap from 0.44 s to 3.54 s in kubesim). A bad
reference or a registry that refuses it is also found here, before anything is restarted. The
cost: one more ephemeral container per upgrade, kept in the spec until the pod is recreated,
and RBAC `patch` on `pods/ephemeralcontainers`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshctl.podswap import ephemeral
from meshctl.podswap.plan import JsonPatch, Outcome, Progress, SwapPlan

PREFIX = "meshctl-pull-"
_NAME = re.compile(r"meshctl-pull-([1-9][0-9]{0,5})")
PULL_REFUSED = frozenset({"InvalidImageName", "ErrImageNeverPull"})
"""Waiting reasons no retry of the kubelet's will cure (a backoff, ImagePullBackOff, might)."""
AFTER_PULL = frozenset({"CreateContainerError", "CreateContainerConfigError",
                        "RunContainerError"})
"""Reasons the kubelet gives only once the image is on the node (its no-op did not run)."""


def pull_name(pod: Mapping[str, Any]) -> str:
    """The next `meshctl-pull-<N>` of the pod (ephemeral container names are never reused)."""
    used = [int(m.group(1)) for c in ephemeral.ephemeral_containers(pod)
            if (m := _NAME.fullmatch(str(c.get("name") or "")))]
    return f"{PREFIX}{max(used, default=0) + 1}"


def pull_container(pod: Mapping[str, Any], swap: SwapPlan, name: str) -> dict[str, Any]:
    """The container: the new image, a command that ends at once, the new slot's security
    context and pull policy (the namespace's Pod Security level applies to it too)."""
    template = _container(pod, swap.new_container)
    container: dict[str, Any] = {"name": name, "image": swap.to_image,
                                 "command": ["meshctl", "version"],
                                 "terminationMessagePolicy": "FallbackToLogsOnError"}
    for key in ("securityContext", "imagePullPolicy"):
        if key in template:
            container[key] = template[key]
    return container


def pull_patch(pod: Mapping[str, Any], container: Mapping[str, Any]) -> JsonPatch:
    return ephemeral.add_patch(pod, container)


def pull_progress(pod: Mapping[str, Any], name: str, image: str) -> Progress:
    """DONE once the container runs or has run (the image is on the node, whatever its exit
    code); FAILED when the kubelet will not pull it; else WAITING, with the kubelet's reason."""
    status = ephemeral.ephemeral_status(pod, name)
    if status is None:
        return Progress(Outcome.WAITING, f"{name}: waiting for the kubelet to pull {image}")
    if status.running or status.exit_code is not None:
        return Progress(Outcome.DONE, f"{image} is on the pod's node ({name})")
    reason = status.waiting_reason
    if reason in AFTER_PULL:
        return Progress(Outcome.DONE, f"{image} is on the pod's node ({name}: {reason})")
    if reason in PULL_REFUSED:
        return Progress(Outcome.FAILED, f"{image} cannot be pulled: {reason}"
                        + (f": {status.message}" if status.message else ""))
    return Progress(Outcome.WAITING, f"{name}: pulling {image}"
                    + (f" ({reason})" if reason and reason != "ContainerCreating" else ""))


def _container(pod: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if container.get("name") == name:
                return container  # type: ignore[no-any-return]
    return {}
