"""The command line and environment of one Envoy generation. Pure functions, unit-tested.

Every generation of one supervisor shares `base_id`, the socket prefix and `concurrency`:
- `base_id` and the socket prefix are how generation N+1 finds generation N;
- `concurrency` must not change across a hot restart: with reuse_port each worker owns its own
  listen socket, and sockets the new generation does not take over die with the old one,
  resetting the connections queued in them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshctl.errors import BadInput

# Flags meshctl owns. Passing them as extra args would break the hot-restart chain.
MANAGED_FLAGS = frozenset({
    "-c", "--config-path", "--base-id", "--restart-epoch", "--socket-path", "--socket-mode",
    "--use-dynamic-base-id", "--base-id-path", "--hot-restart-version", "--disable-hot-restart",
    "--admin-address-path", "--drain-time-s", "--parent-shutdown-time-s", "--drain-strategy",
    "--concurrency", "--mode", "--skip-hot-restart-on-no-parent",
    # The xDS gate of a new generation travels in --config-yaml (meshctl.envoy.gate); Envoy
    # takes one, so a user's would replace it. Put it in the config file instead.
    "--config-yaml",
})


@dataclass(frozen=True)
class LaunchSpec:
    """What one generation is started with."""

    binary: Path
    config: Path
    base_id: int
    epoch: int
    socket_prefix: Path
    """Envoy's --socket-path: sockets are created as `<prefix>_parent_<id>` and so on."""
    admin_address_path: Path
    """Envoy writes the admin listener's bound address here once it listens."""
    drain_time_s: int
    """Envoy's own --drain-time-s (how fast it asks connections to close while draining)."""
    parent_shutdown_time_s: int
    """Envoy's --parent-shutdown-time-s: its backstop; meshctl normally ends the drain first."""
    drain_strategy: str
    concurrency: int
    extra_args: tuple[str, ...] = ()
    no_parent_ok: bool = False
    """After a crash: start even though the previous epoch's socket has no one behind it
    (--skip-hot-restart-on-no-parent), instead of failing to hot-restart."""
    config_yaml: str | None = None
    """Merged by Envoy into the config file's bootstrap (the file is never edited): the xDS
    gate of a generation started from a parent on an xDS-driven config."""


def check_extra_args(extra: Sequence[str]) -> tuple[str, ...]:
    """Refuse extra Envoy args that would override what meshctl manages."""
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag in MANAGED_FLAGS:
            raise BadInput(f"extra Envoy argument {flag} is managed by meshctl; remove it")
    return tuple(extra)


def build_argv(spec: LaunchSpec) -> list[str]:
    argv = [
        str(spec.binary),
        "--config-path", str(spec.config),
        "--base-id", str(spec.base_id),
        "--restart-epoch", str(spec.epoch),
        # Sockets in the (0700) state dir, never the abstract namespace: abstract sockets can be
        # reached by any process in the network namespace, which could take the listen sockets.
        "--socket-path", str(spec.socket_prefix),
        "--socket-mode", "600",
        "--admin-address-path", str(spec.admin_address_path),
        "--drain-time-s", str(spec.drain_time_s),
        "--parent-shutdown-time-s", str(spec.parent_shutdown_time_s),
        "--drain-strategy", spec.drain_strategy,
        "--concurrency", str(spec.concurrency),
    ]
    if spec.no_parent_ok:
        argv.append("--skip-hot-restart-on-no-parent")
    if spec.config_yaml is not None:
        argv += ["--config-yaml", spec.config_yaml]
    argv.extend(spec.extra_args)
    return argv


def build_env(spec: LaunchSpec, base: Mapping[str, str]) -> dict[str, str]:
    """The generation's environment: the supervisor's, plus who it is (usable in configs)."""
    env = dict(base)
    env["MESHCTL_EPOCH"] = str(spec.epoch)
    env["MESHCTL_BASE_ID"] = str(spec.base_id)
    return env
