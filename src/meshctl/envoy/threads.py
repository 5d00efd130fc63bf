"""Envoy's threads as the kernel lists them, and what they tell about a generation.

Envoy names its threads (`/proc/PID/task/TID/comm`): `envoy` (main), `dog:*` (watchdogs),
`grpc_*`, and one `wrk:worker_N` per worker. The workers are started in one go when the
server's initialization is complete (`startWorkers()`, the moment it turns LIVE): from then on
its listeners accept and it serves. Seen on 1.39.3 and 1.40.0: the `wrk:` threads appear in
the same 10 ms as `/ready` answers LIVE.
"""

from __future__ import annotations

import contextlib
import os

WORKER_PREFIX = "wrk:"
UNNAMED = "envoy"
"""The process's name, which a new thread has until Envoy names it (and the main thread
keeps)."""


class ThreadNames:
    """The thread names of one process, read incrementally: a thread's name other than
    `UNNAMED` is final and not read again, so a poll costs one directory listing and a read
    per thread still unnamed (~50 us with Envoy's ~10 threads, against ~180 us for all)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.final: dict[int, str] = {}

    def poll(self) -> bool:
        """Read what is new; False if the process is gone."""
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]
        except OSError:
            return False
        for tid in tids:
            if tid in self.final:
                continue
            with contextlib.suppress(OSError), open(f"/proc/{self.pid}/task/{tid}/comm") as f:
                name = f.read().strip()
                if name != UNNAMED:
                    self.final[tid] = name
        return True

    def workers_started(self) -> bool:
        return any(name.startswith(WORKER_PREFIX) for name in self.final.values())
