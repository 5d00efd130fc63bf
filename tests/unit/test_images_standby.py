"""`meshctl standby` (`meshctl.podswap.standby`): a real process, probed over real HTTP like the
kubelet would, stopped with SIGTERM like the kubelet would."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

HOST = "127.0.0.1"
DEADLINE_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_serving(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            get(port, "/healthz/live")
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"meshctl standby did not serve on {port} within {DEADLINE_S}s")


@pytest.fixture
def standby() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    # The slot contract's arguments, those of `meshctl run` included: all are accepted.
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshctl", "standby", "--slot", "b", "--state-dir",
         "/var/run/meshctl", "--config", "/etc/meshctl/envoy.yaml", "--health-address",
         f"{HOST}:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "MESHCTL_HEALTH_ADDRESS"})
    try:
        wait_serving(proc, port)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=DEADLINE_S)


def test_standby_is_ready_and_alive_and_says_it_stands_by(
    standby: tuple[subprocess.Popen[str], int]
) -> None:
    _proc, port = standby
    assert get(port, "/healthz/ready") == (200, "ready\n")
    assert get(port, "/healthz/live") == (200, "alive\n")
    status, metrics = get(port, "/metrics")
    assert status == 200
    assert "meshctl_standby 1.0" in metrics


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_standby_exits_0_at_once_on_sigterm_or_sigint(
    standby: tuple[subprocess.Popen[str], int], signum: int
) -> None:
    proc, port = standby
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert "slot b standing by" in err
    with pytest.raises(OSError):
        get(port, "/healthz/ready")


def test_standby_with_a_port_in_use_is_one_line_and_exit_5() -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "meshctl", "standby", "--health-address", f"{HOST}:{port}"],
            capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    assert done.returncode == 5
    assert done.stderr.startswith(f"meshctl: error: health port {HOST}:{port} cannot be bound")
    assert done.stderr.count("\n") == 1
