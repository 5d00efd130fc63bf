"""Fifty upgrades in a row under traffic, alternating Envoy 1.39.3 and 1.40.0, every fifth one
failing (a listener port taken: the case that wedges Envoy's hot restart), and five kill -9 of
the live Envoy between them (each restart takes the held listening sockets): no failed request
but the ones in flight on a killed process, and nothing accumulates in the supervisor (file
descriptors: held sockets, stand-ins) or on the host."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from meshctl.manager import operations

from .conftest import Meshctl, Ports, envoy_config
from .test_failures import Traffic
from .test_held_sockets import in_flight_on

pytestmark = pytest.mark.envoy

UPGRADES = 50


def footprint(meshctl: Meshctl) -> dict[str, object]:
    """The supervisor's resting footprint: the least seen over a second, since its loop holds
    short-lived descriptors now and then (a netlink socket while counting connections, a
    control connection while answering)."""
    assert meshctl.proc is not None
    sup = psutil.Process(meshctl.proc.pid)
    fds, threads = [], []
    for _ in range(20):
        fds.append(sup.num_fds())
        threads.append(sup.num_threads())
        time.sleep(0.05)
    return {"fds": min(fds), "threads": min(threads),
            "children": sorted(p.pid for p in sup.children(recursive=True))}


def test_fifty_upgrades_with_every_fifth_failing_lose_no_request_and_leak_nothing(
        meshctl: Meshctl, ports: Ports, workdir: Path, envoy_old: Path, envoy_new: Path) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start("--drain-min-s", "0.2", "--drain-max-s", "10", "--stop-grace-s", "2",
                  "--restart-window-s", "10", config=config, envoy=envoy_old)
    taken = socket.create_server(("127.0.0.1", 0))
    bad = envoy_config(workdir / "taken.yaml", ports, extra_listener=int(taken.getsockname()[1]))
    results: list[str] = []
    kills: list[float] = []
    baseline: dict[str, object] = {}
    started = time.monotonic()
    try:
        with Traffic(ports.http) as traffic:
            for i in range(1, UPGRADES + 1):
                failing = i % 5 == 0
                record = operations.upgrade(
                    meshctl.state_dir, envoy=str(envoy_new if i % 2 else envoy_old),
                    config=bad if failing else config, wait=True, timeout_s=60,
                    run_preflight=True, drain={})
                results.append(record["result"])
                assert record["result"] == ("rolled_back" if failing else "succeeded"), record
                if i == 5:
                    baseline = footprint(meshctl)
                if i % 10 == 7:  # a crash between upgrades
                    pid = meshctl.status()["live"]["pid"]
                    kills.append(time.monotonic())
                    os.kill(pid, signal.SIGKILL)
                    meshctl.wait_for(lambda s, pid=pid: s["phase"] == "running"
                                     and s["live"]["pid"] != pid, 30, "the restart")
    finally:
        taken.close()
    elapsed = time.monotonic() - started
    lost, wrong = in_flight_on(traffic.stats, kills)
    print({"elapsed_s": round(elapsed, 1), "traffic": traffic.stats.to_json(),
           "in_flight_on_killed_processes": len(lost), "baseline": baseline})

    assert not wrong and traffic.stats.http_error == 0, (wrong, traffic.stats.to_json())
    assert len(kills) == 5 and meshctl.status()["crashes"]["total"] == 5
    assert results.count("rolled_back") == UPGRADES // 5
    snap = meshctl.status()
    live = snap["live"]
    assert [g["epoch"] for g in snap["generations"]] == [live["epoch"]]
    # Nothing accumulates: file descriptors, threads, child processes (keeper + Envoy).
    now = footprint(meshctl)
    assert now["fds"] == baseline["fds"] and now["threads"] == baseline["threads"], (baseline, now)
    assert now["children"] == sorted([live["keeper_pid"], live["pid"]])
    # On the host: the live generation's sockets (and the stand-in answering on its parent's,
    # if that one was ended early), one shared-memory file.
    files = {p.name for p in (meshctl.state_dir / "hr").iterdir()}
    epoch, base = live["epoch"], snap["base_id"]
    own = {f"envoy_{role}_{10 * base + epoch % 3}"
           for role in ("parent", "child", "udp_parent", "udp_child")}
    parent = f"envoy_parent_{10 * base + (epoch - 1) % 3}"
    assert own <= files <= own | {parent}, files
    assert [p.name for p in Path("/dev/shm").glob(f"envoy_shared_memory_{10 * base}*")] == \
        [f"envoy_shared_memory_{10 * base}"]
    assert elapsed < 300
