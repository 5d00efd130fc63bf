"""Hardening (issue 19): what another local user can do to a root supervisor, and what meshctl
refuses. "Another user" is `nobody` (uid 65534): files are chowned to it, and its processes
are started with setuid, so the tests need root (as CI has).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl import errors
from meshctl.exitcodes import ExitCode
from meshctl.manager import control
from meshctl.trust import untrusted_reason
from tests.integration.conftest import Meshctl, Ports, envoy_config

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
"""Runs the other user's processes: ours lives under /root (0700), which nobody cannot enter."""



@pytest.fixture(autouse=True)
def _root() -> None:
    # Not a skip: a suite that skips what it cannot do proves nothing (CI runs as root).
    if os.getuid() != 0:
        pytest.fail("these tests act as another user (nobody): run them as root")


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshctl", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshctl: error:"), done.stderr
    return lines[0]


FAKE_SERVER = """
import json, os, socket, sys
path, binary = sys.argv[1], sys.argv[2]
os.umask(0)
s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.recv(65536)
    live = {"epoch": 0, "binary": binary, "config": binary, "xds_driven": False}
    c.sendall(json.dumps({"ok": True, "phase": "running", "live": live}).encode() + b"\\n")
    c.close()
"""


@pytest.fixture
def evil(workdir: Path) -> Iterator[tuple[Path, Path]]:
    """Another user's state dir with a fake supervisor whose status names a script as the live
    binary; the script leaves a mark if anyone runs it. Yields (state dir, mark)."""
    workdir.chmod(0o755)
    state = workdir / "evil-state"
    state.mkdir(mode=0o700)
    mark = workdir / "evil-ran"
    script = workdir / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {mark}\necho 11.104\n")
    script.chmod(0o755)
    for path in (state, script):
        os.chown(path, NOBODY, NOBODY)
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", FAKE_SERVER, str(state / "control.sock"),
                             str(script)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=_as_nobody)  # noqa: PLW1509
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield state, mark
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_client_command_refuses_a_state_dir_another_user_owns_and_runs_nothing(
        evil: tuple[Path, Path]) -> None:
    state, mark = evil
    for args in (["upgrade", "--wait"], ["status"], ["stop"]):
        done = _cli(*args, "--state-dir", str(state))
        assert done.returncode == ExitCode.STATE_DIR, done.stderr
        assert "belongs to uid 65534" in _one_line(done)
    assert not mark.exists()


def test_a_control_socket_served_by_another_user_is_refused(workdir: Path) -> None:
    """Even where the path is reachable, the server's credentials (SO_PEERCRED) must be ours."""
    workdir.chmod(0o755)
    shared = workdir / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    path = shared / "control.sock"
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", FAKE_SERVER, str(path), "/bin/true"],
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=_as_nobody)  # noqa: PLW1509
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(errors.StateDirError, match="runs as uid 65534"):
            control.call(path, "status")
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("case", ["file_owner", "group_writable", "dir_owner", "open_dir"])
def test_a_binary_another_user_could_replace_is_untrusted(workdir: Path, case: str) -> None:
    base = workdir / "bin"
    base.mkdir(mode=0o755)
    binary = base / "envoy"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    if case == "file_owner":
        os.chown(binary, NOBODY, NOBODY)
    elif case == "group_writable":
        binary.chmod(0o775)
    elif case == "dir_owner":
        os.chown(base, NOBODY, NOBODY)
    else:
        base.chmod(0o777)
    assert untrusted_reason(binary) is not None
    base.chmod(0o1777)  # sticky: nobody may replace a file of ours there
    os.chown(base, 0, 0)
    os.chown(binary, 0, 0)
    binary.chmod(0o755)
    assert untrusted_reason(binary) is None


def test_run_and_upgrade_refuse_a_binary_another_user_owns_with_exit_5(
        meshctl: Meshctl, workdir: Path, ports: Ports, envoy_new: Path) -> None:
    workdir.chmod(0o755)
    theirs = workdir / "their-envoy"
    theirs.write_bytes(envoy_new.read_bytes())
    theirs.chmod(0o755)
    os.chown(theirs, NOBODY, NOBODY)
    config = envoy_config(workdir / "v1.yaml", ports)
    done = _cli("run", "--state-dir", str(workdir / "other-state"), "--envoy", str(theirs),
                "--config", str(config), "--health-address", "off")
    assert done.returncode == ExitCode.BAD_INPUT
    assert "belongs to uid 65534" in _one_line(done)
    meshctl.start(config=config)
    done = meshctl.cli("upgrade", "--envoy", str(theirs), "--wait")
    assert done.returncode == ExitCode.BAD_INPUT
    assert "belongs to uid 65534" in _one_line(done)
    assert meshctl.status()["upgrades"] == 0


