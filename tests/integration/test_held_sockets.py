"""An Envoy that dies on its own refuses no connection: the supervisor holds duplicates of the
live generation's listening sockets and hands them to the restarted generation (docs/
reliability.md, "Crashes refuse nothing"). Real Envoy, real client sockets, kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from meshctl.demo.loadgen import LoadGen, LoadStats
from meshctl.exitcodes import ExitCode

from .conftest import Meshctl, Ports, envoy_config, free_port
from .test_pod_slots import swap
from .test_xds import Mesh, _start


@contextlib.contextmanager
def xds_mesh(workdir: Path, ports: Ports) -> Iterator[Mesh]:
    mesh = Mesh(workdir, ports)
    try:
        yield mesh
    finally:
        mesh.close()


def xds_start(meshctl: Meshctl, mesh: Mesh, envoy: Path) -> None:
    _start(meshctl, mesh, envoy)

pytestmark = pytest.mark.envoy


def listening_inodes(port: int) -> set[int]:
    """The kernel's listening sockets on a loopback TCP port, by inode (/proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], int(fields[9])
        if state == "0A" and int(local.split(":")[1], 16) == port:
            found.add(inode)
    return found


def refused(port: int) -> bool:
    """True when a connection is refused at once; False when it is accepted (or queued)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def split(stats: LoadStats, killed_mono: float) -> tuple[list[str], list[str]]:
    return in_flight_on(stats, [killed_mono])


def in_flight_on(stats: LoadStats, kills: list[float | tuple[float, float]]
                 ) -> tuple[list[str], list[str]]:
    """Failures in flight on a killed process (their connection was open before it died and
    failed after the kill began: they cannot be saved), and every other one (which must not
    exist). A kill is a moment, or a window (start, dead) when its moment is not known: an
    OOM kill happens somewhere while the process grows."""
    windows = [k if isinstance(k, tuple) else (k, k) for k in kills]
    lost, wrong = [], []
    for f in stats.failures:
        if f.error != "ConnectionRefusedError" and any(
                f.opened_mono < dead and f.failed_mono >= start for start, dead in windows):
            lost.append(f.error)
        else:
            wrong.append(f"{f.error} on a connection opened at {f.opened_mono:.3f}, failed at "
                         f"{f.failed_mono:.3f}, kills at {windows} (reused: {f.reused})")
    return lost, wrong


def test_a_crash_under_load_refuses_no_connection_and_the_restart_takes_the_same_sockets(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start(config=envoy_config(workdir / "v1.yaml", ports))
    held = meshctl.status()["held_sockets"]
    assert held["sockets"] == 2 and held["addresses"] == [f"tcp://127.0.0.1:{ports.http}"], held
    assert "meshctl_held_listen_sockets 2.0" in metrics_text(meshctl)
    assert f"held sockets: 2 for tcp://127.0.0.1:{ports.http}" in meshctl.cli("status").stdout
    before = listening_inodes(ports.http)
    assert len(before) == 2, before  # one per worker: Envoy's reuse_port

    load = LoadGen("127.0.0.1", ports.http, keepalive_workers=2, new_conn_workers=4).start()
    time.sleep(1.0)
    pid = meshctl.status()["live"]["pid"]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    snap = meshctl.wait_for(lambda s: s["phase"] == "running" and s["live"]["pid"] != pid, 30,
                            "the restart after the crash")
    time.sleep(1.0)
    stats = load.stop()

    lost, wrong = split(stats, killed)
    print({"traffic": stats.to_json() | {"failures": len(stats.failures)},
           "in_flight_on_the_dead_process": len(lost), "held": snap["held_sockets"]})
    assert not wrong, wrong
    assert stats.ok > 0 and stats.errors.get("ConnectionRefusedError", 0) == 0
    assert listening_inodes(ports.http) == before  # adopted, not bound anew
    assert snap["held_sockets"]["given"] == 2 and snap["held_sockets"]["pending"] == 0
    assert snap["crashes"]["total"] == 1


def test_a_crash_loop_given_up_closes_the_held_sockets_so_clients_fail_fast(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start("--max-restarts", "1", "--restart-window-s", "60",
                  config=envoy_config(workdir / "v1.yaml", ports))
    for _ in range(2):
        pid = meshctl.status()["live"]["pid"]
        os.kill(pid, signal.SIGKILL)
        if _ == 0:
            meshctl.wait_for(lambda s, pid=pid: s["phase"] == "running"
                             and s["live"]["pid"] != pid, 30, "the restart")

    assert meshctl.wait_exit(30) == ExitCode.FAILED
    assert "closed 2 held listening socket(s): giving up" in meshctl.supervisor_log()
    assert refused(ports.http)


def test_a_stopping_supervisor_leaves_no_backlog_behind(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start(config=envoy_config(workdir / "v1.yaml", ports))
    assert meshctl.status()["held_sockets"]["sockets"] == 2
    meshctl.signal(signal.SIGTERM)
    assert meshctl.wait_exit(60) == 0
    assert "closed 2 held listening socket(s): the supervisor is stopping" in \
        meshctl.supervisor_log()
    assert refused(ports.http)


def test_a_listener_the_new_config_removes_refuses_at_once_not_when_the_drain_ends(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    extra = free_port()
    meshctl.start("--drain-min-s", "30", "--drain-max-s", "60",
                  config=envoy_config(workdir / "v1.yaml", ports, extra_listener=extra))
    assert meshctl.status()["held_sockets"]["sockets"] == 4
    done = meshctl.cli("upgrade", "--config", str(envoy_config(workdir / "v2.yaml", ports)),
                       "-o", "json")
    assert done.returncode == 0, done.stderr
    snap = meshctl.wait_for(lambda s: s["phase"] == "draining", 30, "the old one draining")

    assert snap["held_sockets"]["sockets"] == 2
    assert snap["held_sockets"]["addresses"] == [f"tcp://127.0.0.1:{ports.http}"]
    assert refused(extra)  # not queued in a socket only we still held
    assert not refused(ports.http)


# ----------------------------------------------------------------- listeners from a control plane

def test_a_listener_lds_adds_is_held_and_one_it_removes_is_not(
        meshctl: Meshctl, ports: Ports, workdir: Path, envoy_new: Path) -> None:
    with xds_mesh(workdir, ports) as mesh:
        xds_start(meshctl, mesh, envoy_new)
        removed, added = mesh.ports[1], free_port()
        meshctl.wait_for(lambda s: s["held_sockets"]["sockets"] == 4, 15, "4 held sockets")

        mesh.plane.set_snapshot(mesh.snapshot("2", ports=[*mesh.ports, added]))
        snap = meshctl.wait_for(lambda s: s["held_sockets"]["sockets"] == 6, 15,
                                "the added listener's sockets held")
        assert f"tcp://127.0.0.1:{added}" in snap["held_sockets"]["addresses"]

        mesh.plane.set_snapshot(mesh.snapshot("3", ports=[ports.http]))
        snap = meshctl.wait_for(lambda s: s["held_sockets"]["sockets"] == 2, 15,
                                "the removed listeners' sockets closed")

        assert snap["held_sockets"]["addresses"] == [f"tcp://127.0.0.1:{ports.http}"]
        assert refused(removed) and refused(added)


def test_a_crash_while_the_control_plane_is_down_refuses_nothing_and_loses_only_what_was_in_flight(
        meshctl: Meshctl, ports: Ports, workdir: Path, envoy_new: Path) -> None:
    """The restarted generation goes LIVE with no listener (LDS has not answered); the held
    sockets wait for it, queueing connections, and it takes them when the control plane is
    back."""
    with xds_mesh(workdir, ports) as mesh:
        xds_start(meshctl, mesh, envoy_new)
        meshctl.wait_for(lambda s: s["held_sockets"]["sockets"] == 4, 15, "4 held sockets")
        loads = [LoadGen("127.0.0.1", port, keepalive_workers=1, new_conn_workers=2,
                         timeout_s=20).start() for port in mesh.ports]
        time.sleep(1.0)
        mesh.plane.go_down()
        pid = meshctl.status()["live"]["pid"]
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        meshctl.wait_for(lambda s: s["phase"] == "running" and s["live"]["pid"] != pid, 30,
                         "the restart, LIVE without its listeners")
        pending = meshctl.status()["held_sockets"]
        time.sleep(2.0)
        mesh.plane.come_back()
        snap = meshctl.wait_for(lambda s: s["held_sockets"]["pending"] == 0, 30,
                                "the restarted generation taking the held sockets")
        time.sleep(1.0)
        stats = LoadStats()
        for load in loads:
            stats.merge(load.stop())

    lost, wrong = split(stats, killed)
    print({"traffic": stats.to_json(), "in_flight_on_the_dead_process": len(lost),
           "pending_at_live": pending, "held": snap["held_sockets"]})
    assert pending["pending"] == 4, pending
    assert not wrong, wrong
    assert snap["held_sockets"]["given"] == 4


# ----------------------------------------------------------------- UDP

UDP_LISTENER = """
  - name: udp
    address:
      socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: {port}}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: udp
        matcher:
          on_no_match:
            action:
              name: route
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
                cluster: udp_echo
