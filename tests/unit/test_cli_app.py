"""The command line (`meshctl.cli.app`), through typer's CliRunner.

Nothing here starts Envoy or the supervisor: `run` is only given inputs it must refuse before
anything starts, and `status`/`upgrade`/`stop` talk to a real control socket served by the test.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from meshctl import __version__, errors
from meshctl.cli.app import app
from meshctl.exitcodes import ExitCode
from meshctl.manager.control import Command, ControlServer

ISOLATED_ENV: dict[str, str | None] = {
    "MESHCTL_ENVOY": None, "MESHCTL_SETTINGS": None, "MESHCTL_STATE_DIR": None,
    "MESHCTL_DEBUG": None,
}

Invoke = Callable[..., Result]


@pytest.fixture(autouse=True)
def root_logger_untouched() -> Iterator[None]:
    """`run` configures logging; whatever it adds must not outlive the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
def meshctl() -> Invoke:
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, list(args), env={**ISOLATED_ENV, **(env or {})})

    return invoke


def assert_one_error_line(result: Result, code: ExitCode, *fragments: str) -> str:
    assert result.exit_code == code, result.output
    assert result.exc_info is not None and result.exc_info[0] is SystemExit
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meshctl: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""
    return lines[0]


# ----------------------------------------------------------------- version and usage


def test_version_prints_meshctls_version(meshctl: Invoke) -> None:
    result = meshctl("version")
    assert result.exit_code == ExitCode.OK
    assert result.stdout == f"meshctl {__version__}\n"


def test_an_unknown_option_is_a_usage_error(meshctl: Invoke, tmp_path: Path) -> None:
    result = meshctl("status", "--state-dir", str(tmp_path), "--bogus")
    assert result.exit_code == ExitCode.USAGE
    assert "Traceback" not in result.output


# ----------------------------------------------------------------- nothing running


def test_status_with_no_supervisor_exits_not_running_with_one_line(
    meshctl: Invoke, tmp_path: Path
) -> None:
    result = meshctl("status", "--state-dir", str(tmp_path))
    line = assert_one_error_line(result, ExitCode.NOT_RUNNING)
    assert line == f"meshctl: error: no supervisor is running on {tmp_path}"


def test_exit_codes_keep_their_documented_numbers() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0, "FAILED": 1, "USAGE": 2, "NOT_RUNNING": 3, "BUSY": 4, "BAD_INPUT": 5,
        "PREFLIGHT": 6, "STATE_DIR": 7, "ROLLED_BACK": 8, "START_FAILED": 9, "TIMEOUT": 10,
    }


def test_upgrade_with_no_supervisor_exits_not_running_with_one_line(
    meshctl: Invoke, tmp_path: Path
) -> None:
    result = meshctl("upgrade", "--state-dir", str(tmp_path), "--skip-preflight")
    assert_one_error_line(result, ExitCode.NOT_RUNNING, "no supervisor is running")


def test_stop_with_no_supervisor_exits_not_running_with_one_line(
    meshctl: Invoke, tmp_path: Path
) -> None:
    result = meshctl("stop", "--state-dir", str(tmp_path))
    assert_one_error_line(result, ExitCode.NOT_RUNNING, "no supervisor is running")


def test_the_state_dir_may_come_from_the_environment(meshctl: Invoke, tmp_path: Path) -> None:
    result = meshctl("status", env={"MESHCTL_STATE_DIR": str(tmp_path / "from-env")})
    assert_one_error_line(result, ExitCode.NOT_RUNNING, str(tmp_path / "from-env"))


# ----------------------------------------------------------------- run refuses bad input


