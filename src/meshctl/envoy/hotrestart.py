"""The files Envoy's hot restart leaves in the file system, and how to clean them up.

Verified on this machine (see docs/envoy-hot-restart.md): with `--socket-path P` each generation
binds four Unix datagram sockets `P_parent_<id>`, `P_child_<id>`, `P_udp_parent_<id>`,
`P_udp_child_<id>` with `id = 10 * base_id + epoch % 3`, and all generations share
`/dev/shm/envoy_shared_memory_<10 * base_id>`. Envoy removes none of them at exit.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

SHM_DIR = Path("/dev/shm")
_ROLES = ("parent", "child", "udp_parent", "udp_child")
_EPOCH_SLOTS = 3  # Envoy reuses socket names modulo 3: at most three generations overlap


@dataclass(frozen=True)
class HotRestartFiles:
    socket_prefix: Path
    base_id: int
    shm_dir: Path = SHM_DIR

    def socket_id(self, epoch: int) -> int:
        return 10 * self.base_id + epoch % _EPOCH_SLOTS

    def socket(self, role: str, epoch: int) -> Path:
        return self.socket_prefix.with_name(
            f"{self.socket_prefix.name}_{role}_{self.socket_id(epoch)}"
        )

    def parent_socket(self, epoch: int) -> Path:
        """Where generation `epoch` listens for its child (generation epoch+1)."""
        return self.socket("parent", epoch)

    def sockets_of(self, epoch: int, *, keep_parent: bool = False) -> list[Path]:
        roles = [r for r in _ROLES if not (keep_parent and r == "parent")]
        return [self.socket(role, epoch) for role in roles]

    def all_sockets(self) -> list[Path]:
        return [self.socket(role, slot) for slot in range(_EPOCH_SLOTS) for role in _ROLES]

    @property
    def shared_memory(self) -> Path:
        return self.shm_dir / f"envoy_shared_memory_{10 * self.base_id}"

    def remove_generation(self, epoch: int, *, keep_parent: bool = False) -> None:
        """Remove an exited generation's sockets (its parent socket may belong to a stand-in)."""
        for path in self.sockets_of(epoch, keep_parent=keep_parent):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def shared_memory_foreign_owner(self) -> int | None:
        """The uid of another user who owns our shared-memory file (it squats our base id, or
        runs an Envoy on it), or None when it is ours or absent. Its name follows from the
        base id alone, and the base id from the state dir's path: anyone can guess it."""
        try:
            owner = self.shared_memory.lstat().st_uid
        except FileNotFoundError:
            return None
        return owner if owner != os.getuid() else None

    def remove_all(self) -> None:
        """Remove every socket and the shared memory: only when no generation is running."""
        for path in [*self.all_sockets(), self.shared_memory]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def leave_dead_parent(self, epoch: int) -> None:
        """Make `epoch`'s parent socket a socket file nobody listens on, as a crashed Envoy
        leaves it. --skip-hot-restart-on-no-parent copes with ECONNREFUSED there, but aborts
        on ENOENT, which is what a cleaned-up directory gives."""
        path = self.parent_socket(epoch)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
        os.chmod(path, 0o600)

    def existing(self) -> list[Path]:
        return [p for p in [*self.all_sockets(), self.shared_memory] if p.exists()]
