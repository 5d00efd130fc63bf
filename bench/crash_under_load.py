"""What does a crash of the live Envoy cost new connections, with and without held sockets?

The measurement of issue 17, repeated in both arms of one run: hey with 8 keep-alive workers
and hey with 4 new-connection workers for 8 s against Envoy 1.40.0 under `meshctl run`, a
direct response; at 3 s the live Envoy is killed with SIGKILL and meshctl restarts it.
  baseline   `meshctl run --no-hold-sockets`: the sockets die with the process and the port
             refuses connections until the restarted generation binds new ones;
  held       `meshctl run` (the default): the supervisor holds the sockets, the kernel queues
             new connections, the restart takes the same sockets.
Beside hey, a prober connects every 2 ms and records each refusal: the port's refused window.

    python bench/crash_under_load.py              # 3 rounds per arm, ~1 min
    python bench/crash_under_load.py --rounds 1   # smoke
Writes bench/results/crash_under_load.json and prints a Markdown table
(docs/reliability.md, "Crashes refuse nothing").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from zeroloss import crash_section

RESULTS = Path(__file__).resolve().parent / "results" / "crash_under_load.json"
DURATION_S = 8
KILL_AT_S = 3.0


class Prober:
    """Connects every `period_s` and notes each refusal (the port was not listening)."""

    def __init__(self, port: int, period_s: float = 0.002) -> None:
        self.port, self.period_s = port, period_s
        self.attempts = 0
        self.refused: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.attempts += 1
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5):
                    pass
            except ConnectionRefusedError:
                self.refused.append(time.monotonic())
            except OSError:
                pass
            time.sleep(self.period_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def window_s(self) -> float:
        return round(self.refused[-1] - self.refused[0], 3) if self.refused else 0.0


@dataclass
class Round:
    arm: str
    requests: int = 0
    failed: int = 0
    refused_requests: int = 0
    """hey's "connection refused" errors."""
    other_errors: dict[str, int] = field(default_factory=dict)
    probe_refused: int = 0
    probe_attempts: int = 0
    refused_window_s: float = 0.0
    restart_live_after_s: float = 0.0
    held: dict[str, Any] = field(default_factory=dict)


def hey(url: str, workers: int, keepalive: bool, out: Path) -> subprocess.Popen[str]:
    argv = ["hey", "-z", f"{DURATION_S}s", "-c", str(workers), *([] if keepalive
                                                               else ["-disable-keepalive"]), url]
    with out.open("w") as f:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, text=True)


def one_round(arm: str, root: Path) -> Round:
    site = benchlib.Site.create(root)
    extra = ["--no-hold-sockets"] if arm == "baseline" else []
    sup = benchlib.Supervisor(root, benchlib.new_envoy(), site.config_v1, drain_min_s=0.5,
                              drain_max_s=10, extra_args=[*extra, "--restart-window-s", "1"])
    result = Round(arm=arm)
    loads: list[subprocess.Popen[str]] = []
    try:
        sup.start()
        pid = int(sup.status()["live"]["pid"])
        outputs = [root / "hey-keepalive.out", root / "hey-new.out"]
        loads = [hey(site.url, 8, True, outputs[0]), hey(site.url, 4, False, outputs[1])]
        prober = Prober(site.listener_port).start()
        time.sleep(KILL_AT_S)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while True:
            with contextlib.suppress(Exception):
                snap = sup.status()
                if snap.get("phase") == "running" and snap["live"]["pid"] != pid:
                    result.restart_live_after_s = round(time.monotonic() - killed, 3)
                    result.held = dict(snap.get("held_sockets") or {})
                    break
            if time.monotonic() - killed > 30:
                raise RuntimeError(f"no restart within 30 s: {sup.tail()}")
            time.sleep(0.02)
        for proc in loads:
            proc.wait(timeout=DURATION_S + 60)
        prober.stop()
        for out in outputs:
            parsed = benchlib.parse_hey(out.read_text(errors="replace"))
            result.requests += parsed.requests
            result.failed += parsed.failures
            for message, n in parsed.errors.items():
                if "connection refused" in message:
                    result.refused_requests += n
                else:
                    result.other_errors[message] = result.other_errors.get(message, 0) + n
        result.probe_refused = len(prober.refused)
        result.probe_attempts = prober.attempts
        result.refused_window_s = prober.window_s()
    finally:
        for proc in loads:
            benchlib.end_process(proc, "hey", grace_s=5)
        sup.stop()
    return result


def summary(rounds: list[Round]) -> list[list[object]]:
    rows: list[list[object]] = []
    for arm in ("baseline", "held"):
        mine = [r for r in rounds if r.arm == arm]
        if not mine:
            continue
        rows.append([
            "today (--no-hold-sockets)" if arm == "baseline" else "held sockets (default)",
            sum(r.requests for r in mine), sum(r.failed for r in mine),
            sum(r.refused_requests for r in mine),
            sum(sum(r.other_errors.values()) for r in mine),
            " / ".join(f"{r.refused_window_s:.3f}" for r in mine),
            " / ".join(f"{r.restart_live_after_s:.2f}" for r in mine),
        ])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    machine = benchlib.machine_info()
    rounds: list[Round] = []
    for i in range(args.rounds):
        for arm in ("baseline", "held"):  # interleaved: both arms see the same machine
            with benchlib.workdir(f"crash-{arm}-") as root:
                benchlib.log(f"round {i + 1}/{args.rounds}: {arm}")
                rounds.append(one_round(arm, root))
                benchlib.log(json.dumps(rounds[-1].__dict__))
    benchlib.finish_machine_info(machine)
    table = benchlib.markdown_table(
        ["arm", "requests", "failed", "refused", "other errors", "port refused for (s)",
         "restart LIVE after (s)"], summary(rounds))
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "duration_s": DURATION_S,
                                     "kill_at_s": KILL_AT_S,
                                     "rounds": [r.__dict__ for r in rounds],
                                     "table": table}, indent=1) + "\n")
    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    data = crash_section.load()
    if data is not None and docs.exists():
        docs.write_text(crash_section.splice(docs.read_text(), data))
    held = [r for r in rounds if r.arm == "held"]
    return 0 if all(r.refused_requests == 0 and r.probe_refused == 0 for r in held) else 1


if __name__ == "__main__":
    sys.exit(main())
