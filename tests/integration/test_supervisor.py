"""The supervisor on real Envoy processes: run, upgrade, signals, state, bad input."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from meshctl.demo.loadgen import LoadGen
from meshctl.exitcodes import ExitCode

from .conftest import Meshctl, Ports, envoy_config

pytestmark = pytest.mark.envoy


def get(port: int, path: str = "/") -> tuple[int, str, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), resp.getheader("x-meshctl-epoch")
    finally:
        conn.close()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("meshctl: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_run_serves_traffic_and_sigterm_leaves_no_process_socket_or_shared_memory(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start(config=envoy_config(workdir / "v1.yaml", ports, body="hello"))
    assert get(ports.http) == (200, "hello", "0")
    snap = meshctl.status()
    envoy_pid = snap["live"]["pid"]
    shm = Path("/dev/shm") / f"envoy_shared_memory_{10 * snap['base_id']}"
    assert shm.exists()
    assert any((meshctl.state_dir / "hr").iterdir())

    meshctl.signal(signal.SIGTERM)
    assert meshctl.wait_exit() == 0

    assert not psutil.pid_exists(envoy_pid) or \
        psutil.Process(envoy_pid).status() == psutil.STATUS_ZOMBIE
    assert list((meshctl.state_dir / "hr").iterdir()) == []
    assert not shm.exists()
    assert not (meshctl.state_dir / "control.sock").exists()


def test_run_without_a_config_serves_the_bundled_demo_config(meshctl: Meshctl) -> None:
    meshctl.start()
    status, body, epoch = get(10000)
    assert (status, body, epoch) == (200, "hello from meshctl demo\n", "0")
    assert meshctl.status()["live"]["listener_ports"] == [10000]


def test_an_upgrade_from_1_39_3_to_1_40_0_under_traffic_loses_no_request(
        meshctl: Meshctl, ports: Ports, workdir: Path, envoy_old: Path, envoy_new: Path) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start("--drain-min-s", "1", "--drain-max-s", "20", config=config, envoy=envoy_old)
    assert meshctl.status()["live"]["version"] == "1.39.3"
    load = LoadGen("127.0.0.1", ports.http, keepalive_workers=4, new_conn_workers=2).start()
    time.sleep(1.5)

    done = meshctl.cli("upgrade", "--envoy", str(envoy_new), "--wait", "-o", "json")
    time.sleep(1.5)
    stats = load.stop()

    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["result"] == "succeeded"
    assert (record["from_epoch"], record["to_epoch"]) == (0, 1)
    assert (record["from_version"], record["to_version"]) == ("1.39.3", "1.40.0")
    assert record["from_pid"] != record["to_pid"]
    assert 0 < record["live_after_s"] <= record["total_s"]
    # The client ran in the background of the proxy: SCHED_IDLE, or nice 10 if the CPU was
    # saturated when it started (the test machine may be).
    assert re.fullmatch(r"(idle|nice 10) \(CPU pressure [\d.]+ %\)", record["client_scheduling"])
    # And the new Envoy initialized at idle priority (root here: CAP_SYS_NICE), unless the
    # CPU was saturated.
    assert re.fullmatch(r"(idle until LIVE|normal) \(CPU pressure [\d.]+ %\)",
                        record["init_scheduling"])
    assert stats.failed == 0 and stats.http_error == 0, stats.to_json()
    assert stats.ok > 200
    assert stats.by_epoch["0"] > 0 and stats.by_epoch["1"] > 0, stats.to_json()
    snap = meshctl.status()
    assert snap["live"]["version"] == "1.40.0" and snap["epoch"] == 1
    assert [g["epoch"] for g in snap["generations"]] == [1]
    assert not psutil.pid_exists(record["from_pid"])


def test_a_config_only_upgrade_serves_the_new_config_from_the_same_binary(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start(config=envoy_config(workdir / "v1.yaml", ports, body="v1"))
    v2 = envoy_config(workdir / "v2.yaml", ports, body="v2")

    done = meshctl.cli("upgrade", "--config", str(v2), "--wait", "-o", "json")

    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["config"] == str(v2) and record["to_version"] == record["from_version"]
    assert get(ports.http) == (200, "v2", "1")
    assert meshctl.status()["live"]["config"] == str(v2)


def test_sighup_hot_restarts_onto_the_same_binary_and_config(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start(config=config)
    first = meshctl.status()["live"]

    meshctl.signal(signal.SIGHUP)
    snap = meshctl.wait_for(
        lambda s: s["phase"] == "running" and (s.get("last_upgrade") or {}).get("result")
        == "succeeded", 30, "the SIGHUP restart to finish")

    assert snap["last_upgrade"]["reason"] == "SIGHUP"
    assert snap["live"]["epoch"] == 1 and snap["live"]["pid"] != first["pid"]
    assert (snap["live"]["binary"], snap["live"]["config"]) == (first["binary"], first["config"])
    assert get(ports.http)[2] == "1"


def test_sigusr1_is_forwarded_to_envoy_which_reopens_its_logs(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start("--", "--component-log-level", "main:debug",
                  config=envoy_config(workdir / "v1.yaml", ports))
    log = Path(meshctl.status()["live"]["log"])

    meshctl.signal(signal.SIGUSR1)

    deadline = time.monotonic() + 10
    while "reopening" not in log.read_text(errors="replace").lower():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    assert meshctl.status()["phase"] == "running"


def test_status_json_reports_the_live_generation_and_the_state_file_survives(
        meshctl: Meshctl, ports: Ports, workdir: Path, envoy_new: Path) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start(config=config)
    assert meshctl.cli("upgrade", "--wait").returncode == 0

    done = meshctl.cli("status", "-o", "json")

    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)
    assert snap["phase"] == "running" and snap["epoch"] == 1
    live = snap["live"]
    assert live["binary"] == str(envoy_new) and live["config"] == str(config)
    assert live["version"] == "1.40.0" and live["role"] == "live"
    assert live["hot_restart_version"] == "11.104"  # the pre-flight compares against it
    assert snap["last_upgrade"]["result"] == "succeeded"
    saved = json.loads((meshctl.state_dir / "state.json").read_text())
    assert saved["live"]["pid"] == live["pid"] and saved["epoch"] == 1
    assert [u["id"] for u in saved["history"]] == [snap["last_upgrade"]["id"]]
    assert os.stat(meshctl.state_dir).st_mode & 0o777 == 0o700
    assert os.stat(meshctl.state_dir / "control.sock").st_mode & 0o777 == 0o600

    text = meshctl.cli("status")
    assert text.returncode == 0 and "running" in text.stdout and "1.40.0" in text.stdout


# ---------------------------------------------------------------- bad input


def test_run_with_a_missing_binary_or_config_exits_5_with_one_line(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    no_binary = meshctl.cli("run", "--state-dir", str(meshctl.state_dir), "--envoy",
                            "/nonexistent/envoy", "--config", str(config))
    no_config = meshctl.cli("run", "--state-dir", str(meshctl.state_dir), "--config",
                            str(workdir / "missing.yaml"))

    assert no_binary.returncode == ExitCode.BAD_INPUT
    assert "/nonexistent/envoy" in one_error_line(no_binary.stderr)
    assert no_config.returncode == ExitCode.BAD_INPUT
    assert "missing.yaml" in one_error_line(no_config.stderr)


def test_a_state_dir_that_is_a_file_exits_7(meshctl: Meshctl, workdir: Path) -> None:
    not_a_dir = workdir / "file"
    not_a_dir.write_text("x")

    done = meshctl.cli("run", "--state-dir", str(not_a_dir))

    assert done.returncode == ExitCode.STATE_DIR
    one_error_line(done.stderr)


def test_a_state_dir_owned_by_a_running_supervisor_is_refused_with_exit_4(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start(config=envoy_config(workdir / "v1.yaml", ports))
    supervisor_pid = meshctl.status()["supervisor_pid"]

    done = meshctl.cli("run", "--state-dir", str(meshctl.state_dir), "--config",
                       str(workdir / "v1.yaml"))

    assert done.returncode == ExitCode.BUSY
    assert f"pid {supervisor_pid}" in one_error_line(done.stderr)
    assert meshctl.status()["phase"] == "running"


def test_an_upgrade_with_nothing_running_exits_3(meshctl: Meshctl) -> None:
    for args in (("upgrade", "--wait"), ("status",), ("stop",)):
        done = meshctl.cli(*args)
        assert done.returncode == ExitCode.NOT_RUNNING, (args, done.stderr)
        assert "no supervisor is running" in one_error_line(done.stderr)


def test_an_upgrade_to_a_missing_binary_or_config_changes_nothing_and_exits_5(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start(config=envoy_config(workdir / "v1.yaml", ports))
    before = meshctl.status()["live"]["pid"]

    no_binary = meshctl.cli("upgrade", "--envoy", str(workdir / "nope"))
    no_config = meshctl.cli("upgrade", "--config", str(workdir / "nope.yaml"))

    assert no_binary.returncode == ExitCode.BAD_INPUT
    one_error_line(no_binary.stderr)
    assert no_config.returncode == ExitCode.BAD_INPUT
    one_error_line(no_config.stderr)
    snap = meshctl.status()
    assert snap["live"]["pid"] == before and snap["upgrades"] == 0


def test_an_upgrade_to_a_config_envoy_rejects_fails_preflight_with_exit_6(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start(config=envoy_config(workdir / "v1.yaml", ports))
    bad = workdir / "bad.yaml"
    bad.write_text("static_resources: {listeners: [{name: x, no_such_field: 1}]}\n")

    done = meshctl.cli("upgrade", "--config", str(bad), "--wait")

    assert done.returncode == ExitCode.PREFLIGHT
    assert "bad.yaml" in one_error_line(done.stderr) or "no_such_field" in done.stderr
    assert meshctl.status()["upgrades"] == 0


def test_a_second_upgrade_while_one_runs_is_refused_with_exit_4(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start("--drain-min-s", "8", "--drain-max-s", "20", config=config)

    first = meshctl.cli("upgrade", "--no-wait", "-o", "json")
    second = meshctl.cli("upgrade", "--wait")

    assert first.returncode == 0, first.stderr
    upgrade_id = json.loads(first.stdout)["id"]
    assert second.returncode == ExitCode.BUSY
    assert "refused" in one_error_line(second.stderr)
    snap = meshctl.wait_for(lambda s: s["phase"] == "running", 30, "the first upgrade's end")
    assert snap["last_upgrade"]["id"] == upgrade_id and snap["upgrades"] == 1
