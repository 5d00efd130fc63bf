"""The state dir: who owns it, what runs, what happened. Survives the supervisor.

Layout (0700, owned by the supervisor's user):
  supervisor.lock   flock held by the running supervisor for its whole life
  state.json        current epoch, base id, live generation, upgrade history (atomic writes)
  control.sock      the CLI's control socket (0600)
  hr/               hot-restart domain sockets (Envoy's --socket-path)
  gen-<epoch>.admin admin address published by each generation
  logs/             one log file per generation
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from meshctl.errors import Busy, PreflightFailed, StateDirError

SCHEMA = 1
HISTORY_KEEP = 50
# sun_path holds 108 bytes with its NUL; the longest name we bind is Envoy's
# "<socket_prefix>_udp_parent_<id>", id = 10 * base id + epoch % 3, base id < 10,000,000.
_SUN_PATH_MAX = 107
_LONGEST_SOCKET_SUFFIX = len("_udp_parent_") + 8
# What a state dir may hold: an existing dir with anything else in it is not ours (a typo such
# as --state-dir /tmp, or /proc), and meshctl never takes it over.
_OURS = re.compile(r"(state\.json|\.state\.json\.\d+\.tmp|supervisor\.lock|control\.sock|"
                   r"gate\.sock|hr|logs|gen-\d+\.admin|demo-envoy\.yaml|\.demo-envoy\.yaml\.tmp|"
                   r"admin\.sock)")
_ROOM_BYTES = 1 << 20
_ROOM_INODES = 16
"""What a new generation needs free in the state dir (`check_room`): its admin address file,
four sockets, a log that may grow."""
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "history": list, "generations": list, "upgrade_counter": int, "base_id": int,
}


class StateDir:
    def __init__(self, root: Path, hot_restart_dir: Path | None = None) -> None:
        self.root = root
        self._hr = hot_restart_dir or root / "hr"
        """Shared by the two proxy slots of a pod (their supervisors' state dirs differ)."""
        self._lock_fd: int | None = None

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def socket_prefix(self) -> Path:
        return self._hr / "envoy"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def admin_address_file(self, epoch: int) -> Path:
        return self.root / f"gen-{epoch}.admin"

    def log_file(self, epoch: int) -> Path:
        return self.logs / f"envoy-{epoch}.log"

    def prepare(self) -> None:
        """Create (0700) or check the dir: it must be ours, closed to others, and hold
        nothing but meshctl's files. An existing dir is never taken over: one that others can
        write to, or that holds anything else, is refused, not chmod-ed (`--state-dir /tmp`
        must not close /tmp)."""
        longest = len(os.fsencode(self.socket_prefix)) + _LONGEST_SOCKET_SUFFIX
        if longest > _SUN_PATH_MAX:
            raise StateDirError(f"state dir {self.root} is too long a path for Unix sockets "
                                f"({longest} > {_SUN_PATH_MAX} bytes); choose a shorter one")
        self._check_parent()
        if self.root.is_dir() and not self.root.is_symlink():
            self._check_existing(self.root)
        for path in (self.root, self.socket_prefix.parent, self.logs):
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                st = path.lstat()
            except OSError as exc:
                raise StateDirError(f"state dir {path} cannot be created: {exc.strerror}") from exc
            if not stat.S_ISDIR(st.st_mode):
                raise StateDirError(f"state dir {path} is not a directory")
            if st.st_uid != os.getuid():
                raise StateDirError(f"state dir {path} belongs to uid {st.st_uid}, not us")
            if st.st_mode & 0o022:
                raise StateDirError(
                    f"state dir {path} can be written by other users (mode "
                    f"{stat.S_IMODE(st.st_mode):o}); meshctl only uses a dir of its own: "
                    f"choose another, or make it 0700 yourself")
            if st.st_mode & 0o077:
                # Readable by others but writable by us alone (a RuntimeDirectory's 0755):
                # closing it takes nothing from anyone.
                try:
                    path.chmod(0o700)
                except OSError as exc:
                    raise StateDirError(f"state dir {path} is open to others and cannot be "
                                        f"closed: {exc.strerror}") from exc
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StateDirError(f"state dir {self.root} is not readable and writable")

    def _check_existing(self, root: Path) -> None:
        try:
            names = sorted(os.listdir(root))
        except OSError as exc:
            raise StateDirError(f"state dir {root} cannot be read: {exc.strerror}") from exc
        foreign = [n for n in names if not _OURS.fullmatch(n)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise StateDirError(f"{root} is not a meshctl state dir (it holds {shown}); give "
                                f"a dir of its own, e.g. {root / 'meshctl'}")

    def _check_parent(self) -> None:
        """The dir that holds the state dir must not let another user replace it: owned by
        us or root, and not writable by others unless sticky (/tmp). In a pod the shared
        emptyDir (0777) holds both slots' dirs: one pod, one trust domain."""
        parent = (self._hr.parent if self._hr != self.root / "hr" else self.root).parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        try:
            st = parent.stat()
        except OSError as exc:
            raise StateDirError(f"cannot check {parent}: {exc.strerror}") from exc
        pod = self._hr != self.root / "hr"
        if st.st_uid not in (0, os.getuid()) and not pod:
            raise StateDirError(f"the state dir's parent {parent} belongs to uid {st.st_uid}: "
                                f"that user could replace the state dir")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX and not pod:
            raise StateDirError(f"the state dir's parent {parent} can be written by other "
                                f"users and is not sticky: they could replace the state dir")

    def check_client(self) -> None:
        """For a client command: the state dir is ours, so that what answers on its control
        socket is our supervisor, not another user's stand-in (whose status could name a
        binary for the pre-flight to run)."""
        try:
            st = self.root.lstat()
        except FileNotFoundError:
            return  # nothing runs there: the call says so (exit 3)
        except OSError as exc:
            raise StateDirError(f"cannot check {self.root}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise StateDirError(f"state dir {self.root} is not a directory")
        if st.st_uid != os.getuid():
            raise StateDirError(f"state dir {self.root} belongs to uid {st.st_uid}, not us: "
                                f"refusing to talk to a supervisor another user controls")
        if st.st_mode & 0o022:
            raise StateDirError(f"state dir {self.root} can be written by other users (mode "
                                f"{stat.S_IMODE(st.st_mode):o}): refusing to use it")

    def acquire(self) -> None:
        """Take the supervisor lock, or refuse: one supervisor per state dir."""
        try:
            fd = os.open(self.lock_file,
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateDirError(f"{self.lock_file} is a symbolic link: refusing to follow "
                                    f"it") from exc
            raise StateDirError(f"cannot open {self.lock_file}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise Busy(f"state dir {self.root} is owned by a running supervisor "
                           f"(pid {holder})") from exc
            raise StateDirError(f"cannot lock {self.lock_file}: {exc.strerror}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def load(self) -> dict[str, Any] | None:
        """The last state written, None if there is none; corrupt state is an error, never
        silently replaced (it may be the only record of a running generation)."""
        try:
            raw = self.state_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateDirError(f"cannot read {self.state_file}: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StateDirError(f"{self.state_file} is corrupt ({exc}); move it aside to start "
                                f"over") from exc
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise StateDirError(f"{self.state_file} is not a meshctl state file of schema "
                                f"{SCHEMA}; move it aside to start over")
        problem = _malformed(data)
        if problem is not None:
            raise StateDirError(f"{self.state_file} is corrupt ({problem}); move it aside to "
                                f"start over")
        return data

    def check_room(self, what: str) -> None:
        """Refuse (PreflightFailed, exit 6) when the state dir's file system is (nearly) full.
        A new generation writes its admin address file, its log and its hot-restart sockets
        there: without room, Envoy starts but the supervisor never learns its admin address,
        so it is never seen LIVE, and the failed child leaves the old generation without its
        admin listener (Trap 1), unrepaired. Found by the chaos run (full_state_dir)."""
        try:
            vfs = os.statvfs(self.root)
        except OSError as exc:
            raise StateDirError(f"cannot read {self.root}'s file system: {exc.strerror}") \
                from exc
        free = vfs.f_bavail * vfs.f_frsize
        if free < _ROOM_BYTES or (vfs.f_files and vfs.f_favail < _ROOM_INODES):
            raise PreflightFailed(f"{what} refused: the state dir's file system has "
                                  f"{free // 1024} KiB and {vfs.f_favail} inodes free (needs "
                                  f"{_ROOM_BYTES // 1024} KiB and {_ROOM_INODES}); free some "
                                  f"space under {self.root}")

    def save(self, data: dict[str, Any]) -> None:
        """Write, fsync, rename, fsync the dir: a crash leaves the old file or the new one."""
        data = {"schema": SCHEMA, **data}
        tmp = self.state_file.with_name(f".state.json.{os.getpid()}.tmp")
        payload = json.dumps(data, indent=2, sort_keys=True).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                # os.write may write less than asked (a file system filling up): the rest,
                # or ENOSPC, and then the old file stays, never a truncated one.
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.state_file)
            dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StateDirError(f"cannot write {self.state_file}: {exc.strerror}") from exc


def _malformed(data: dict[str, Any]) -> str | None:
    """What is wrong with a state file's fields (valid JSON, wrong types), or None."""
    for key, kind in _FIELD_TYPES.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"{key} is {type(value).__name__}, not {getattr(kind, '__name__', kind)}"
    for key in ("history", "generations"):
        for item in data.get(key) or []:
            if not isinstance(item, dict):
                return f"an entry of {key} is {type(item).__name__}, not an object"
    for record in data.get("history") or []:
        if not isinstance(record.get("id"), str) or not isinstance(record.get("result"), str):
            return "an upgrade record has no id or result"
    return None
