"""The pod layout contract: the names, paths, ports and annotations that `meshctl inject` writes,
`meshctl upgrade --pod` reads, and `meshctl run --slot` / `meshctl standby` run under.

Two proxy slots share one emptyDir (the supervisors' state dir and Envoy's hot-restart
sockets). One slot runs the proxy image (its ENTRYPOINT is `meshctl run`), the other the
standby image (`meshctl standby`); an upgrade starts the new proxy image in the standby slot,
which hot-restarts from the live one, then returns the old slot to the standby image.

Everything here is a constant or a pure function: change the contract here, nowhere else.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

Slot = Literal["a", "b"]
SLOTS: Final[tuple[Slot, Slot]] = ("a", "b")

CONTAINER_PREFIX: Final = "meshctl-proxy-"
STATE_VOLUME: Final = "meshctl-state"
CONFIG_VOLUME: Final = "meshctl-config"
STATE_DIR: Final = "/var/run/meshctl"
CONFIG_DIR: Final = "/etc/meshctl"
CONFIG_FILE: Final = f"{CONFIG_DIR}/envoy.yaml"
HEALTH_PORTS: Final[dict[Slot, int]] = {"a": 15021, "b": 15022}
READY_PATH: Final = "/healthz/ready"
LIVE_PATH: Final = "/healthz/live"
RUN_AS_USER: Final = 1337
"""Both slots run as one user (Istio's proxy uid), so either can use the other's sockets."""


class Handover(enum.StrEnum):
    """How `upgrade --pod` and `rollout` start the new image in a pod."""

    TWO_SLOT = "two-slot"
    """The standby slot's image is set; two containers restart (the pod may go NotReady)."""
    EPHEMERAL = "ephemeral"
    """A new ephemeral container; nothing restarts, the pod stays Ready (docs/pod-slots.md)."""


DEFAULT_STANDBY_IMAGE: Final = "ghcr.io/meshctl/standby:0.1.0"

ANNOTATION_PREFIX: Final = "meshctl.io/"
ACTIVE_SLOT: Final = "meshctl.io/active-slot"
"""The slot that serves: `a` or `b`."""
PROXY_IMAGE: Final = "meshctl.io/proxy-image"
"""The proxy image of the active slot."""
STANDBY_IMAGE: Final = "meshctl.io/standby-image"
"""The image a slot runs while it stands by."""
LAST_UPGRADE: Final = "meshctl.io/last-upgrade"
"""JSON: {"from": image, "to": image, "result": ..., "time": RFC 3339, ...}."""


def container_name(slot: Slot) -> str:
    return f"{CONTAINER_PREFIX}{slot}"


def other(slot: Slot) -> Slot:
    return "b" if slot == "a" else "a"


def slot_args(slot: Slot) -> list[str]:
    """The container's `args` (never `command`: the image's ENTRYPOINT picks run or standby)."""
    return ["--slot", slot, "--state-dir", STATE_DIR, "--config", CONFIG_FILE,
            "--health-address", f"0.0.0.0:{HEALTH_PORTS[slot]}"]
