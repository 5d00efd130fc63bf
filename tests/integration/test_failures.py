"""Failed upgrades on real Envoy, under constant traffic: each one is rolled back with its
reason, no client request fails, the hot restart is repaired (Trap 1), the next upgrade works.
Also: Envoy crashing on its own, the supervisor killed with SIGKILL, the health port."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import stat
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from meshctl import cpu
from meshctl.demo.loadgen import LoadGen, LoadStats
from meshctl.exitcodes import ExitCode

from .conftest import Meshctl, Ports, envoy_config, free_port

pytestmark = pytest.mark.envoy


def get(port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


class Traffic:
    """Constant load for the length of a `with` block; every request accounted for."""

    def __init__(self, port: int) -> None:
        self.load = LoadGen("127.0.0.1", port, keepalive_workers=3, new_conn_workers=2)
        self.stats = LoadStats()

    def __enter__(self) -> Traffic:
        self.load.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)
        self.stats = self.load.stop()


@pytest.fixture
def crashing_envoy(workdir: Path, envoy_new: Path) -> Path:
    """A binary that passes every pre-flight check (it is Envoy for --version, --mode validate)
    but dies of SIGSEGV as soon as it is started for real."""
    script = workdir / "crashing-envoy"
    script.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --version "*|*" --hot-restart-version "*|*" --mode "*)\n'
        f'  exec {envoy_new} "$@";;\n'
        "esac\n"
        "kill -SEGV $$\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def report(record: dict[str, object], stats: LoadStats) -> None:
    """Figures for docs/reliability.md (shown with `pytest -rP`)."""
    print(json.dumps({"traffic": stats.to_json(), "result": record.get("result"),
                      "recovery": record.get("recovery"), "total_s": record.get("total_s"),
                      "error": str(record.get("error"))[:300]}))


def assert_rolled_back_then_upgrades(meshctl: Meshctl, ports: Ports, done_stdout: str,
                                     done_code: int, reason: str, config: Path) -> None:
    assert done_code == ExitCode.ROLLED_BACK, done_stdout
    record = json.loads(done_stdout)
    assert record["result"] == "rolled_back"
    assert reason in record["error"], record["error"]
    # The old generation (or its replacement on the same binary and config) answers /ready.
    assert get(ports.admin, "/ready") == (200, "LIVE\n")
    again = meshctl.cli("upgrade", "--config", str(config), "--wait", "-o", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["result"] == "succeeded"
    assert get(ports.admin, "/ready") == (200, "LIVE\n")


def test_a_listener_port_already_in_use_is_rolled_back_and_repaired_without_a_lost_request(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start("--drain-min-s", "0.5", config=config)
    taken = socket.create_server(("127.0.0.1", 0))
    bad = envoy_config(workdir / "taken.yaml", ports,
                       extra_listener=int(taken.getsockname()[1]))
    try:
        with Traffic(ports.http) as traffic:
            done = meshctl.cli("upgrade", "--config", str(bad), "--wait", "-o", "json")
            assert get(ports.admin, "/ready") == (200, "LIVE\n")
    finally:
        taken.close()

    record = json.loads(done.stdout)
    report(record, traffic.stats)
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert record["recovery"] == "recovered", record
    assert "before LIVE" in record["error"] and "Address already in use" in record["error"]
    assert_rolled_back_then_upgrades(meshctl, ports, done.stdout, done.returncode,
                                     "before LIVE", config)


def test_an_initialization_that_never_finishes_is_rolled_back_at_the_ready_timeout(
        meshctl: Meshctl, ports: Ports, workdir: Path, silent_server: int) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start("--drain-min-s", "0.5", "--stop-grace-s", "2", config=config)
    hangs = envoy_config(workdir / "hang.yaml", ports, xds_hang=silent_server)

    with Traffic(ports.http) as traffic:
        done = meshctl.cli("upgrade", "--config", str(hangs), "--ready-timeout-s", "3",
                           "--wait", "-o", "json")

    record = json.loads(done.stdout)
    report(record, traffic.stats)
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert record["recovery"] == "recovered", record
    assert_rolled_back_then_upgrades(meshctl, ports, done.stdout, done.returncode,
                                     "not LIVE within 3s", config)


def test_a_new_generation_killed_during_init_is_rolled_back_and_repaired(
        meshctl: Meshctl, ports: Ports, workdir: Path, silent_server: int) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start("--drain-min-s", "0.5", config=config)
    hangs = envoy_config(workdir / "hang.yaml", ports, xds_hang=silent_server)

    with Traffic(ports.http) as traffic:
        started = meshctl.cli("upgrade", "--config", str(hangs), "--no-wait", "-o", "json")
        new_pid = json.loads(started.stdout)["to_pid"]
        time.sleep(1.0)  # attached and initializing (waiting for xDS)
        os.kill(new_pid, signal.SIGKILL)
        snap = meshctl.wait_for(lambda s: s["phase"] == "running", 30, "the rollback")

    record = snap["last_upgrade"]
    report(record, traffic.stats)
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert record["result"] == "rolled_back" and "SIGKILL" in record["error"], record
    assert record["recovery"] == "recovered"
    assert get(ports.admin, "/ready") == (200, "LIVE\n")
    again = meshctl.cli("upgrade", "--wait")
    assert again.returncode == 0, again.stderr


def test_a_binary_that_crashes_at_start_is_rolled_back_with_its_reason(
        meshctl: Meshctl, ports: Ports, workdir: Path, crashing_envoy: Path) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start("--drain-min-s", "0.5", config=config)

    with Traffic(ports.http) as traffic:
        done = meshctl.cli("upgrade", "--envoy", str(crashing_envoy), "--wait", "-o", "json")

    record = json.loads(done.stdout)
    report(record, traffic.stats)
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert "SIGSEGV" in record["error"], record
    assert_rolled_back_then_upgrades(meshctl, ports, done.stdout, done.returncode,
                                     "before LIVE", config)


def test_preflight_refuses_a_binary_of_another_hot_restart_version_and_changes_nothing(
        meshctl: Meshctl, ports: Ports, workdir: Path, envoy_new: Path) -> None:
    meshctl.start(config=envoy_config(workdir / "v1.yaml", ports))
    other = workdir / "other-envoy"
    other.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --hot-restart-version "*) echo 12.200; exit 0;; esac\n'
        f'exec {envoy_new} "$@"\n'
    )
    other.chmod(0o755)
    not_envoy = workdir / "not-envoy"
    not_envoy.write_text("#!/bin/sh\nexit 3\n")
    not_envoy.chmod(0o755)

    mismatch = meshctl.cli("upgrade", "--envoy", str(other), "--wait")
    broken = meshctl.cli("upgrade", "--envoy", str(not_envoy), "--wait")

    assert mismatch.returncode == ExitCode.PREFLIGHT, mismatch.stderr
    assert "hot-restart version mismatch" in mismatch.stderr
    assert broken.returncode == ExitCode.PREFLIGHT, broken.stderr
    assert meshctl.status()["upgrades"] == 0


def test_envoy_dying_on_its_own_is_restarted_and_a_crash_loop_gives_up_with_exit_1(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start("--max-restarts", "2", "--restart-window-s", "60",
                  config=envoy_config(workdir / "v1.yaml", ports))

    for crash in (1, 2):
        pid = meshctl.status()["live"]["pid"]
        os.kill(pid, signal.SIGKILL)
        snap = meshctl.wait_for(
            lambda s, pid=pid: s["phase"] == "running" and s["live"]["pid"] != pid, 30,
            f"the restart after crash {crash}")
        assert snap["crashes"]["recent"] == crash
        assert get(ports.http)[0] == 200

    os.kill(meshctl.status()["live"]["pid"], signal.SIGKILL)
    code = meshctl.wait_exit(30)

    assert code == ExitCode.FAILED
    assert "crash loop" in meshctl.supervisor_log()


def test_a_supervisor_killed_with_sigkill_leaves_envoy_serving_and_a_new_one_adopts_it(
        meshctl: Meshctl, ports: Ports, workdir: Path, envoy_old: Path, envoy_new: Path) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start("--drain-min-s", "0.5", config=config, envoy=envoy_old)
    live = meshctl.status()["live"]

    with Traffic(ports.http) as traffic:
        assert meshctl.proc is not None
        meshctl.proc.kill()
        meshctl.proc.wait()
        time.sleep(2)
        assert psutil.pid_exists(live["pid"]), "Envoy died with its supervisor"
        meshctl.start("--drain-min-s", "0.5", config=config, envoy=envoy_old)
        adopted = meshctl.status()["live"]
        done = meshctl.cli("upgrade", "--envoy", str(envoy_new), "--wait", "-o", "json")

    report(json.loads(done.stdout or "{}"), traffic.stats)
    assert (adopted["pid"], adopted["adopted"]) == (live["pid"], True)
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["from_version"], record["to_version"]) == ("1.39.3", "1.40.0")
    assert record["from_epoch"] == live["epoch"] and record["to_epoch"] == live["epoch"] + 1


def test_the_health_port_stays_ready_through_an_upgrade_and_serves_metrics(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    health_port = free_port()
    meshctl.start("--drain-min-s", "0.5", "--health-address", f"127.0.0.1:{health_port}",
                  config=envoy_config(workdir / "v1.yaml", ports))
    answers: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            answers.append(get(health_port, "/healthz/ready")[0])
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        done = meshctl.cli("upgrade", "--wait")
    finally:
        stop.set()
        prober.join()

    assert done.returncode == 0, done.stderr
    assert len(answers) > 20 and set(answers) == {200}
    status, metrics = get(health_port, "/metrics")
    assert status == 200
    assert 'meshctl_upgrades_total{result="succeeded"} 1.0' in metrics
    assert "meshctl_epoch 1.0" in metrics
    assert 'meshctl_envoy_info{version="1.40.0"} 1.0' in metrics

    # Shutting down: not ready for the whole drain (drain_min_s 0.5 here), then gone.
    meshctl.signal(signal.SIGTERM)
    deadline = time.monotonic() + 0.4  # the loop acts on the signal at its next turn
    while (answer := get(health_port, "/healthz/ready"))[0] == 200:
        assert time.monotonic() < deadline, "still ready after SIGTERM"
        time.sleep(0.01)
    assert answer == (503, "not ready: stopping\n")
    assert meshctl.wait_exit(30) == 0


def test_a_corrupt_state_file_is_reported_and_never_overwritten(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.state_dir.mkdir(mode=0o700)
    state = meshctl.state_dir / "state.json"
    state.write_text('{"schema": 1, "live": {"pid": 12')

    done = meshctl.cli("run", "--state-dir", str(meshctl.state_dir), "--health-address", "off",
                       "--config", str(envoy_config(workdir / "v1.yaml", ports)))

    assert done.returncode == ExitCode.STATE_DIR
    assert "corrupt" in done.stderr and "Traceback" not in done.stderr
    assert state.read_text() == '{"schema": 1, "live": {"pid": 12'


def test_an_envoy_orphaned_by_its_keeper_is_reaped_and_replaced(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start(config=envoy_config(workdir / "v1.yaml", ports))
    live = meshctl.status()["live"]

    # Envoy loses its parent (dumb-init): PDEATHSIG stops it, and as the orphan of one of the
    # supervisor's children it is reparented to the supervisor (a child subreaper, as PID 1
    # would be), which must reap it.
    os.kill(live["keeper_pid"], signal.SIGKILL)
    snap = meshctl.wait_for(
        lambda s: s["phase"] == "running" and s["live"]["pid"] != live["pid"], 30,
        "the replacement generation")

    assert snap["crashes"]["total"] == 1
    assert not psutil.pid_exists(live["pid"]), "the orphaned Envoy is still there (a zombie?)"
    assert f"reaped unknown child {live['pid']}" in meshctl.supervisor_log()
    assert get(ports.http)[0] == 200


def _threads_idle(pid: int) -> list[bool]:
    return [cpu.is_idle(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


def test_a_new_generation_initializes_at_idle_priority_and_serves_at_normal_priority(
        meshctl: Meshctl, ports: Ports, workdir: Path, silent_server: int) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start("--drain-min-s", "0.5", "--init-priority", "idle", config=config)
    hangs = envoy_config(workdir / "hang.yaml", ports, xds_hang=silent_server)
    first = meshctl.status()["live"]["pid"]

    with Traffic(ports.http) as traffic:
        # The ready timeout leaves room for the client itself: it runs under SCHED_IDLE, and
        # on a busy machine its exit after the request can wait seconds for an idle CPU (a
        # 3 s timeout once ended the hung generation before it was looked at).
        started = meshctl.cli("upgrade", "--config", str(hangs), "--ready-timeout-s", "8",
                              "--no-wait", "-o", "json")
        new_pid = json.loads(started.stdout)["to_pid"]
        time.sleep(1.0)  # initializing (waiting for xDS): every thread under SCHED_IDLE
        initializing = _threads_idle(new_pid)
        serving = _threads_idle(first)
        snap = meshctl.wait_for(lambda s: s["phase"] == "running", 30, "the rollback")
        repaired = snap["live"]["pid"]
        after_rollback = _threads_idle(repaired)
        done = meshctl.cli("upgrade", "--wait", "-o", "json")

    assert len(initializing) > 3 and all(initializing), initializing
    assert not any(serving), serving  # the serving generation was never touched
    assert snap["last_upgrade"]["result"] == "rolled_back"
    assert not any(after_rollback)  # the recovery generation restores service: never idle
    record = json.loads(done.stdout)
    assert record["result"] == "succeeded", record
    assert record["init_scheduling"] == "idle until LIVE (--init-priority idle)"
    live = _threads_idle(record["to_pid"])
    assert live and not any(live), live
    # Restored when its workers started, not at the LIVE poll up to a tick later.
    events = [e["event"] for e in record["events"]]
    assert events.index("new_started") < events.index("new_restored") < events.index("new_live")
    assert re.search(rf"epoch {record['to_epoch']}: workers started; [1-9]\d* "
                     r"thread\(s\) back to normal priority\n", meshctl.supervisor_log())
    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()


def test_init_priority_normal_starts_a_new_generation_like_any_other(
        meshctl: Meshctl, ports: Ports, workdir: Path) -> None:
    meshctl.start("--init-priority", "normal", config=envoy_config(workdir / "v1.yaml", ports))
    done = meshctl.cli("upgrade", "--wait", "-o", "json")
    record = json.loads(done.stdout)
    assert record["init_scheduling"] == "normal (--init-priority normal)"
    assert "new_restored" not in [e["event"] for e in record["events"]]
    assert "back to normal" not in meshctl.supervisor_log()


def test_a_supervisor_killed_after_an_upgrade_is_replaced_and_the_live_envoy_does_not_abort(
        meshctl: Meshctl, ports: Ports, workdir: Path, envoy_new: Path) -> None:
    """Found by the chaos run: the live generation's parent ended early, a stand-in answering
    on its socket; the supervisor dies, and the stand-in with it. The one that adopts the live
    generation must answer there again, or its Terminate at --parent-shutdown-time-s meets
    ECONNREFUSED, blocks it 10 s and aborts it (Trap 2)."""
    config = envoy_config(workdir / "v1.yaml", ports)
    args = ("--drain-min-s", "0.2", "--drain-max-s", "2", "--stop-grace-s", "1")
    meshctl.start(*args, config=config)
    done = meshctl.cli("upgrade", "--envoy", str(envoy_new), "--wait", "-o", "json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["drain_end"] != "deadline", record  # ended early: the stand-in answers
    live = meshctl.status()["live"]
    assert meshctl.proc is not None
    meshctl.proc.kill()
    meshctl.proc.wait()

    meshctl.start(*args, config=config)
    with Traffic(ports.http) as traffic:
        time.sleep(2 + 1 + 5 + 12)  # its --parent-shutdown-time-s (8 s), then Envoy's 10 s

    assert psutil.pid_exists(live["pid"]), meshctl.supervisor_log()[-2000:]
    snap = meshctl.status()
    assert (snap["phase"], snap["live"]["pid"], snap["crashes"]["total"]) == \
        ("running", live["pid"], 0)
    assert traffic.stats.failed == 0, traffic.stats.to_json()


def test_a_supervisor_killed_mid_drain_is_replaced_the_old_one_drains_and_ends_with_sigterm(
        meshctl: Meshctl, ports: Ports, workdir: Path, envoy_new: Path) -> None:
    """Found by the chaos run: the adopted old generation was ended as "never LIVE" (SIGKILL,
    its connections cut), and the killed supervisor's stand-in socket stayed in hr/."""
    config = envoy_config(workdir / "v1.yaml", ports)
    args = ("--drain-min-s", "3", "--drain-max-s", "6", "--stop-grace-s", "2")
    meshctl.start(*args, config=config)
    first = meshctl.cli("upgrade", "-o", "json")  # epoch 1; epoch 0 ends early: a stand-in
    assert first.returncode == 0, first.stderr
    meshctl.wait_for(lambda s: s["phase"] == "running" and s["epoch"] == 1, 30, "epoch 1")
    done = meshctl.cli("upgrade", "--envoy", str(envoy_new), "-o", "json")
    assert done.returncode == 0, done.stderr
    meshctl.wait_for(lambda s: s["phase"] == "draining", 30, "epoch 1 draining")
    assert meshctl.proc is not None
    meshctl.proc.kill()
    meshctl.proc.wait()

    with Traffic(ports.http) as traffic:
        meshctl.start(*args, config=config)
        snap = meshctl.wait_for(lambda s: s["phase"] == "running", 30, "the adopted upgrade")

    log = meshctl.supervisor_log()
    assert "epoch 1: asking to stop (SIGTERM)" in log, log[-3000:]
    assert "epoch 1: never LIVE" not in log
    assert traffic.stats.failed == 0, traffic.stats.to_json()
    files = {p.name for p in (meshctl.state_dir / "hr").iterdir()}
    base, epoch = snap["base_id"], snap["epoch"]
    own = {f"envoy_{role}_{10 * base + epoch % 3}"
           for role in ("parent", "child", "udp_parent", "udp_child")}
    assert own <= files <= own | {f"envoy_parent_{10 * base + (epoch - 1) % 3}"}, files


