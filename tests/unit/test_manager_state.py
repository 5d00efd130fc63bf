"""The state dir (`meshctl.manager.state`): ownership, the supervisor lock, atomic state."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.envoy.hotrestart import HotRestartFiles
from meshctl.errors import Busy, PreflightFailed, StateDirError
from meshctl.exitcodes import ExitCode
from meshctl.manager.state import SCHEMA, StateDir

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDir]:
    sd = StateDir(tmp_path / "state")
    try:
        yield sd
    finally:
        sd.release()


@pytest.fixture
def prepared(state: StateDir) -> StateDir:
    state.prepare()
    return state


# ----------------------------------------------------------------- layout and prepare


def test_everything_lives_under_the_root(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    assert sd.state_file == tmp_path / "state.json"
    assert sd.lock_file == tmp_path / "supervisor.lock"
    assert sd.control_socket == tmp_path / "control.sock"
    assert sd.socket_prefix == tmp_path / "hr" / "envoy"
    assert sd.admin_address_file(3) == tmp_path / "gen-3.admin"
    assert sd.log_file(3) == tmp_path / "logs" / "envoy-3.log"


def test_prepare_creates_the_dir_and_its_subdirs_closed_to_others(state: StateDir) -> None:
    state.prepare()
    for path in (state.root, state.socket_prefix.parent, state.logs):
        assert path.is_dir()
        assert mode(path) == 0o700


def test_prepare_creates_missing_parents(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "a" / "b" / "state")
    sd.prepare()
    assert mode(sd.root) == 0o700


def test_prepare_twice_is_harmless(prepared: StateDir) -> None:
    prepared.save({"epoch": 1})
    prepared.prepare()
    assert prepared.load() == {"schema": SCHEMA, "epoch": 1}


def test_prepare_closes_an_existing_dir_that_others_can_only_read(state: StateDir) -> None:
    state.root.mkdir()
    state.root.chmod(0o755)
    (state.root / "logs").mkdir()
    (state.root / "logs").chmod(0o755)
    state.prepare()
    assert mode(state.root) == 0o700
    assert mode(state.logs) == 0o700


@pytest.mark.parametrize("dir_mode", [0o777, 0o1777, 0o775])
def test_prepare_refuses_and_leaves_alone_a_dir_others_can_write(
        state: StateDir, dir_mode: int) -> None:
    """`meshctl run --state-dir /tmp/x` on a 1777 dir used to make it 0700 (issue 19, 1)."""
    state.root.mkdir()
    state.root.chmod(dir_mode)
    with pytest.raises(StateDirError, match="can be written by other users") as info:
        state.prepare()
    assert info.value.exit_code == 7
    assert state.root.stat().st_mode & 0o7777 == dir_mode


def test_prepare_refuses_a_dir_that_holds_what_is_not_meshctls(state: StateDir) -> None:
    """A typo such as --state-dir /tmp, or /proc: never taken over."""
    state.root.mkdir(mode=0o755)
    (state.root / "somebody-elses.txt").write_text("x")
    with pytest.raises(StateDirError, match="not a meshctl state dir"):
        state.prepare()
    assert mode(state.root) == 0o755


def test_prepare_refuses_proc() -> None:
    with pytest.raises(StateDirError):
        StateDir(Path("/proc")).prepare()
    assert mode(Path("/proc")) == 0o555


def test_prepare_refuses_a_state_dir_under_a_dir_others_can_write_without_sticky_bit(
        tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(StateDirError, match="not sticky"):
        StateDir(open_dir / "state").prepare()
    assert not (open_dir / "state").exists()


def test_the_supervisor_lock_is_never_opened_through_a_symlink(prepared: StateDir) -> None:
    target = prepared.root / "elsewhere"
    target.write_text("precious\n")
    prepared.lock_file.unlink(missing_ok=True)
    prepared.lock_file.symlink_to(target)
    with pytest.raises(StateDirError, match="symbolic link"):
        prepared.acquire()
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("data", [
    {"history": 5}, {"history": [1, 2, "x"]}, {"generations": "x"}, {"upgrade_counter": "7"},
    {"history": [{"id": "u1"}]}, {"base_id": True},
])
def test_a_state_file_of_valid_json_but_wrong_types_is_corrupt_exit_7(
        prepared: StateDir, data: dict[str, object]) -> None:
    prepared.state_file.write_text(json.dumps({"schema": SCHEMA, **data}))
    with pytest.raises(StateDirError, match="corrupt") as info:
        prepared.load()
    assert info.value.exit_code == 7


def test_prepare_refuses_a_file_where_the_dir_should_be(state: StateDir) -> None:
    state.root.write_text("not a dir")
    with pytest.raises(StateDirError, match="cannot be created") as info:
        state.prepare()
    assert info.value.exit_code is ExitCode.STATE_DIR


def test_prepare_refuses_a_file_where_a_subdir_should_be(state: StateDir) -> None:
    state.root.mkdir(mode=0o700)
    (state.root / "hr").write_text("not a dir")
    with pytest.raises(StateDirError, match=f"state dir {state.root / 'hr'} cannot be created"):
        state.prepare()


def test_prepare_refuses_a_dir_owned_by_another_user(tmp_path: Path) -> None:
    if os.getuid() == 0:
        root = tmp_path / "state"
        root.mkdir(mode=0o700)
        os.chown(root, NOBODY, NOBODY)
        owner = NOBODY
    else:
        root, owner = Path("/"), 0  # the only dir surely someone else's; nothing is created
    with pytest.raises(StateDirError, match=f"belongs to uid {owner}, not us"):
        StateDir(root).prepare()
    if owner == NOBODY:
        assert not (root / "logs").exists()  # refused before creating anything inside


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a dir to another user")
def test_prepare_refuses_a_subdir_owned_by_another_user(state: StateDir) -> None:
    state.logs.mkdir(parents=True, mode=0o700)
    os.chown(state.logs, NOBODY, NOBODY)
    with pytest.raises(StateDirError, match=f"{state.logs} belongs to uid {NOBODY}"):
        state.prepare()


# ----------------------------------------------------------------- save and load


def test_there_is_no_state_before_the_first_save(prepared: StateDir) -> None:
    assert prepared.load() is None


def test_saved_state_loads_back_with_its_schema(prepared: StateDir) -> None:
    data = {"epoch": 2, "base_id": 4242, "live": {"pid": 123},
            "history": [{"id": "u1", "result": "succeeded"}]}
    prepared.save(data)
    assert prepared.load() == {"schema": SCHEMA, **data}


def test_the_state_file_is_plain_json_only_its_user_can_read(prepared: StateDir) -> None:
    prepared.save({"epoch": 2})
    assert json.loads(prepared.state_file.read_text()) == {"schema": SCHEMA, "epoch": 2}
    assert mode(prepared.state_file) == 0o600


def test_a_save_replaces_the_previous_state_and_leaves_no_temporary_file(
    prepared: StateDir,
) -> None:
    for epoch in range(5):
        prepared.save({"epoch": epoch})
    assert prepared.load() == {"schema": SCHEMA, "epoch": 4}
    assert sorted(p.name for p in prepared.root.iterdir()) == ["hr", "logs", "state.json"]


def test_a_save_that_cannot_write_is_a_state_dir_error_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    sd = StateDir(tmp_path / "never-prepared")
    with pytest.raises(StateDirError, match="cannot write"):
        sd.save({"epoch": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_previous_state(prepared: StateDir) -> None:
    prepared.save({"epoch": 1})
    with pytest.raises(TypeError):
        prepared.save({"epoch": object()})
    assert prepared.load() == {"schema": SCHEMA, "epoch": 1}


@pytest.mark.parametrize("content", [b"{\"schema\": 1, \"epoch\": ", b"", b"\xff\xfe",
                                     b"not json at all"])
def test_corrupt_state_is_an_error_and_is_left_as_it_was(
    prepared: StateDir, content: bytes
) -> None:
    prepared.state_file.write_bytes(content)
    with pytest.raises(StateDirError, match="is corrupt") as info:
        prepared.load()
    assert "move it aside" in str(info.value)
    assert prepared.state_file.read_bytes() == content


@pytest.mark.parametrize("data", [[1, 2], {"epoch": 1}, {"schema": 2, "epoch": 1}, "state"])
def test_json_that_is_not_meshctl_state_is_an_error_and_is_left_as_it_was(
    prepared: StateDir, data: object
) -> None:
    content = json.dumps(data).encode()
    prepared.state_file.write_bytes(content)
    with pytest.raises(StateDirError, match=f"not a meshctl state file of schema {SCHEMA}"):
        prepared.load()
    assert prepared.state_file.read_bytes() == content


# ----------------------------------------------------------------- the supervisor lock


def test_the_lock_holder_writes_its_pid_into_the_lock_file(prepared: StateDir) -> None:
    prepared.acquire()
    assert prepared.lock_file.read_text() == f"{os.getpid()}\n"
    assert mode(prepared.lock_file) == 0o600


def test_a_second_supervisor_on_the_same_dir_is_refused_naming_the_holder(
    prepared: StateDir,
) -> None:
    prepared.acquire()
    second = StateDir(prepared.root)
    with pytest.raises(Busy, match=rf"owned by a running supervisor \(pid {os.getpid()}\)") \
            as info:
        second.acquire()
    assert info.value.exit_code is ExitCode.BUSY
    second.release()  # never acquired: harmless


def test_a_supervisor_in_another_process_is_named_by_its_pid(prepared: StateDir) -> None:
    holder_code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from meshctl.manager.state import StateDir
        sd = StateDir(Path({str(prepared.root)!r}))
        sd.acquire()
        print("locked", flush=True)
        sys.stdin.read()  # hold the lock until the test closes our stdin
    """)
    holder = subprocess.Popen([sys.executable, "-c", holder_code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(Busy, match=rf"\(pid {holder.pid}\)"):
            prepared.acquire()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    prepared.acquire()  # the lock died with its holder
    assert prepared.lock_file.read_text() == f"{os.getpid()}\n"


def test_after_release_the_dir_can_be_acquired_again(prepared: StateDir) -> None:
    prepared.acquire()
    prepared.release()
    second = StateDir(prepared.root)
    second.acquire()
    try:
        with pytest.raises(Busy):
            prepared.acquire()
    finally:
        second.release()


def test_release_without_acquire_is_harmless(state: StateDir) -> None:
    state.release()
    state.release()


def test_acquire_before_prepare_is_a_state_dir_error(state: StateDir) -> None:
    with pytest.raises(StateDirError, match="cannot open"):
        state.acquire()


# ----------------------------------------------------------------- socket path length


def longest_accepted_root(base: Path) -> Path:
    """The longest state dir under `base` that prepare accepts (Unix socket paths are short)."""
    for length in range(200, len(str(base)) + 1, -1):
        root = base / ("s" * (length - len(str(base)) - 1))
        try:
            StateDir(root).prepare()
        except StateDirError as exc:
            assert "too long a path for Unix sockets" in str(exc)
            continue
        return root
    raise AssertionError(f"no state dir under {base} is accepted")


def test_prepare_refuses_a_state_dir_too_long_for_unix_sockets(sock_dir: Path) -> None:
    root = sock_dir / ("s" * 150)
    with pytest.raises(StateDirError, match=r"too long a path for Unix sockets \(\d+ > 107"):
        StateDir(root).prepare()
    assert not root.exists()


def test_every_socket_envoy_binds_fits_in_the_longest_state_dir_prepare_accepts(
    sock_dir: Path,
) -> None:
    root = longest_accepted_root(sock_dir)
    assert len(str(root)) > 60
    # base id 100000 gives socket ids of 7 digits, the most a default base id gives
    files = HotRestartFiles(StateDir(root).socket_prefix, base_id=100_000)
    for path in files.sockets_of(2):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(StateDir(root).control_socket))


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a state dir's file system that fills up (found by the chaos run)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_save_on_a_full_file_system_keeps_the_last_good_state_file(small_fs: Path) -> None:
    state = StateDir(small_fs / "sd")
    state.prepare()
    state.save({"history": [{"id": "u1"}], "generations": []})
    good = state.state_file.read_bytes()
    # Leave two pages free: the next state file fits in part, so os.write writes less than
    # asked before it fails.
    vfs = os.statvfs(small_fs)
    with (small_fs / "filler").open("wb") as f, contextlib.suppress(OSError):
        f.write(b"x" * (vfs.f_bavail * vfs.f_frsize - 2 * 4096))

    with pytest.raises(StateDirError, match="cannot write"):
        state.save({"history": [{"id": f"u{i}", "pad": "y" * 200} for i in range(100)],
                    "generations": []})

    assert state.state_file.read_bytes() == good  # never truncated
    assert [p.name for p in (small_fs / "sd").iterdir() if p.name.endswith(".tmp")] == []


def test_check_room_refuses_an_upgrade_once_the_file_system_is_nearly_full(
        tmp_path: Path) -> None:
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)],
                   check=True)
    try:
        state = StateDir(mount / "sd")
        state.prepare()
        state.check_room("an upgrade")  # 4 MiB free: room enough
        with (mount / "filler").open("wb") as f:
            f.write(b"x" * (3 << 20) + b"x" * (512 << 10))
        with pytest.raises(PreflightFailed, match=r"an upgrade refused: the state dir's file "
                                                  r"system has \d+ KiB"):
            state.check_room("an upgrade")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
