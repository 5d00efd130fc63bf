"""The four scenarios of the proof, each run against meshctl and against the naive stop-and-start,
one arm after the other in the same run, under the same load plan:

1. `one-upgrade`: one upgrade 1.39.3 -> 1.40.0 at the highest sustainable rate (a fraction of
   the closed-loop maximum measured at the start of the run, cross-checked with wrk);
2. `storm`: 20 upgrades back to back (1.39.3 <-> 1.40.0, config v1 <-> v2) under constant load;
3. `slow`: every request waits 2 s in the upstream, and one long-lived TCP stream (tcp_proxy)
   is pinged from before the upgrade to after it;
4. `failed-upgrades`: a binary that crashes at start, a config whose extra listener port is
   taken, a config whose initialization never ends (a silent xDS server, ready timeout 3 s),
   then one good upgrade; the naive operator stops the old Envoy, tries the new one, and starts
   the old one again when it fails.

Each arm gets a fresh work dir (short, for the Unix sockets), fresh ports and base id; one
upstream (`Upstream`) serves the whole run. The load is open loop (`client.LoadPlan` with rates)
in every arm: failures are requests that were due and did not succeed, so the two arms' counts
compare.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchlib import Load, LoadSpec, log, tcp_table_size
from meshctl.drain.connections import count_downstream
from zeroloss import analysis, records
from zeroloss.arms import Arm, MeshctlArm, NaiveArm, UpgradeResult, process_figures, rss_mb
from zeroloss.client import LaneGroup, LoadPlan, LoadRun, Target
from zeroloss.configs import Site
from zeroloss.cpus import Partition
from zeroloss.tcpstream import TcpStream
from zeroloss.upstream import Upstream

ARMS = ("meshctl", "naive")


@dataclass(frozen=True)
class Settings:
    """The knobs of one run of the suite (`full_run()` and `smoke_run()` are the presets)."""

    old_envoy: Path
    new_envoy: Path
    old_version: str = "1.39.3"
    new_version: str = "1.40.0"
    smoke: bool = False
    workers: int = 2
    """Load client processes."""
    upstream_processes: int = 2
    calibrate_s: float = 5.0
    """Each closed-loop calibration run (our client twice, wrk once)."""
    cross_check: bool = True
    """Calibrate also with HTTP/1.1 only and with wrk (the cross-check of the client's rate)."""
    drain_strategy: str = "gradual"
    """meshctl's drain strategy in the meshctl arms (`meshctl run --drain-strategy`; empty:
    meshctl's own default, `immediate`). `gradual` because it is the setting for traffic whose
    latency matters (docs/drain.md): Envoy asks a response's connection to close with a
    probability growing from 1/22 (meshctl's --drain-time-s with the default window) by 1/22 a
    second, so the keep-alive clients reconnect over 1-3 s instead of all at once, on the new
    generation's first milliseconds of serving. Measured on the same CPU split (3 rounds
    each, 2026-12-02): p99 ratio 1.15x with `gradual`, 2.70x with `immediate`; the old
    generation then leaves 3.2-3.6 s after the command instead of ~1.3 s."""
    cpus: Partition = field(default_factory=Partition)
    """Where the proxy and the load run (`zeroloss.cpus`); proof.py sets it (`--cpus`, default
    auto: half the CPUs each)."""
    attempts_dir: Path | None = None
    """If set, every arm's attempts are written there (`KEY-ARM.json`: the load's start on the
    monotonic clock and the attempts column-wise) for a closer look than the report's."""
    rate_fraction: float = 0.3
    """Scenario 1's open-loop rate, as a fraction of the closed-loop maximum. At 0.5 the client
    still keeps its schedule, but this 2-core machine has no idle CPU left (the Python load
    client alone takes about one core; PSI some avg10 30-55 %, steady-state p99 swinging
    between 5 and 60 ms), so any extra work, an upgrade's or anyone else's, shows as latency:
    not a load at which a latency ratio means anything, nor one a proxy is run at. 0.3 is the
    highest fraction tried (0.3, 0.5) at which the machine keeps idle CPU; docs/latency.md
    has the figures of both."""
    constant_fraction: float = 0.25
    """Scenarios 2 and 4's open-loop rate, as a fraction of the closed-loop maximum measured
    just before each: their many upgrades (pre-flight checks, Envoy start-ups) compete with the
    load for the 2 cores for a minute or more."""
    recalibrate_s: float = 2.0
    """The closed-loop run before scenarios 2 and 4."""
    one_upgrade_s: float = 20.0
    """Scenario 1's load, at least (see `control`); the upgrade command at 40 % of it."""
    rounds: int = 5
    """Scenario 1 repeats its upgrade in this many rounds, each a fresh pair of arms, and
    judges the latency target on all rounds' requests together (`analysis.pool`): on this
    machine a single 2-second window's p99 swings 0.3-5.7x with no upgrade in it
    (docs/latency.md), so one window decides nothing."""
    storm_upgrades: int = 20
    slow_delay_ms: float = 2000.0
    slow_rate: float = 60.0
    slow_s: float = 16.0
    slow_upgrade_at_s: float = 4.0
    slow_drain_max_s: float = 6.0
    """Scenario 3's drain window maximum (meshctl's default is 45 s): the TCP stream keeps the
    old generation busy, so its drain ends at this deadline."""
    failures: tuple[str, ...] = ("bad-binary", "port-conflict", "init-hang")
    final_upgrade: bool = True
    """After scenario 4's failures, one good upgrade (the next upgrade works)."""
    hang_ready_timeout_s: float = 3.0
    lead_s: float = 12.0
    """Load before the first upgrade of scenarios 2 and 4: the `before` window is this less
    `warmup_s`. Not shorter: the windows it is compared with last 20 s (scenario 4) and
    100 s (the storm), and on this machine a short window's p99 is mostly a question of
    whether one of the machine's own bursts fell into it (with 4 s, a 3 s window, scenario 4
    measured 1.17-1.71x in six runs of nearly the same code on 2026-12-02)."""
    control: bool = True
    """Scenarios 1 and 4 keep their load after the last upgrade for a control window (as long
    as `during`, `analysis.CONTROL_GAP_S` after it): the ratio of its p99 to the p99 before
    says how far the verdict is the machine's noise (the storm's `during` of 100 s is its own
    average). Scenario 1's load lasts `one_upgrade_s` or longer: on a slower machine (the
    upgrade's `during` 5.8-7.0 s instead of 4-5 s, 2026-12-02) a fixed 20 s left no room
    for it."""
    pause_s: float = 1.0
    """Between two upgrades of scenario 4."""
    tail_s: float = 2.0
    """Load after the last upgrade of scenarios 2 and 4."""
    idle_s: float = 10.0
    """The supervisor's idle CPU is measured over this long (before scenario 1's load, after
    scenario 2's)."""
    warmup_s: float = 1.0
    timeout_s: float = 10.0
    """Per request attempt."""

    @classmethod
    def full_run(cls, old_envoy: Path, new_envoy: Path) -> Settings:
        return cls(old_envoy=old_envoy, new_envoy=new_envoy)

    @classmethod
    def smoke_run(cls, old_envoy: Path, new_envoy: Path) -> Settings:
        return cls(old_envoy=old_envoy, new_envoy=new_envoy, smoke=True, calibrate_s=1.0,
                   recalibrate_s=0.0,
                   cross_check=False, one_upgrade_s=4.0, rounds=1, storm_upgrades=2, slow_rate=20.0,
                   slow_s=4.5, slow_upgrade_at_s=1.0, slow_drain_max_s=2.0,
                   failures=("port-conflict",), final_upgrade=False, lead_s=1.0, pause_s=0.5,
                   tail_s=0.5, idle_s=1.0, warmup_s=0.3)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["old_envoy"], out["new_envoy"] = str(self.old_envoy), str(self.new_envoy)
        out["attempts_dir"] = None if self.attempts_dir is None else str(self.attempts_dir)
        out["failures"] = list(self.failures)
        out["cpus"] = self.cpus.to_json()
        return out


DEFAULT_MIX: dict[str, float] = {"h1": 0.6, "h1-new": 0.2, "h2": 0.2}
"""The traffic mix when nothing was calibrated: 60 % HTTP/1.1 keep-alive, 20 % HTTP/1.1 with a
new connection per request, 20 % HTTP/2 (h2c)."""

_CLOSED_LANES = {"h1": 32, "h1-new": 16, "h2": 16}
_OPEN_LANES = {"h1": 64, "h1-new": 48, "h2": 32}
"""Open loop: more lanes than the rate needs, so that a stall shows as requests in flight
(as it would with real clients) before it shows as a queue in the client."""


def traffic(rate: float, *, mix: dict[str, float] | None = None, path: str = "/",
            lanes_per_req_s: float = 0.0) -> tuple[LaneGroup, ...]:
    """The lane groups of a load: rate 0 is closed loop (each mode with its lanes, as fast as
    they go); else open loop at `rate`, shared between the modes by `mix`. HTTP/2 lanes share
    2 connections per worker. `lanes_per_req_s`: lanes per request/s of a mode (slow requests
    need rate x delay lanes in flight)."""
    shares = mix or DEFAULT_MIX
    groups = []
    for mode, share in shares.items():
        least = _CLOSED_LANES[mode] if rate == 0 else _OPEN_LANES[mode]
        lanes = max(least, int(rate * share * lanes_per_req_s) + 1)
        groups.append(LaneGroup(mode, lanes, rate * share, path,
                                h2_connections=4 if mode == "h2" else 2))
    return tuple(groups)


@dataclass
class Stage:
    """What a scenario's upgrade script works with, during one arm's load."""

    arm: Arm
    site: Site
    load: LoadRun
    configs: dict[str, Path]
    stopped_at: float | None = None

    def sleep_until(self, t_s: float) -> None:
        """Sleep until `t_s` seconds after the start of the load."""
        time.sleep(max(0.0, self.load.start_at + t_s - time.monotonic()))

    def hold(self, tail_s: float, *, control_after_s: float | None = None) -> None:
        """Keep the load for `tail_s` more, or, with `control_after_s` (when the first upgrade
        command was, in seconds after the load's start; the upgrades are over now), until a
        control window as long as the upgrades fits after them, if that is longer."""
        wait_s = tail_s
        if control_after_s is not None:
            upgrades_s = time.monotonic() - (self.load.start_at + control_after_s)
            wait_s = max(wait_s, upgrades_s + analysis.CONTROL_GAP_S + 0.3)
        time.sleep(max(0.0, wait_s))

    def stop_load(self) -> None:
        self.load.stop()
        self.stopped_at = time.monotonic()


Script = Callable[[Stage], list[UpgradeResult]]


@dataclass
class Suite:
    settings: Settings
    workdir: Path
    upstream: Upstream
    max_rate: float = 0.0
    calibrations: int = 0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    """The share of each mode in the calibration's closed-loop run: each mode then runs at the
    same fraction of what it sustained there."""
    supervisor: dict[str, Any] = field(default_factory=dict)
    """The supervisor's idle CPU and RSS readings, across scenarios."""

    def run_arm(self, key: str, kind: str, plan: LoadPlan, script: Script, *,
                extra_configs: Callable[[Site], dict[str, Path]] | None = None,
                drain_max_s: float = 45.0, tcp_stream: bool = False, samples: bool = False,
                idle_before: bool = False, idle_after: bool = False) -> dict[str, Any]:
        s = self.settings
        root = self.workdir / f"{key[:6]}-{kind[:5]}"
        site = Site.create(root, self.upstream.port, self.upstream.echo_port)
        configs = {"v1": site.config("v1"), "v2": site.config("v2")}
        if extra_configs is not None:
            configs.update(extra_configs(site))
        run_args = ("--drain-strategy", s.drain_strategy) if s.drain_strategy else ()
        arm: Arm = (MeshctlArm(root, drain_min_s=1.0, drain_max_s=drain_max_s, run_args=run_args)
                    if kind == "meshctl" else NaiveArm(root, site.admin_port))
        load = LoadRun(Target("127.0.0.1", site.http_port), plan, root, workers=s.workers,
                       prefix=s.cpus.load_prefix())
        log(f"--- {key} / {kind}: {plan.rate:,.0f} req/s open loop for at most "
            f"{plan.duration_s:g} s")
        extra: dict[str, Any] = {}
        stream: TcpStream | None = None
        try:
            arm.start(s.old_envoy, configs["v1"])
            pid = arm.supervisor_pid()
            if idle_before and pid is not None:
                extra["supervisor_idle"] = self._idle(pid, f"{key}, before the load")
            up0 = self.upstream.stats()
            load_before = os.getloadavg()
            psutil.cpu_percent(None)
            start = load.start()
            if tcp_stream:
                stream = TcpStream(site.tcp_port).start()
            stage = Stage(arm, site, load, configs)
            upgrades = script(stage)
            attempts = load.wait()
            if s.attempts_dir is not None:
                s.attempts_dir.mkdir(parents=True, exist_ok=True)
                (s.attempts_dir / f"{key}-{kind}.json").write_text(json.dumps(
                    {"load_start": start, "attempts": records.to_columns(attempts)}))
            end = stage.stopped_at or start + plan.duration_s
            stream_result = stream.stop() if stream is not None else None
            stream = None
            machine = {"loadavg_before": [round(x, 2) for x in load_before],
                       "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                       "cpu_pct_all_cores": psutil.cpu_percent(None)}
            if pid is not None:
                extra["supervisor_rss_after_mb"] = rss_mb(pid)
                self.supervisor.setdefault("rss_readings_mb", {})[f"{key} after load"] = \
                    extra["supervisor_rss_after_mb"]
                if idle_after:
                    extra["supervisor_idle_after"] = self._idle(pid, f"{key}, after the load")
        finally:
            if stream is not None:
                stream.stop()
            load.kill()
            arm.stop()
        up1 = self.upstream.stats()
        result = analysis.summarize_arm(
            kind, attempts, load_start=start, load_start_wall=load.start_wall,
            duration_s=end - start, upgrades=[u.to_json() for u in upgrades],
            warmup_s=s.warmup_s, samples=samples)
        result["load"] = {"plan": plan.to_json(), "workers": s.workers,
                          "rate_target": round(plan.rate, 1), "duration_s": round(end - start, 3)}
        result["upstream"] = {"received": up1.received - up0.received,
                              "served": up1.served - up0.served}
        result["machine"] = machine
        result.update(extra)
        if stream_result is not None:
            result["tcp_stream"] = stream_result.to_json(start)
            for conn in result["tcp_stream"]["connections"]:
                if conn["end"] is not None:
                    result["events"].append({"t_s": conn["closed_s"], "event": "tcp_stream_cut",
                                             "upgrade": -1})
            result["events"].sort(key=lambda e: e["t_s"])
        acc = result["accounting"]
        log(f"{key} / {kind}: {acc['requests']:,} requests, {acc['failed']:,} failed "
            f"{acc['outcomes']}, retried {acc['retried']}; p99 before "
            f"{result['latency']['before']['p99_ms']} ms, during "
            f"{result['latency']['during']['p99_ms']} ms; upstream served "
            f"{result['upstream']['served']:,}")
        return result

    def _idle(self, pid: int, what: str) -> dict[str, Any]:
        tcp = tcp_table_size()
        figures = process_figures(pid, self.settings.idle_s)
        figures["tcp_table"] = max(tcp, tcp_table_size())
        figures["count_ms"] = _count_cost_ms()
        log(f"supervisor pid {pid} idle ({what}): {figures}")
        readings = self.supervisor.setdefault("idle", {})
        readings[what] = figures
        self.supervisor.setdefault("rss_readings_mb", {})[what] = figures["rss_mb"]
        return figures

    def supervisor_summary(self) -> dict[str, Any]:
        idle = self.supervisor.get("idle", {})
        rss = self.supervisor.get("rss_readings_mb", {})
        worst = max(idle.values(), key=lambda f: f["cpu_pct_of_one_core"], default=None)
        return {"readings": idle, "rss_readings_mb": rss,
                "cpu_pct_of_one_core": None if worst is None else worst["cpu_pct_of_one_core"],
                "cpu_s": None if worst is None else worst["cpu_s"],
                "idle_s": None if worst is None else worst["idle_s"],
                "rss_mb_max": max(rss.values(), default=None)}


def _count_cost_ms(samples: int = 10) -> float:
    """CPU milliseconds of one connection count, meshctl's own function, in this process: what
    the idle supervisor spends on it every 5 s with the machine's TCP table as it is now."""
    started = time.process_time()
    for _ in range(samples):
        count_downstream(os.getpid(), {1})
    return round((time.process_time() - started) / samples * 1000, 2)


def _scenario(key: str, title: str, what: str, arms: dict[str, dict[str, Any]],
              **extra: Any) -> dict[str, Any]:
    return {"key": key, "title": title, "what": what, "arms": arms, **extra}


# --------------------------------------------------------------------------- 1. one upgrade


def calibrate(suite: Suite, *, quick: bool = False) -> dict[str, Any]:
    """Closed loop on a plain Envoy 1.39.3: our client with the scenario mix, and (unless
    `quick`) our client with HTTP/1.1 keep-alive only and wrk with as many connections: the
    highest rate, and how far our Python client is from wrk. Every count is checked against the
    upstream's. Sets the suite's rate and mix."""
    s = suite.settings
    duration = s.recalibrate_s if quick else s.calibrate_s
    if duration <= 0:
        return {"skipped": True, "rate": suite.max_rate, "mix": suite.mix}
    root = suite.workdir / f"cal{suite.calibrations}"
    suite.calibrations += 1
    site = Site.create(root, suite.upstream.port, suite.upstream.echo_port)
    arm = NaiveArm(root, site.admin_port)
    out: dict[str, Any] = {"duration_s": duration, "loadavg": [round(x, 2)
                                                             for x in os.getloadavg()]}
    cross_check = s.cross_check and not quick
    try:
        arm.start(s.old_envoy, site.config("v1"))
        target = Target("127.0.0.1", site.http_port)
        runs: list[tuple[str, tuple[LaneGroup, ...]]] = [("client_mix", traffic(0))]
        if cross_check:
            runs.append(("client_h1", (LaneGroup("h1", 32),)))
        for name, groups in runs:
            up0 = suite.upstream.stats()
            run = LoadRun(target, LoadPlan(groups, duration, s.timeout_s), root,
                          workers=s.workers, prefix=s.cpus.load_prefix())
            start = run.start()
            attempts = run.wait()
            reqs = records.fold(attempts)
            acc = records.account(reqs)
            elapsed = max((r.end_s for r in reqs), default=start) - start
            served = suite.upstream.stats().served - up0.served
            lat = analysis.latency_summary(reqs)
            out[name] = {"requests": acc.requests, "failed": acc.failed,
                         "rate": round(acc.requests / max(elapsed, 1e-9), 1),
                         "upstream_served": served, "by_mode": acc.by_mode,
                         "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"]}
            log(f"calibration {name}: {out[name]}")
        if cross_check:
            out["wrk_h1"] = _wrk(suite, site.http_port, root)
    finally:
        arm.stop()
    _calibrated(suite, out)
    return out


def _wrk(suite: Suite, port: int, root: Path) -> dict[str, Any]:
    s = suite.settings
    up0 = suite.upstream.stats()
    wrk = Load(f"http://127.0.0.1:{port}/",
               LoadSpec(max(1, round(s.calibrate_s)), wrk_connections=32, hey_workers=0),
               root, prefix=s.cpus.load_prefix()).start().wait()
    served = suite.upstream.stats().served - up0.served
    out = {"requests": wrk.wrk.requests, "failed": wrk.failures, "rate": wrk.wrk.rps,
           "upstream_served": served, "duration_s": wrk.wrk.duration_s,
           "latency_ms": wrk.wrk.latency_ms}
    log(f"calibration wrk: {out}")
    return out


def _calibrated(suite: Suite, out: dict[str, Any]) -> None:
    """The rate and mix the scenarios run at, from the closed-loop run with the mix."""
    if "client_mix" not in out:
        return
    suite.max_rate = float(out["client_mix"]["rate"])
    by_mode = out["client_mix"]["by_mode"]
    total = sum(m["requests"] for m in by_mode.values()) or 1
    suite.mix = {mode: round(by_mode[mode]["requests"] / total, 3) for mode in DEFAULT_MIX
                 if mode in by_mode}
    out["mix"] = suite.mix
    if "wrk_h1" in out:
        out["client_vs_wrk"] = analysis.ratio(out["client_h1"]["rate"], out["wrk_h1"]["rate"])


def one_upgrade(suite: Suite) -> dict[str, Any]:
    s = suite.settings
    calibration = calibrate(suite)
    rate = round(suite.max_rate * s.rate_fraction)
    command_at = s.one_upgrade_s * 0.4
    plan = LoadPlan(traffic(rate, mix=suite.mix), s.one_upgrade_s * 3, s.timeout_s)

    def script(stage: Stage) -> list[UpgradeResult]:
        stage.sleep_until(command_at)
        ups = [stage.arm.upgrade(f"{s.old_version} -> {s.new_version}", s.new_envoy,
                                 stage.configs["v2"])]
        stage.hold(stage.load.start_at + s.one_upgrade_s - time.monotonic(),
                   control_after_s=command_at if s.control else None)
        stage.stop_load()
        return ups

    rounds: list[dict[str, dict[str, Any]]] = []
    for i in range(s.rounds):
        key = "one-upgrade" if s.rounds == 1 else f"one-upgrade-r{i + 1}"
        rounds.append({kind: suite.run_arm(key, kind, plan, script, samples=True,
                                           idle_before=kind == "meshctl" and i == 0)
                       for kind in ARMS})
    pooled = {kind: analysis.pool([r[kind] for r in rounds]) for kind in ARMS}
    for r in rounds:
        for arm in r.values():
            del arm["samples"]
    # The picture and the tables show the round whose meshctl ratio is the median one.
    order = sorted(range(len(rounds)), key=lambda i: rounds[i]["meshctl"]["p99_ratio"] or 0.0)
    shown = order[len(order) // 2]
    return _scenario(
        "one-upgrade", f"One upgrade {s.old_version} -> {s.new_version} at "
                       f"{rate:,} req/s", f"{s.rate_fraction:.0%} of the closed-loop maximum "
        f"({suite.max_rate:,.0f} req/s); the upgrade command at {command_at:g} s; "
        f"{s.rounds} round(s), each a fresh pair of arms; the tables and the picture show "
        f"round {shown + 1} (the median p99 ratio of meshctl's)",
        rounds[shown], calibration=calibration, rate=rate, pooled=pooled,
        shown_round=shown + 1,
        rounds=[{kind: _round_summary(arm) for kind, arm in r.items()} for r in rounds])


def _round_summary(arm: dict[str, Any]) -> dict[str, Any]:
    lat = arm["latency"]
    return {"requests": arm["accounting"]["requests"], "failed": arm["accounting"]["failed"],
            "p99_before_ms": lat["before"]["p99_ms"], "p99_during_ms": lat["during"]["p99_ms"],
            "p99_control_ms": lat["control"]["p99_ms"], "p99_ratio": arm["p99_ratio"],
            "p99_ratio_control": arm["p99_ratio_control"],
            "during_s": round(arm["windows"]["during"][1] - arm["windows"]["during"][0], 3)
            if arm["windows"]["during"] else None}


# --------------------------------------------------------------------------- 2. storm


def storm(suite: Suite) -> dict[str, Any]:
    s = suite.settings
    calibration = calibrate(suite, quick=True)
    rate = round(suite.max_rate * s.constant_fraction)
    n = s.storm_upgrades
    plan = LoadPlan(traffic(rate, mix=suite.mix), s.lead_s + n * 15.0 + 30.0, s.timeout_s)

    def script(stage: Stage) -> list[UpgradeResult]:
        stage.sleep_until(s.lead_s)
        ups = []
        for i in range(n):
            to_new = i % 2 == 0
            label = (f"#{i + 1}: {s.old_version} -> {s.new_version}" if to_new
                     else f"#{i + 1}: {s.new_version} -> {s.old_version}")
            ups.append(stage.arm.upgrade(label, s.new_envoy if to_new else s.old_envoy,
                                         stage.configs["v2" if to_new else "v1"]))
        time.sleep(s.tail_s)
        stage.stop_load()
        return ups

    arms = {kind: suite.run_arm("storm", kind, plan, script,
                                idle_after=kind == "meshctl") for kind in ARMS}
    return _scenario("storm", f"Upgrade storm: {n} upgrades back to back at {rate:,} req/s",
                     f"{s.constant_fraction:.0%} of the closed-loop maximum measured just "
                     f"before ({suite.max_rate:,.0f} req/s); alternating {s.old_version} and "
                     f"{s.new_version} (configs v1/v2); each upgrade starts when the previous "
                     "one has finished", arms, rate=rate, calibration=calibration)


# --------------------------------------------------------------------------- 3. slow


def slow(suite: Suite) -> dict[str, Any]:
    s = suite.settings
    delay_s = s.slow_delay_ms / 1000.0
    plan = LoadPlan(traffic(s.slow_rate, path=f"/?delay_ms={s.slow_delay_ms:g}",
                            lanes_per_req_s=delay_s * 1.5),
                    s.slow_s, s.timeout_s)

    def script(stage: Stage) -> list[UpgradeResult]:
        stage.sleep_until(s.slow_upgrade_at_s)
        return [stage.arm.upgrade(f"{s.old_version} -> {s.new_version}", s.new_envoy,
                                  stage.configs["v2"])]

    arms = {kind: suite.run_arm("slow", kind, plan, script, drain_max_s=s.slow_drain_max_s,
                                tcp_stream=True) for kind in ARMS}
    return _scenario(
        "slow", f"Slow requests ({delay_s:g} s in the upstream) and a long-lived TCP stream",
        f"{s.slow_rate:g} req/s, each held {delay_s:g} s by the upstream, so about "
        f"{s.slow_rate * delay_s:.0f} requests are in flight at the handover; one TCP stream "
        f"through tcp_proxy pinged every 100 ms; meshctl's drain_max_s {s.slow_drain_max_s:g}",
        arms, rate=s.slow_rate)


# --------------------------------------------------------------------------- 4. failed upgrades


@contextlib.contextmanager
def _failure_fixtures(workdir: Path, new_envoy: Path) -> Any:
    """A taken port, a silent xDS server, a binary that crashes at start."""
    taken = socket.create_server(("127.0.0.1", 0))
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)  # accepts nothing, answers never
    crashing = workdir / "crashing-envoy"
    crashing.write_text(
        "#!/bin/sh\n"
        "# Envoy for the pre-flight checks (--version, --hot-restart-version, --mode); dies of\n"
        "# SIGSEGV when started for real.\n"
        'case " $* " in *" --version "*|*" --hot-restart-version "*|*" --mode "*)\n'
        f'  exec {new_envoy} "$@";;\n'
        "esac\n"
        "kill -SEGV $$\n")
    crashing.chmod(crashing.stat().st_mode | stat.S_IXUSR)
    try:
        yield (int(taken.getsockname()[1]), int(silent.getsockname()[1]), crashing)
    finally:
        taken.close()
        silent.close()


def failed_upgrades(suite: Suite) -> dict[str, Any]:
    s = suite.settings
    calibration = calibrate(suite, quick=True)
    rate = round(suite.max_rate * s.constant_fraction)
    suite.workdir.mkdir(parents=True, exist_ok=True)
    with _failure_fixtures(suite.workdir, s.new_envoy) as (taken_port, silent_port, crashing):

        def configs(site: Site) -> dict[str, Path]:
            return {"taken": site.config("taken", extra_listener_port=taken_port),
                    "hang": site.config("hang", xds_hang_port=silent_port)}

        def script(stage: Stage) -> list[UpgradeResult]:
            ups = []
            stage.sleep_until(s.lead_s)
            for failure in s.failures:
                if failure == "bad-binary":
                    ups.append(stage.arm.upgrade("bad binary (SIGSEGV at start)", crashing,
                                                 stage.configs["v1"]))
                elif failure == "port-conflict":
                    ups.append(stage.arm.upgrade("extra listener port taken", s.old_envoy,
                                                 stage.configs["taken"]))
                elif failure == "init-hang":
                    ups.append(stage.arm.upgrade(
                        f"init never ends (ready timeout {s.hang_ready_timeout_s:g} s)",
                        s.old_envoy, stage.configs["hang"],
                        ready_timeout_s=s.hang_ready_timeout_s))
                time.sleep(s.pause_s)
            if s.final_upgrade:
                ups.append(stage.arm.upgrade(f"then {s.old_version} -> {s.new_version}",
                                             s.new_envoy, stage.configs["v2"]))
            stage.hold(s.tail_s, control_after_s=s.lead_s if s.control else None)
            stage.stop_load()
            return ups

        plan = LoadPlan(traffic(rate, mix=suite.mix), 300.0, s.timeout_s)
        arms = {kind: suite.run_arm("failed-upgrades", kind, plan, script,
                                    extra_configs=configs) for kind in ARMS}
    return _scenario(
        "failed-upgrades", f"Failed upgrades under load at {rate:,} req/s",
        f"{s.constant_fraction:.0%} of the closed-loop maximum measured just before "
        f"({suite.max_rate:,.0f} req/s); " + ", ".join(s.failures)
        + (f", then one good upgrade to {s.new_version}" if s.final_upgrade else "")
        + "; the naive operator stops the old Envoy, starts the new one, and when it fails "
        "starts the old one again", arms, rate=rate, calibration=calibration)


SCENARIOS: dict[str, Callable[[Suite], dict[str, Any]]] = {
    "one-upgrade": one_upgrade,
    "storm": storm,
    "slow": slow,
    "failed-upgrades": failed_upgrades,
}