def test_shared_memory_another_user_created_first_is_one_line_exit_4(
        workdir: Path, ports: Ports) -> None:
    base_id = 31337
    shm = Path(f"/dev/shm/envoy_shared_memory_{10 * base_id}")
    shm.write_bytes(b"\0" * 104)
    os.chown(shm, NOBODY, NOBODY)
    try:
        done = _cli("run", "--state-dir", str(workdir / "state"), "--base-id", str(base_id),
                    "--config", str(envoy_config(workdir / "v1.yaml", ports)),
                    "--health-address", "off")
        assert done.returncode == ExitCode.BUSY
        assert "belongs to uid 65534" in _one_line(done)
        assert shm.exists() and shm.stat().st_uid == NOBODY
    finally:
        shm.unlink()


def test_a_run_refused_for_a_corrupt_state_file_leaves_hot_restart_files_alone(
        workdir: Path, ports: Ports) -> None:
    """They may be a live Envoy's, left by a killed supervisor, that a later run adopts."""
    state = workdir / "state"
    (state / "hr").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    (state / "state.json").write_text('{"schema": 1, "history": 5}')
    base_id = 31338
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(state / "hr" / f"envoy_parent_{10 * base_id}"))
    shm = Path(f"/dev/shm/envoy_shared_memory_{10 * base_id}")
    shm.write_bytes(b"\0" * 104)
    try:
        done = _cli("run", "--state-dir", str(state), "--base-id", str(base_id),
                    "--config", str(envoy_config(workdir / "v1.yaml", ports)),
                    "--health-address", "off")
        assert done.returncode == ExitCode.STATE_DIR
        assert "corrupt" in _one_line(done)
        assert shm.exists()
        assert (state / "hr" / f"envoy_parent_{10 * base_id}").exists()
    finally:
        sock.close()
        shm.unlink(missing_ok=True)


def test_a_second_supervisor_on_the_same_base_id_is_refused_and_harms_nothing(
        meshctl: Meshctl, workdir: Path, ports: Ports) -> None:
    config = envoy_config(workdir / "v1.yaml", ports)
    meshctl.start(config=config)
    base_id = meshctl.status()["base_id"]
    shm = Path(f"/dev/shm/envoy_shared_memory_{10 * base_id}")
    assert shm.exists()
    done = _cli("run", "--state-dir", str(workdir / "second"), "--base-id", str(base_id),
                "--config", str(config), "--health-address", "off")
    assert done.returncode == ExitCode.BUSY
    assert f"base id {base_id} is used by another meshctl supervisor" in _one_line(done)
    assert shm.exists()
    done = meshctl.cli("upgrade", "--wait")
    assert done.returncode == 0, done.stderr


def test_the_state_dir_is_never_chmod_ed_when_refused(workdir: Path, ports: Ports) -> None:
    shared = workdir / "x"
    shared.mkdir()
    shared.chmod(0o1777)
    done = _cli("run", "--state-dir", str(shared), "--envoy", "/bin/false",
                "--config", str(envoy_config(workdir / "v1.yaml", ports)),
                "--health-address", "off")
    assert done.returncode == ExitCode.STATE_DIR, done.stderr
    _one_line(done)
    assert stat.S_IMODE(shared.stat().st_mode) | stat.S_ISVTX == 0o1777 | stat.S_ISVTX
    assert shared.stat().st_mode & 0o7777 == 0o1777



def test_the_bundled_configs_admin_api_is_a_unix_socket_only_its_user_can_reach(
        meshctl: Meshctl) -> None:
    """On 127.0.0.1:15000 any local user could POST /quitquitquit (issue 19, 3)."""
    meshctl.start()
    epoch = meshctl.status()["epoch"]
    address = (meshctl.state_dir / f"gen-{epoch}.admin").read_text().strip()
    assert address == str(meshctl.state_dir / "admin.sock")
    st = Path(address).stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 15000)) != 0
    done = meshctl.cli("upgrade", "--wait")
    assert done.returncode == 0, done.stderr
    assert Path(address).exists()
