"""The ephemeral handover inside a pod, as the kubelet runs it: slot a's supervisor (`meshctl
run --slot a`), then an ephemeral container's (`--slot e1`), then another (`--slot e2`), all on
the pod's shared dir. No container of the pod restarts: each new slot hot-restarts from the live
one, the old one drains and goes idle; an idle ephemeral slot's supervisor exits (nothing
would restart it), slot a stays (the kubelet would restart it) and stays ready."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Meshctl, Ports, envoy_config
from .test_failures import Traffic
from .test_held_sockets import listening_inodes

pytestmark = pytest.mark.envoy


@pytest.fixture
def slots(workdir: Path, envoy_new: Path) -> Iterator[dict[str, Meshctl]]:
    found = {s: Meshctl(workdir, envoy_new, slot=s) for s in ("a", "e1", "e2")}
    yield found
    leaks = [leak for m in found.values() for leak in m.shutdown(check_files=False)]
    hr = workdir / "state" / "hr"
    leaks += [f"socket file left: {p}" for p in hr.iterdir()] if hr.is_dir() else []
    base = next((m.base_id for m in found.values() if m.base_id is not None), None)
    shm = Path("/dev/shm") / f"envoy_shared_memory_{10 * (base or 0)}"
    if shm.exists():
        leaks.append(f"shared memory left: {shm}")
        shm.unlink()
    assert not leaks, leaks


def health(m: Meshctl) -> int:
    port = int(str(m.status()["health"]).rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz/ready")
        return conn.getresponse().status
    finally:
        conn.close()


def test_two_ephemeral_slots_in_a_row_hand_over_hold_the_sockets_and_the_idle_one_exits(
        slots: dict[str, Meshctl], ports: Ports, workdir: Path, envoy_old: Path,
        envoy_new: Path) -> None:
    a, e1, e2 = slots["a"], slots["e1"], slots["e2"]
    config = envoy_config(workdir / "v1.yaml", ports)
    a.start("--drain-min-s", "0.5", config=config, envoy=envoy_old)
    sockets = listening_inodes(ports.http)

    with Traffic(ports.http) as traffic:
        e1.start("--drain-min-s", "0.5", config=config, envoy=envoy_new)
        a.wait_for(lambda s: s["phase"] == "idle", 30, "slot a to hand over")
        on_e1 = e1.wait_for(lambda s: s["held_sockets"]["sockets"] == 2, 10, "e1's hold")
        assert health(a) == 200  # the pod's probe: ready, e1 serves
        e2.start("--drain-min-s", "0.5", config=config, envoy=envoy_new)
        assert e1.wait_exit(30) == 0  # idle, and nothing would restart it
        on_e2 = e2.wait_for(lambda s: s["held_sockets"]["sockets"] == 2, 10, "e2's hold")
        time.sleep(6)  # Envoy asks its (gone) parent for stats every ~5 s: e2 answers

    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert set(traffic.stats.by_epoch) == {"0", "1", "2"}, traffic.stats.to_json()
    assert (on_e1["live"]["epoch"], on_e1["live"]["version"]) == (1, "1.40.0")
    assert on_e2["live"]["epoch"] == 2
    assert listening_inodes(ports.http) == sockets  # handed over, never rebound
    # The slot whose generation is LIVE holds the listening sockets; each one that handed
    # over dropped its hold.
    assert "closed 2 held listening socket(s): slot e1 took over" in a.supervisor_log()
    assert "closed 2 held listening socket(s): slot e2 took over" in e1.supervisor_log()
    # It left only once e2's stand-in answered on its ended generation's socket (Trap 2).
    assert "ephemeral slot e1: idle, exiting\n" in e1.supervisor_log()
    snap = a.status()
    assert snap["phase"] == "idle" and snap["pod"]["serving"] is True
    assert snap["held_sockets"]["sockets"] == 0
    assert health(a) == 200

    # Pod shutdown: SIGTERM to every container; the live slot drains, the idle one leaves.
    e2.signal(signal.SIGTERM)
    a.signal(signal.SIGTERM)
    assert a.wait_exit(30) == 0 and e2.wait_exit(60) == 0


def test_when_the_ephemeral_slot_dies_with_its_container_the_idle_slot_a_serves_again(
        slots: dict[str, Meshctl], ports: Ports, workdir: Path, envoy_old: Path,
        envoy_new: Path) -> None:
    a, e1 = slots["a"], slots["e1"]
    config = envoy_config(workdir / "v1.yaml", ports)
    a.start("--drain-min-s", "0.5", config=config, envoy=envoy_old)
    e1.start("--drain-min-s", "0.5", config=config, envoy=envoy_new)
    a.wait_for(lambda s: s["phase"] == "idle", 30, "slot a to hand over")
    live = e1.wait_for(lambda s: s["held_sockets"]["sockets"] == 2, 10, "e1's hold")["live"]

    with Traffic(ports.http) as traffic:
        # The container's end: its PID 1 (the supervisor) and every process in it, at once;
        # nothing restarts an ephemeral container.
        assert e1.proc is not None
        for pid in (e1.proc.pid, live["keeper_pid"], live["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        e1.wait_exit(10)
        snap = a.wait_for(lambda s: s["phase"] == "running", 30, "slot a to serve again")
        back_s = time.monotonic() - killed
        time.sleep(1)

    print({"traffic": traffic.stats.to_json(), "serving_again_after_s": round(back_s, 2)})
    assert (snap["live"]["epoch"], snap["live"]["version"]) == (2, "1.39.3")
    assert "ephemeral slot e1 is gone and nothing serves; starting again" in a.supervisor_log()
    assert health(a) == 200
    assert traffic.stats.by_epoch.get("2", 0) > 0, traffic.stats.to_json()
    a.wait_for(lambda s: s["held_sockets"]["sockets"] == 2, 10, "slot a's hold again")
