"""The drain window on real Envoy and real client sockets: ends early when idle, bounded by
drain_max_s, forced closes counted, the new generation unharmed, same policy on shutdown."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meshctl.demo.loadgen import LoadGen

from .conftest import EchoUpstream, Meshctl, Ports, envoy_config

pytestmark = pytest.mark.envoy


def get(port: int, path: str = "/") -> tuple[int, str, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), resp.getheader("x-meshctl-epoch")
    finally:
        conn.close()


def open_stream(port: int) -> socket.socket:
    """A long-lived TCP stream through the tcp_proxy listener, checked end to end."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"ping")
    assert sock.recv(16) == b"ping"
    return sock


def closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_an_idle_upgrade_ends_within_drain_min_plus_a_few_seconds_even_with_a_long_max(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start("--drain-min-s", "2", "--drain-max-s", "60",
                  config=envoy_config(workdir / "v1.yaml", ports))

    done = meshctl.cli("upgrade", "--wait", "-o", "json")

    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["drain_end"] == "idle" and record["forced_closes"] == 0
    assert 2.0 <= record["drain_s"] < 2.0 + 2.0
    assert record["total_s"] < 2.0 + 3.0
    assert record["drain_policy"] == {"drain_min_s": 2.0, "drain_max_s": 60.0,
                                      "strategy": "immediate"}


def test_a_long_lived_stream_holds_the_old_generation_until_drain_max_then_is_one_forced_close(
        meshctl: Meshctl, ports: Ports, workdir: Path, upstream: EchoUpstream) -> None:
    config = envoy_config(workdir / "v1.yaml", ports, tcp_upstream=upstream.port)
    meshctl.start("--drain-min-s", "1", "--drain-max-s", "5", config=config)
    stream = open_stream(ports.tcp)
    try:
        cmd = [sys.executable, "-m", "meshctl", "upgrade", "--wait", "-o", "json",
               "--state-dir", str(meshctl.state_dir)]
        started = time.monotonic()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as upgrade:
            during = meshctl.wait_for(
                lambda s: (s.get("upgrade") or {}).get("drain", {}).get("connections") == 1,
                15, "the drain to see the open stream")
            stream.sendall(b"still")  # the old generation still carries it
            assert stream.recv(16) == b"still"
            assert closed_by_peer(stream, timeout_s=15), "the stream was not closed"
            closed_after = time.monotonic() - started
            out, err = upgrade.communicate(timeout=30)
    finally:
        stream.close()

    assert upgrade.returncode == 0, err
    record = json.loads(out)
    assert record["drain_end"] == "deadline"
    assert record["forced_closes"] == 1
    assert 5.0 <= record["drain_s"] < 5.0 + 3.0
    assert 5.0 <= closed_after < 5.0 + 8.0
    assert 0 < during["upgrade"]["drain"]["time_left_s"] <= 5.0
    # An idle stream leaves the old generation's CPU clock still: every due reading is taken.
    assert record["drain_readings"]["skipped"] == 0 and record["drain_readings"]["taken"] >= 2
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "upgrade_progress"]
    assert any(e.get("connections") == 1 and "time_left_s" in e for e in progress), err
    log = meshctl.supervisor_log()
    assert "drain window ends (deadline)" in log and "1 connection(s) left" in log
    assert "epoch 0: asking to stop (SIGTERM)" in log and "epoch 0: stopped" in log, log
    # Its exit ran at idle priority (every Envoy thread moved), and still closed the stream.
    assert re.search(r"epoch 0: [1-9]\d* thread\(s\) to idle priority for the exit", log), log
    # The new generation carries new streams.
    again = open_stream(ports.tcp)
    again.close()


def test_while_the_old_generation_visibly_serves_its_connections_are_not_read_until_the_deadline(
        meshctl: Meshctl, ports: Ports, workdir: Path, upstream: EchoUpstream) -> None:
    config = envoy_config(workdir / "v1.yaml", ports, tcp_upstream=upstream.port)
    meshctl.start("--drain-min-s", "1", "--drain-max-s", "4", config=config)
    stream = open_stream(ports.tcp)
    stop = threading.Event()
    echoes = [0]

    def ping_pong() -> None:  # keeps the old generation busy forwarding, as a live stream does
        with contextlib.suppress(OSError):
            while not stop.is_set():
                stream.sendall(b"x" * 512)
                got = 0
                while got < 512:
                    chunk = stream.recv(4096)
                    if not chunk:
                        return
                    got += len(chunk)
                echoes[0] += 1

    pinger = threading.Thread(target=ping_pong, daemon=True)
    pinger.start()
    try:
        done = meshctl.cli("upgrade", "--wait", "-o", "json")
    finally:
        stop.set()
        pinger.join(timeout=10)
        stream.close()

    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    # Every look found its CPU clock moving: no sock_diag dump until the deadline forced one,
    # which found the stream and closed it.
    readings = record["drain_readings"]
    assert readings["skipped"] >= 3 and readings["taken"] >= 1, readings
    assert record["drain_end"] == "deadline" and record["forced_closes"] == 1, record
    assert 4.0 <= record["drain_s"] < 4.0 + 3.0
    assert echoes[0] > 100


