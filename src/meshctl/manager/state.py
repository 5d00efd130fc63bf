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
import stat
from pathlib import Path
from typing import Any

from meshctl.errors import Busy, StateDirError

SCHEMA = 1
HISTORY_KEEP = 50
# sun_path holds 108 bytes with its NUL; the longest name we bind is Envoy's
# "<socket_prefix>_udp_parent_<id>", id = 10 * base id + epoch % 3, base id < 10,000,000.
_SUN_PATH_MAX = 107
_LONGEST_SOCKET_SUFFIX = len("_udp_parent_") + 8


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
        """Create (0700) or check the dir: it must be ours and closed to others."""
        longest = len(os.fsencode(self.socket_prefix)) + _LONGEST_SOCKET_SUFFIX
        if longest > _SUN_PATH_MAX:
            raise StateDirError(f"state dir {self.root} is too long a path for Unix sockets "
                                f"({longest} > {_SUN_PATH_MAX} bytes); choose a shorter one")
        for path in (self.root, self.socket_prefix.parent, self.logs):
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                st = path.stat()
            except OSError as exc:
                raise StateDirError(f"state dir {path} cannot be created: {exc.strerror}") from exc
            if not stat.S_ISDIR(st.st_mode):
                raise StateDirError(f"state dir {path} is not a directory")
            if st.st_uid != os.getuid():
                raise StateDirError(f"state dir {path} belongs to uid {st.st_uid}, not us")
            if st.st_mode & 0o077:
                try:
                    path.chmod(0o700)
                except OSError as exc:
                    raise StateDirError(f"state dir {path} is open to others and cannot be "
                                        f"closed: {exc.strerror}") from exc
            if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
                raise StateDirError(f"state dir {path} is not readable and writable")

    def acquire(self) -> None:
        """Take the supervisor lock, or refuse: one supervisor per state dir."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
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
        return data

    def save(self, data: dict[str, Any]) -> None:
        """Write, fsync, rename, fsync the dir: a crash leaves the old file or the new one."""
        data = {"schema": SCHEMA, **data}
        tmp = self.state_file.with_name(f".state.json.{os.getpid()}.tmp")
        payload = json.dumps(data, indent=2, sort_keys=True).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, payload)
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
