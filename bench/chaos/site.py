"""What one chaos run needs on the machine, made and removed by it: ports, configs, a real ADS
control plane, bad binaries and configs, and a state dir on a tmpfs small enough to fill.

The config is a sidecar's: a static listener that answers itself (the load's port; each
response names the generation that served it) beside a listener from the control plane (LDS,
RDS, CDS, EDS over ADS; its route leads to the static listener). So every upgrade is an
xDS-driven one, held by meshctl's gate until the new generation has what the old one had, and
the control plane can fail under a proxy whose load port does not depend on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchlib import envoy_config, free_port
from meshctl.demo.controlplane import ControlPlane, bootstrap_yaml, mesh_snapshot

STATE_FS_MB = 64
"""The state dir's tmpfs: each generation leaves a log of ~35 kB there (Envoy at info level),
so a few hundred steps fit many times over, and filling it takes a few milliseconds."""


class StateFs:
    """A tmpfs mounted for the state dir (root only), filled and freed on demand. The filler is
    beside the state dir, never in it: a state dir holding a foreign file is refused at the
    next supervisor start, which would be a fault of the harness, not of meshctl."""

    def __init__(self, mount_point: Path, size_mb: int = STATE_FS_MB) -> None:
        self.mount_point = mount_point
        self.state_dir = mount_point / "state"
        self.filler = mount_point / "filler"
        self.size_mb = size_mb
        self.mounted = False

    def mount(self) -> StateFs:
        self.mount_point.mkdir(mode=0o700)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700",
                               "tmpfs", str(self.mount_point)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"cannot mount a tmpfs at {self.mount_point} (the chaos run "
                               f"needs root): {done.stderr.strip()}")
        self.mounted = True
        return self

    def fill(self) -> int:
        """Write until the file system is full, to the last page; returns the bytes written."""
        chunk = 1 << 20
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while chunk >= 4096:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 16
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def unmount(self) -> None:
        if self.mounted:
            self.free()
            done = subprocess.run(["umount", str(self.mount_point)], capture_output=True,
                                  text=True, check=False)
            if done.returncode != 0:  # busy: detach it, the kernel ends it when unused
                subprocess.run(["umount", "-l", str(self.mount_point)], check=False)
            self.mounted = False


_NOT_ENVOY = "#!/bin/sh\necho 'not envoy'\nexit 3\n"
# Envoy for every pre-flight probe (--version, --hot-restart-version, --mode validate), then a
# SIGSEGV when started for real: what only the supervisor can catch.
_CRASHING = """#!/bin/sh
case " $* " in *" --version "*|*" --hot-restart-version "*|*" --mode "*)
  exec {envoy} "$@";;
esac
kill -SEGV $$
"""


@dataclass
class Site:
    root: Path
    listener_port: int
    """The static listener: the load's port."""
    xds_listener_port: int
    """The listener the control plane sends."""
    admin_port: int
    config: Path
    rejected_config: Path
    """Envoy refuses it (an unknown field): pre-flight refuses the upgrade."""
    port_in_use_config: Path
    """One listener more, on a port `taken` holds: Envoy fails while initializing (Trap 1)."""
    not_envoy: Path
    crashing_envoy: Path
    plane: ControlPlane
    fs: StateFs
    taken: socket.socket

    @property
    def state_dir(self) -> Path:
        return self.fs.state_dir

    @property
    def ports(self) -> tuple[int, int]:
        return (self.listener_port, self.xds_listener_port)

    @classmethod
    def create(cls, root: Path, envoy: Path) -> Site:
        """Everything but the supervisor. `root` must be a fresh dir only we can write (its
        files are handed to a root supervisor, which refuses others': `meshctl.trust`)."""
        listener, xds_listener, admin = free_port(), free_port(), free_port()
        plane = ControlPlane(mesh_snapshot("1", [xds_listener], listener)).start()
        taken = socket.create_server(("127.0.0.1", 0))
        try:
            fs = StateFs(root / "fs").mount()
        except RuntimeError:
            plane.stop()
            taken.close()
            raise
        config = _sidecar_config(listener, admin, plane.port)
        configs = {"config.yaml": config,
                   "rejected.yaml": {**config, "no_such_field": 1},
                   "port-in-use.yaml": _with_listener_on(config, int(taken.getsockname()[1]))}
        for name, data in configs.items():
            (root / name).write_text(yaml.safe_dump(data, sort_keys=False))
        scripts = {"not-envoy": _NOT_ENVOY, "crashing-envoy": _CRASHING.format(envoy=envoy)}
        for name, text in scripts.items():
            (root / name).write_text(text)
            (root / name).chmod(0o755)
        return cls(root=root, listener_port=listener, xds_listener_port=xds_listener,
                   admin_port=admin, config=root / "config.yaml",
                   rejected_config=root / "rejected.yaml",
                   port_in_use_config=root / "port-in-use.yaml",
                   not_envoy=root / "not-envoy", crashing_envoy=root / "crashing-envoy",
                   plane=plane, fs=fs, taken=taken)

    def close(self) -> None:
        """After the supervisor has stopped: the mount is the last thing Envoy used."""
        self.plane.stop()
        self.taken.close()
        self.fs.unmount()


def _sidecar_config(listener: int, admin: int, xds_port: int) -> dict[str, Any]:
    """The bootstrap of `bootstrap_yaml` (node, admin, the ADS cluster, LDS and CDS over ADS)
    with the static listener of benchlib's config added."""
    static: dict[str, Any] = yaml.safe_load(envoy_config(listener, admin, "served by chaos"))
    boot: dict[str, Any] = yaml.safe_load(bootstrap_yaml(
        node_id="chaos", xds_port=xds_port, admin_port=admin, initial_fetch_timeout_s=3.0))
    boot["static_resources"]["listeners"] = static["static_resources"]["listeners"]
    return boot


def _with_listener_on(config: dict[str, Any], port: int) -> dict[str, Any]:
    listeners = config["static_resources"]["listeners"]
    extra = yaml.safe_load(yaml.safe_dump(listeners[0]))  # a deep copy
    extra["name"] = "chaos_taken"
    extra["address"]["socket_address"]["port_value"] = port
    return {**config, "static_resources": {**config["static_resources"],
                                           "listeners": [*listeners, extra]}}