def test_a_supervisor_adopting_a_serving_envoy_without_its_admin_api_repairs_it_not_kills_it(
        meshctl: Meshctl, ports: Ports, workdir: Path, silent_server: int) -> None:
    """Found by the chaos run: a child died initializing while no supervisor ran (Trap 1:
    the old generation's admin listener closed, the flag set). The supervisor that adopts the
    old generation waited for its /ready, then killed it and exited 9: an outage."""
    config = envoy_config(workdir / "v1.yaml", ports)
    args = ("--ready-timeout-s", "5", "--drain-min-s", "0.2", "--stop-grace-s", "2")
    meshctl.start(*args, config=config)
    hangs = envoy_config(workdir / "hang.yaml", ports, xds_hang=silent_server)
    done = meshctl.cli("upgrade", "--config", str(hangs), "--ready-timeout-s", "30", "-o",
                       "json")
    assert done.returncode == 0, done.stderr
    snap = meshctl.wait_for(lambda s: len(s["generations"]) == 2, 10, "the hanging child")
    old = snap["live"]
    new_pid = next(g["pid"] for g in snap["generations"] if g["pid"] != old["pid"])
    time.sleep(1.0)  # the child has closed the old one's admin listener
    assert meshctl.proc is not None
    meshctl.proc.kill()
    meshctl.proc.wait()
    os.kill(new_pid, signal.SIGKILL)

    with Traffic(ports.http) as traffic:
        meshctl.start(*args, config=config)
        snap = meshctl.wait_for(lambda s: s["phase"] == "running" and s["upgrades"] >= 1
                                and s["live"]["pid"] != old["pid"], 60, "the repair")

    assert traffic.stats.failed == 0, traffic.stats.to_json()
    assert "adopted without its admin API" in meshctl.supervisor_log()
    assert snap["last_upgrade"]["result"] == "succeeded", snap["last_upgrade"]
    assert get(ports.http)[0] == 200
    assert urllib.request.urlopen(f"http://127.0.0.1:{ports.admin}/ready",
                                  timeout=5).status == 200