def test_the_new_generation_is_live_and_serving_30s_after_an_early_end_and_upgrades_again(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start("--drain-min-s", "1", "--drain-max-s", "60",
                  config=envoy_config(workdir / "v1.yaml", ports))
    first = json.loads(meshctl.cli("upgrade", "--wait", "-o", "json").stdout)
    assert first["drain_end"] == "idle" and first["drain_s"] < 5
    new_pid = first["to_pid"]

    # Envoy's child sends its parent stats requests every few seconds and its parent-shutdown
    # Terminate later (Trap 2): 30 s covers several of them, answered by the stand-in.
    deadline = time.monotonic() + 30
    checks = 0
    while time.monotonic() < deadline:
        assert get(ports.http) == (200, "v1", "1")
        assert get(ports.admin, "/ready")[:2] == (200, "LIVE\n")
        checks += 1
        time.sleep(0.5)
    snap = meshctl.status()
    assert snap["live"]["pid"] == new_pid and snap["phase"] == "running"

    second = meshctl.cli("upgrade", "--wait", "-o", "json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["result"] == "succeeded"
    assert get(ports.http)[2] == "2"
    assert checks > 40


def test_a_keep_alive_client_sees_no_failed_request_during_the_drain(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start("--drain-min-s", "1", "--drain-max-s", "30",
                  config=envoy_config(workdir / "v1.yaml", ports))
    load = LoadGen("127.0.0.1", ports.http, keepalive_workers=6, new_conn_workers=0).start()
    time.sleep(1)

    done = meshctl.cli("upgrade", "--wait", "-o", "json")
    time.sleep(1)
    stats = load.stop()

    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert stats.failed == 0 and stats.http_error == 0, stats.to_json()
    assert stats.by_epoch["0"] > 0 and stats.by_epoch["1"] > 0
    # Envoy asked every keep-alive connection to close (Connection: close): the clients moved
    # to the new generation and the old one went idle well before the deadline.
    assert record["drain_end"] == "idle" and record["drain_s"] < 10, record


def test_sigterm_on_an_idle_proxy_drains_for_drain_min_then_exits_0(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start("--drain-min-s", "1", "--drain-max-s", "60",
                  config=envoy_config(workdir / "v1.yaml", ports))
    started = time.monotonic()

    meshctl.signal(signal.SIGTERM)

    assert meshctl.wait_exit(30) == 0
    assert 1.0 <= time.monotonic() - started < 1.0 + 4.0
    assert "shutdown drain ends (idle)" in meshctl.supervisor_log()


def test_sigterm_with_an_open_stream_ends_the_drain_at_drain_max_and_closes_it(
        meshctl: Meshctl, ports: Ports, workdir: Path, upstream: EchoUpstream) -> None:
    config = envoy_config(workdir / "v1.yaml", ports, tcp_upstream=upstream.port)
    meshctl.start("--drain-min-s", "1", "--drain-max-s", "4", "--stop-grace-s", "2",
                  config=config)
    stream = open_stream(ports.tcp)
    try:
        started = time.monotonic()
        meshctl.signal(signal.SIGTERM)
        assert closed_by_peer(stream, timeout_s=20)
        closed_after = time.monotonic() - started
        assert meshctl.wait_exit(30) == 0
        exited_after = time.monotonic() - started
    finally:
        stream.close()

    budget = 4 + 2 * 2  # drain_max_s + 2 * stop_grace_s: the documented shutdown budget
    assert 4.0 <= closed_after < budget
    assert exited_after < budget
    assert "shutdown drain ends (deadline), 1 connection(s) left" in meshctl.supervisor_log()


def test_a_settings_file_sets_the_drain_policy_and_flags_override_it(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    settings = workdir / "meshctl.yaml"
    settings.write_text("drain:\n  drain_min_s: 2\n  drain_max_s: 7\n  strategy: gradual\n")
    meshctl.start("--settings", str(settings), "--drain-max-s", "9",
                  config=envoy_config(workdir / "v1.yaml", ports))
    assert meshctl.status()["drain_policy"] == {
        "drain_min_s": 2.0, "drain_max_s": 9.0, "strategy": "gradual", "stop_grace_s": 5.0}

    upgrade_settings = workdir / "upgrade.yaml"
    upgrade_settings.write_text("drain:\n  drain_min_s: 1\n  drain_max_s: 3\n")
    done = meshctl.cli("upgrade", "--settings", str(upgrade_settings), "--drain-strategy",
                       "immediate", "--wait", "-o", "json")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["drain_policy"] == {
        "drain_min_s": 1.0, "drain_max_s": 3.0, "strategy": "immediate"}