"""
UDP_CLUSTER = """  clusters:
  - name: udp_echo
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: udp_echo
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {port}}}
"""


def udp_inodes(port: int) -> set[int]:
    found = set()
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            found.add(int(fields[9]))
    return found


@contextlib.contextmanager
def udp_echo() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = False

    def serve() -> None:
        while not stop:
            with contextlib.suppress(TimeoutError, OSError):
                data, peer = sock.recvfrom(2048)
                sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop = True
        thread.join(2)
        sock.close()


def echoed(port: int, payload: bytes, timeout_s: float = 2.0) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(timeout_s)
        client.sendto(payload, ("127.0.0.1", port))
        try:
            return client.recv(2048) == payload
        except TimeoutError:
            return False


def test_udp_listening_sockets_are_held_and_handed_over_too(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    udp_port = free_port()
    with udp_echo() as echo_port:
        config = envoy_config(workdir / "v1.yaml", ports)
        config.write_text(config.read_text() + UDP_LISTENER.format(port=udp_port)
                          + UDP_CLUSTER.format(port=echo_port))
        meshctl.start(config=config)
        held = meshctl.status()["held_sockets"]
        assert f"udp://127.0.0.1:{udp_port}" in held["addresses"] and held["sockets"] == 4
        before = udp_inodes(udp_port)
        assert echoed(udp_port, b"before")

        pid = meshctl.status()["live"]["pid"]
        os.kill(pid, signal.SIGKILL)
        meshctl.wait_for(lambda s: s["phase"] == "running" and s["live"]["pid"] != pid, 30,
                         "the restart")

        assert udp_inodes(udp_port) == before  # the same sockets, never unbound
        assert any(echoed(udp_port, b"after %d" % i) for i in range(5))


# ----------------------------------------------------------------- in a pod, without privileges

NO_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all",
                   "--no-new-privs", "--"]
"""As a proxy container runs: no capability at all (and none to gain), so no ptrace, no
pidfd_getfd, nothing beyond what any user may do with Unix sockets."""


def capabilities(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff line")


def test_in_a_pod_without_capabilities_the_slot_that_took_over_holds_the_sockets_and_a_crash_refuses_nothing(  # noqa: E501
        pod: tuple[Meshctl, Meshctl], ports: Ports, workdir: Path, envoy_new: Path) -> None:
    a, b = pod
    a.wrap = b.wrap = NO_CAPABILITIES
    config = envoy_config(workdir / "v1.yaml", ports)
    a.start("--drain-min-s", "0.5", config=config)
    assert a.proc is not None and capabilities(a.proc.pid) == 0
    assert a.status()["held_sockets"]["sockets"] == 2
    before = listening_inodes(ports.http)

    load = LoadGen("127.0.0.1", ports.http, keepalive_workers=2, new_conn_workers=4).start()
    swap(a, b, config, envoy_new)
    assert b.status()["held_sockets"]["sockets"] == 2
    assert "closed 2 held listening socket(s): slot b took over" in a.supervisor_log()
    time.sleep(0.5)
    pid = b.status()["live"]["pid"]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    snap = b.wait_for(lambda s: s["phase"] == "running" and s["live"]["pid"] != pid, 30,
                      "slot b's restart after the crash")
    time.sleep(1.0)
    stats = load.stop()

    lost, wrong = split(stats, killed)
    print({"traffic": stats.to_json(), "in_flight_on_the_dead_process": len(lost),
           "held": snap["held_sockets"]})
    assert not wrong, wrong
    assert snap["held_sockets"]["given"] == 2
    assert listening_inodes(ports.http) == before  # the sockets slot a's first Envoy bound


# ----------------------------------------------------------------- the kernel's OOM killer

MEMCG = Path("/sys/fs/cgroup/memory")

BUFFERING_ROUTE = """
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 1073741824
"""


@contextlib.contextmanager
def memory_limited(pid: int, limit_bytes: int) -> Iterator[Path]:
    """Moves `pid` into a cgroup v1 memory cgroup of its own with a limit, as a container's
    memory limit is. Its memory charged so far stays where it was: the limit is on what it
    allocates from now on."""
    if not (MEMCG / "cgroup.procs").exists():
        pytest.fail("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    group = MEMCG / f"meshctl-test-{os.getpid()}-{pid}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        (group / "cgroup.procs").write_text(str(pid))
        yield group
    finally:
        for _ in range(50):  # rmdir works once the killed process is gone from it
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def alive(pid: int) -> bool:
    """Running, not a zombie (the keeper reaps it a moment later)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def oom_kills(group: Path) -> int:
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def post_endless_body(port: int) -> None:
    """A request whose body Envoy's buffer filter keeps in memory until the kernel kills it."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                 timeout=30) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        chunk = b"x" * (1 << 20)
        for _ in range(1000):
            sock.sendall(chunk)


def test_an_oom_kill_by_the_memory_limit_refuses_no_connection(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    text = config.read_text()
    router = "          - name: envoy.filters.http.router"
    assert router in text
    config.write_text(text.replace(router, BUFFERING_ROUTE.strip("\n") + "\n" + router, 1))
    meshctl.start(config=config)
    pid = meshctl.status()["live"]["pid"]

    with memory_limited(pid, 64 << 20) as group:
        load = LoadGen("127.0.0.1", ports.http, keepalive_workers=2, new_conn_workers=4).start()
        time.sleep(1.0)
        started = time.monotonic()
        post_endless_body(ports.http)
        while alive(pid):
            time.sleep(0.005)
        dead = time.monotonic()
        snap = meshctl.wait_for(lambda s: s["phase"] == "running" and s["live"]["pid"] != pid,
                                60, "the restart after the OOM kill")
        time.sleep(1.0)
        stats = load.stop()
        kills = oom_kills(group)

    lost, wrong = in_flight_on(stats, [(started, dead)])
    print({"traffic": stats.to_json(), "in_flight_on_the_dead_process": len(lost),
           "oom_kills": kills, "kill_window_s": round(dead - started, 3),
           "held": snap["held_sockets"]})
    assert kills == 1
    assert "SIGKILL" in meshctl.supervisor_log()
    assert not wrong, wrong
    assert snap["held_sockets"]["given"] == 2


def test_no_hold_sockets_holds_nothing_and_says_so(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start("--no-hold-sockets", config=envoy_config(workdir / "v1.yaml", ports))
    assert meshctl.status()["held_sockets"]["sockets"] == 0
    shown = meshctl.cli("status")
    assert "held sockets: none (a crash refuses connections" in shown.stdout, shown.stdout
    assert "meshctl_held_listen_sockets 0.0" in metrics_text(meshctl)


def metrics_text(meshctl: Meshctl) -> str:
    with urllib.request.urlopen(f"http://{meshctl.status()['health']}/metrics",
                                timeout=5) as resp:
        return str(resp.read().decode())


# ----------------------------------------------------------------- a recovery after a late failure

def test_a_recovery_takes_the_held_sockets_when_the_old_generation_closed_its_own(
        meshctl: Meshctl, ports: Ports, workdir: Path, silent_server: int) -> None:
    """Found by the chaos run (seed 5, kill_new): a new generation that fails after it made
    the old one close its listeners leaves the held sockets the only ones; the recovery
    generation (Trap 1) must take them, with the connections queued in them, not bind new
    ones (which reset the queued ones when the hold follows). Here the old generation closes
    its listeners through its admin API (/drain_listeners), then an upgrade to a config on
    another port hangs in init until the ready timeout, and the recovery follows."""
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start("--drain-min-s", "0.2", "--drain-max-s", "5", "--stop-grace-s", "2",
                  config=config)
    other = Ports()
    hangs = envoy_config(workdir / "hang.yaml", other, xds_hang=silent_server)
    before = listening_inodes(ports.http)
    load = LoadGen("127.0.0.1", ports.http, keepalive_workers=0, new_conn_workers=4,
                   timeout_s=30).start()
    time.sleep(0.5)
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{ports.admin}/drain_listeners", method="POST"), timeout=5).close()
    done = meshctl.cli("upgrade", "--config", str(hangs), "--ready-timeout-s", "3", "--wait",
                       "-o", "json")
    snap = meshctl.wait_for(lambda s: s["phase"] == "running", 30, "the recovery's end")
    time.sleep(0.5)
    stats = load.stop()

    record = json.loads(done.stdout)
    print({"traffic": stats.to_json(), "record": {k: record.get(k) for k in
                                                  ("result", "recovery", "error")}})
    assert (record["result"], record["recovery"]) == ("rolled_back", "recovered"), record
    assert "relay bound at" in meshctl.supervisor_log()
    assert stats.failed == 0 and stats.ok > 0, stats.to_json()  # the queued ones served
    assert listening_inodes(ports.http) == before
    assert snap["held_sockets"]["sockets"] == 2