def test_run_with_a_missing_config_exits_bad_input_before_starting_anything(
    meshctl: Invoke, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    result = meshctl("run", "--state-dir", str(state_dir), "--config", "/nonexistent")
    assert_one_error_line(result, ExitCode.BAD_INPUT, "Envoy config not found: /nonexistent")
    assert not state_dir.exists()


def test_run_with_a_config_that_is_a_directory_exits_bad_input(
    meshctl: Invoke, tmp_path: Path
) -> None:
    result = meshctl("run", "--state-dir", str(tmp_path / "state"), "--config", str(tmp_path))
    assert_one_error_line(result, ExitCode.BAD_INPUT, "Envoy config is not a file")


def test_run_with_a_minimum_drain_above_the_maximum_exits_bad_input(
    meshctl: Invoke, tmp_path: Path
) -> None:
    result = meshctl("run", "--state-dir", str(tmp_path / "state"),
                     "--drain-min-s", "10", "--drain-max-s", "5")
    assert_one_error_line(result, ExitCode.BAD_INPUT,
                          "bad drain options: drain_min_s (10) is above drain_max_s (5)")
    assert not (tmp_path / "state").exists()


def test_run_with_a_negative_grace_exits_bad_input(meshctl: Invoke, tmp_path: Path) -> None:
    result = meshctl("run", "--state-dir", str(tmp_path / "state"), "--stop-grace-s", "-1")
    assert_one_error_line(result, ExitCode.BAD_INPUT, "bad drain options")


def test_run_with_an_invalid_settings_file_exits_bad_input(
    meshctl: Invoke, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("drain: [unclosed\n")
    result = meshctl("run", "--state-dir", str(tmp_path / "state"), "--settings", str(bad))
    assert_one_error_line(result, ExitCode.BAD_INPUT, "not valid YAML", str(bad))


def test_run_with_a_settings_file_from_the_environment_is_checked_too(
    meshctl: Invoke, tmp_path: Path
) -> None:
    bad = tmp_path / "meshctl.yaml"
    bad.write_text("drian:\n  drain_max_s: 5\n")
    result = meshctl("run", "--state-dir", str(tmp_path / "state"),
                     env={"MESHCTL_SETTINGS": str(bad)})
    assert_one_error_line(result, ExitCode.BAD_INPUT, "unknown section(s) drian")


def test_flags_are_checked_against_the_settings_file(meshctl: Invoke, tmp_path: Path) -> None:
    settings = tmp_path / "meshctl.yaml"
    settings.write_text("drain:\n  drain_max_s: 5\n")
    result = meshctl("run", "--state-dir", str(tmp_path / "state"), "--settings", str(settings),
                     "--drain-min-s", "6")
    assert_one_error_line(result, ExitCode.BAD_INPUT, "drain_min_s (6) is above drain_max_s (5)")


@pytest.mark.parametrize("extra", [["--base-id", "3"], ["--base-id=3"],
                                   ["--log-level", "info", "--restart-epoch", "1"]])
def test_run_with_a_managed_flag_after_the_double_dash_exits_bad_input(
    meshctl: Invoke, tmp_path: Path, extra: list[str]
) -> None:
    result = meshctl("run", "--state-dir", str(tmp_path / "state"), "--", *extra)
    assert_one_error_line(result, ExitCode.BAD_INPUT, "is managed by meshctl")
    assert not (tmp_path / "state").exists()


def test_run_with_a_missing_envoy_binary_exits_bad_input(
    meshctl: Invoke, tmp_path: Path
) -> None:
    result = meshctl("run", "--state-dir", str(tmp_path / "state"),
                     "--envoy", str(tmp_path / "no-envoy"))
    assert_one_error_line(result, ExitCode.BAD_INPUT, "Envoy binary not found")


def test_run_with_a_missing_envoy_binary_from_the_environment_exits_bad_input(
    meshctl: Invoke, tmp_path: Path
) -> None:
    result = meshctl("run", "--state-dir", str(tmp_path / "state"),
                     env={"MESHCTL_ENVOY": str(tmp_path / "no-envoy")})
    assert_one_error_line(result, ExitCode.BAD_INPUT, str(tmp_path / "no-envoy"))


# ----------------------------------------------------------------- a supervisor's socket


def refuse_everything(cmd: Command) -> None:
    cmd.refuse(errors.BadInput(f"unexpected {cmd.op}"))


@dataclass
class ControlSocket:
    """The control socket a running supervisor serves, answered by a test thread."""

    state_dir: Path
    snapshot: dict[str, Any] = field(default_factory=dict)
    handler: Callable[[Command], None] = refuse_everything
    seen: list[Command] = field(default_factory=list)


@pytest.fixture(scope="module")
def shared_socket() -> Iterator[ControlSocket]:
    """One control socket per module: closing a server waits for its 0.2 s accept timeout."""
    directory = Path(tempfile.mkdtemp(prefix="mcu-", dir="/tmp"))
    sock = ControlSocket(state_dir=directory)
    server = ControlServer(directory / "control.sock", lambda: dict(sock.snapshot),
                           lambda: None)
    stop = threading.Event()

    def main_loop() -> None:
        while not stop.is_set():
            try:
                cmd = server.commands.get(timeout=0.05)
            except queue.Empty:
                continue
            sock.seen.append(cmd)
            sock.handler(cmd)

    thread = threading.Thread(target=main_loop, daemon=True)
    server.start()
    thread.start()
    try:
        yield sock
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def supervisor_socket(shared_socket: ControlSocket) -> ControlSocket:
    shared_socket.snapshot = {}
    shared_socket.handler = refuse_everything
    shared_socket.seen.clear()
    return shared_socket


LIVE = {"epoch": 0, "pid": 2001, "role": "live", "binary": "/usr/local/bin/envoy",
        "config": "/etc/envoy/envoy.yaml", "version": "1.40.0", "connections": 3}
RUNNING = {
    "phase": "running", "supervisor_pid": 1999, "state_dir": "/run/meshctl", "base_id": 4242,
    "epoch": 0, "live": LIVE, "generations": [LIVE], "upgrade": None, "last_upgrade": None,
}


def test_status_shows_the_supervisor_and_its_generations(
    meshctl: Invoke, supervisor_socket: ControlSocket
) -> None:
    supervisor_socket.snapshot = RUNNING
    result = meshctl("status", "--state-dir", str(supervisor_socket.state_dir))
    assert result.exit_code == ExitCode.OK, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == ("supervisor pid 1999  phase running  base id 4242  "
                        "state dir /run/meshctl")
    assert lines[1].split() == ["EPOCH", "ROLE", "PID", "VERSION", "CONNS", "BINARY", "CONFIG"]
    assert lines[2].split() == ["0", "live", "2001", "1.40.0", "3", "/usr/local/bin/envoy",
                                "/etc/envoy/envoy.yaml"]


def test_status_as_json_is_the_supervisors_snapshot(
    meshctl: Invoke, supervisor_socket: ControlSocket
) -> None:
    supervisor_socket.snapshot = RUNNING
    result = meshctl("status", "--state-dir", str(supervisor_socket.state_dir), "-o", "json")
    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout) == RUNNING


def test_upgrade_during_an_upgrade_exits_busy_naming_it(
    meshctl: Invoke, supervisor_socket: ControlSocket
) -> None:
    supervisor_socket.snapshot = {**RUNNING, "phase": "draining",
                                  "upgrade": {"id": "u3", "from_epoch": 0, "to_epoch": 1}}
    result = meshctl("upgrade", "--state-dir", str(supervisor_socket.state_dir),
                     "--skip-preflight")
    assert_one_error_line(result, ExitCode.BUSY, "the supervisor is draining",
                          "upgrade u3 in progress")
    assert supervisor_socket.seen == []


def test_upgrade_to_a_missing_config_exits_bad_input_and_asks_nothing(
    meshctl: Invoke, supervisor_socket: ControlSocket, tmp_path: Path
) -> None:
    supervisor_socket.snapshot = RUNNING
    result = meshctl("upgrade", "--state-dir", str(supervisor_socket.state_dir),
                     "--config", str(tmp_path / "missing.yaml"), "--skip-preflight")
    assert_one_error_line(result, ExitCode.BAD_INPUT, "Envoy config not found")
    assert supervisor_socket.seen == []


def test_stop_now_asks_the_supervisor_to_stop_without_draining(
    meshctl: Invoke, supervisor_socket: ControlSocket
) -> None:
    supervisor_socket.snapshot = RUNNING
    supervisor_socket.handler = lambda cmd: cmd.answer(phase="stopping")
    result = meshctl("stop", "--state-dir", str(supervisor_socket.state_dir), "--now",
                     "--no-wait")
    assert result.exit_code == ExitCode.OK, result.output
    [cmd] = supervisor_socket.seen
    assert (cmd.op, cmd.args) == ("stop", {"graceful": False})


def test_a_refusal_from_the_supervisor_is_one_line_with_its_exit_code(
    meshctl: Invoke, supervisor_socket: ControlSocket
) -> None:
    supervisor_socket.snapshot = RUNNING
    supervisor_socket.handler = lambda cmd: cmd.refuse(errors.Busy("already stopping"))
    result = meshctl("stop", "--state-dir", str(supervisor_socket.state_dir), "--no-wait")
    line = assert_one_error_line(result, ExitCode.BUSY)
    assert line == "meshctl: error: already stopping"
    [cmd] = supervisor_socket.seen
    assert cmd.args == {"graceful": True}


def test_status_into_a_pipe_nobody_reads_exits_quietly_not_as_an_internal_error(
    supervisor_socket: ControlSocket,
) -> None:
    """`meshctl status | true`: the reader is gone; exit 141 (128 + SIGPIPE) and say nothing."""
    supervisor_socket.snapshot = RUNNING
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "meshctl", "status", "--state-dir",
             str(supervisor_socket.state_dir)], stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=60, check=False, env={**os.environ, "MESHCTL_NICE": "0"})
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""


def test_the_drain_progress_says_what_is_known_before_the_first_count() -> None:
    from meshctl.cli.output import drain_line  # noqa: PLC0415

    assert drain_line({"connections": None, "time_left_s": 12.0}) == (
        "counting the old generation's connections, 12.0s left")
    assert drain_line({"connections": 3, "time_left_s": 1.25}) == (
        "3 connection(s) left on the old generation, 1.2s left")
