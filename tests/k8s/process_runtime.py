"""A runtime for the fake kubelet that runs real processes: the proxy image is `meshctl run`
with a real Envoy, the standby image is `meshctl standby`, as their Dockerfiles' ENTRYPOINTs
say (deploy/images/). Readiness is the container's own readiness probe: GET /healthz/ready on
its health port.

The pod's paths and ports are mapped to this machine: the emptyDir to a temp dir shared by the
pod's containers, /etc/meshctl/envoy.yaml to the test's Envoy config, and each slot's health
port to a free loopback port. A container with a `command` of `meshctl ...` (the ephemeral
handover's check) runs that meshctl command instead of its image's ENTRYPOINT. Every process
gets its own session and is stopped by pid.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.conftest import free_port

IDLE = [sys.executable, "-c",
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "time.sleep(3600)\n"]


MESHCTL = [sys.executable, "-m", "meshctl"]


def _command(pod: Mapping[str, Any], container_name: str) -> list[str]:
    """The container's `command` (overriding its image's ENTRYPOINT), if it has one."""
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for container in spec.get(key) or []:
            if container.get("name") == container_name:
                return [str(c) for c in container.get("command") or []]
    return []


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    health_port: int | None
    log: Path
    started_at: float


class ProcessRuntime:
    def __init__(self, root: Path, images: Mapping[str, list[str]], config: Path) -> None:
        """`images`: image reference -> the command its ENTRYPOINT runs (args are appended);
        other images (the application) run an idle process, always ready."""
        self.root = root
        self.images = dict(images)
        self.config = config
        self.procs: dict[str, _Proc] = {}
        self._ids = itertools.count(1)
        self._ports: dict[tuple[str, str], int] = {}

    def pod_dir(self, pod: str) -> Path:
        return self.root / pod

    def health_port(self, pod: str, container: str) -> int:
        """The same loopback port for a container across its restarts, as the pod's port."""
        return self._ports.setdefault((pod, container), free_port())

    def start(self, pod: Mapping[str, Any], container_name: str, image: str,
              args: Sequence[str]) -> str:
        name = str(pod["metadata"]["name"])
        container_id = f"proc-{next(self._ids):08d}"
        log = self.root / f"{name}-{container_name}-{container_id}.log"
        entry = self.images.get(image)
        command = _command(pod, container_name)
        port: int | None = None
        if entry is not None and command:
            # An image of ours run with its own command (the handover check, `meshctl
            # pod-check`): meshctl as this test runs it, the pod's paths mapped.
            argv = [*MESHCTL, *command[1:], *self._local(list(args), name, 0, run=False)]
        elif entry is None:
            argv = IDLE
        else:
            port = self.health_port(name, container_name)
            argv = [*entry, *self._local(list(args), name, port)]
        self.root.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[container_id] = _Proc(popen, port, log, time.monotonic())
        return container_id

    def _local(self, args: list[str], pod: str, port: int, *, run: bool = True) -> list[str]:
        mapped = []
        values = iter(args)
        for arg in values:
            if arg == "--state-dir":
                mapped += [arg, str(self.pod_dir(pod)), ]
                next(values)
            elif arg == "--config":
                mapped += [arg, str(self.config)]
                next(values)
            elif arg == "--health-address":
                mapped += [arg, f"127.0.0.1:{port}"]
                next(values)
            else:
                mapped.append(arg)
        return [*mapped, "--drain-min-s", "0.5"] if run and "--slot" in mapped else mapped

    def started_at(self, container_id: str) -> float | None:
        proc = self.procs.get(container_id)
        return None if proc is None else proc.started_at

    def stop(self, container_id: str) -> None:
        proc = self.procs.get(container_id)
        if proc is None or proc.popen.poll() is not None:
            return
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=60)  # the pod's terminationGracePeriodSeconds
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.kill()
            proc.popen.wait()

    def ready(self, container_id: str) -> bool:
        proc = self.procs.get(container_id)
        if proc is None or proc.popen.poll() is not None:
            return False
        if proc.health_port is None:
            return True
        conn = http.client.HTTPConnection("127.0.0.1", proc.health_port, timeout=1)
        try:
            conn.request("GET", "/healthz/ready")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def exited(self, container_id: str) -> int | None:
        proc = self.procs.get(container_id)
        return None if proc is None else proc.popen.poll()

    def stop_all(self) -> None:
        for container_id in list(self.procs):
            self.stop(container_id)


CRASHING = "registry.example/meshctl/proxy:segfaults"
"""An image whose Envoy passes pre-flight (--version, --hot-restart-version) and then dies of
SIGSEGV at start."""
MESHCTL = [sys.executable, "-m", "meshctl"]


@contextlib.contextmanager
def real_pod(pod: str, config_for: Callable[[Path], Path], envoy_old: Path, envoy_new: Path,
             images: Mapping[str, Path], standby: str, prefix: str) -> Iterator[ProcessRuntime]:
    """A ProcessRuntime whose images are `meshctl run` on real Envoy binaries (`images`: image
    -> binary, plus CRASHING) and `meshctl standby`; at the end, every process stopped and
    nothing left in the pod's hot-restart dir."""
    import shutil  # noqa: PLC0415
    import stat  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix=prefix))  # short: Unix socket paths
    crashing = root / "crashing-envoy"
    crashing.write_text("#!/bin/sh\n"
                        'case " $* " in *" --version "*|*" --hot-restart-version "*)\n'
                        f'  exec {envoy_new} "$@";;\nesac\nkill -SEGV $$\n')
    crashing.chmod(crashing.stat().st_mode | stat.S_IXUSR)
    commands = {image: [*MESHCTL, "run", "--envoy", str(binary)]
                for image, binary in images.items()}
    commands[CRASHING] = [*MESHCTL, "run", "--envoy", str(crashing)]
    commands[standby] = [*MESHCTL, "standby"]
    runtime = ProcessRuntime(root, commands, config=config_for(root / "envoy.yaml"))
    try:
        yield runtime
    finally:
        runtime.stop_all()
        leftovers = list((runtime.pod_dir(pod) / "hr").glob("*"))
        shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, leftovers
