"""The chaos run: a supervisor on a fresh site, load through it for the whole run, the steps of
a seeded schedule one after the other, the invariants after each, a report at the end.

    python bench/chaos_run.py --seed 1 --steps 80     # the long run (docs/reliability.md)
    python bench/chaos_run.py --steps 12 --kinds kill_live,kill_new

Exit status 1 when an invariant was violated or a command's exit code was not one the fault
allows; failed requests are reported, not judged (`--expect-no-refused` makes a refused
connection or a failure on a new connection a violation too). Run it as root (it mounts a
tmpfs for the state dir) and in the foreground: Envoy dies with the process that started it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchlib import (
    OLD_ENVOY,
    Supervisor,
    check_binary,
    compile_meshctl,
    finish_machine_info,
    log,
    machine_info,
    new_envoy,
    workdir,
    write_json,
)
from chaos import faults, invariants, schedule
from chaos.causes import Cause, count
from chaos.harness import Harness, Timeouts
from chaos.load import ChaosLoad, LoadSpec
from chaos.report import (
    Report,
    StepResult,
    docs_section,
    replace_section,
    violations_text,
)
from chaos.schedule import Binary, Fault, Step
from chaos.site import Site
from chaos.watch import LiveWatch
from meshctl.manager.snapshot import StatusSnapshot

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "chaos.json"


@dataclass(frozen=True)
class Settings:
    seed: int
    steps: int
    kinds: tuple[Fault, ...] = schedule.FAULTS
    fault_ratio: float = 0.7
    drain_min_s: float = 1.0
    """Long enough for kill_old to find a drain under way (it ends ~0.3 s after this when the
    load's keep-alive connections have moved)."""
    drain_max_s: float = 10.0
    stop_grace_s: float = 2.0
    ready_timeout_s: float = 10.0
    """Above the longest SIGSTOP of a new generation (3 s) plus its initialization under load,
    short enough that a generation the supervisor cannot see LIVE is given up soon."""
    restart_window_s: float = 10.0
    """The crash-loop window: short, so that the run's own kills do not add up to a crash loop
    (which ends the supervisor by design) and each restart waits the first backoff, 0.5 s."""
    load: LoadSpec = field(default_factory=LoadSpec)
    expect_no_refused: bool = False

    def supervisor_args(self) -> list[str]:
        return ["--stop-grace-s", f"{self.stop_grace_s:g}",
                "--ready-timeout-s", f"{self.ready_timeout_s:g}",
                "--max-restarts", "1000", "--restart-window-s", f"{self.restart_window_s:g}"]

    def to_json(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["kinds"] = ("all" if self.kinds == schedule.FAULTS
                         else ",".join(k.value for k in self.kinds))
        return data


def run_chaos(settings: Settings, binaries: dict[Binary, Path], root: Path) -> Report:
    """The whole run in `root` (a fresh dir only we can write); everything it started is
    stopped by pid and the tmpfs unmounted before it returns."""
    steps = schedule.generate(settings.seed, settings.steps, kinds=settings.kinds,
                              fault_ratio=settings.fault_ratio)
    started = time.monotonic()
    site = Site.create(root, binaries[Binary.NEW])
    supervisor = Supervisor(root, binaries[Binary.OLD], site.config,
                            drain_min_s=settings.drain_min_s, drain_max_s=settings.drain_max_s,
                            state_dir=site.state_dir, log_level="info",
                            extra_args=settings.supervisor_args(), threaded_parent=True)
    timeouts = Timeouts(ready_s=settings.ready_timeout_s, drain_max_s=settings.drain_max_s)
    harness = Harness(site, supervisor, binaries, timeouts)
    watch = LiveWatch(site.state_dir)
    load = ChaosLoad("127.0.0.1", site.listener_port, settings.load)
    results: list[StepResult] = []
    after_stop: list[str] = []
    base_id: int | None = None
    try:
        supervisor.start(timeout_s=timeouts.settle_s)
        first = harness.status()
        base_id = first["base_id"] if first is not None else None
        watch.start()
        load.start()
        time.sleep(1.0)  # the load's connections open before the first fault
        fds = _FdBaseline()
        for step in steps:
            results.append(_run_step(harness, step, load, watch, fds, settings))
            if results[-1].aborted:
                break
    finally:
        load.stop()
        watch.stop()
        supervisor.stop()
        after_stop = _leftovers(site.state_dir, base_id)
        # Envoy's logs live on the tmpfs: keep them beside the supervisor's (`--keep`).
        shutil.copytree(site.state_dir / "logs", root / "envoy-logs", dirs_exist_ok=True)
        site.close()
    tally = load.tally
    longest = watch.longest()
    at_step = next((r.step.index for r in results if longest is not None
                    and r.started_s <= longest.start_s < r.ended_s), None)
    return Report(seed=settings.seed, settings=settings.to_json(), steps=results,
                  requests=tally.requests, ok=tally.ok, retried=tally.retried,
                  refused_connects=tally.refused_connects, failures=list(tally.failures),
                  failed=tally.failed, kills=list(harness.kills),
                  longest_without_live_s=longest.length_s if longest else 0.0,
                  longest_without_live_step=at_step,
                  supervisor_starts=harness.supervisor_starts,
                  duration_s=time.monotonic() - started, after_stop=after_stop)


@dataclass
class _FdBaseline:
    """The supervisor's resting fds, per supervisor process, once it has done an upgrade of
    its own: the descriptors it keeps for good (the xDS gate's listener and stream, a
    stand-in) come with its first upgrade, so a supervisor started mid-run is not measured
    before then."""

    pid: int | None = None
    fds: int | None = None
    upgrades_at_start: int = 0


def _run_step(h: Harness, step: Step, load: ChaosLoad, watch: LiveWatch, baseline: _FdBaseline,
              settings: Settings) -> StepResult:
    log(step.describe())
    started = time.monotonic()
    requests_before, failures_before = load.tally.requests, len(load.tally.failures)
    step_log = faults.inject(h, step)
    violations: dict[str, list[str]] = dict(step_log.problems)
    code = h.supervisor_exit()
    aborted = False
    if code is not None:
        violations["supervisor_alive"] = [f"the supervisor exited with {code}: "
                                          f"{h.supervisor.tail()}"]
        if not h.start_supervisor(step_log):
            violations["supervisor_alive"].append(
                f"a new supervisor on the state dir did not start: {h.supervisor.tail()}; "
                f"the run stops here")
            aborted = True
    if not aborted:
        h.settle(step_log)
        violations.update(_check(h, baseline))
    wrong = [f"{c.what}: exit {c.exit_code} ({c.result[:160]}), allowed {sorted(c.expected)}"
             for c in step_log.calls if not c.as_expected]
    if wrong:
        violations["exit_codes"] = wrong
    ended = time.monotonic()
    failures = load.tally.failures[failures_before:]
    if settings.expect_no_refused:
        causes = count(failures, h.kills)
        lost = causes[Cause.REFUSED] + causes[Cause.NEW_CONNECTION]
        if lost:
            violations["no_refused"] = [f"{causes[Cause.REFUSED]} refused, "
                                        f"{causes[Cause.NEW_CONNECTION]} new connection(s) "
                                        f"lost away from a kill"]
    gap = watch.longest(started, ended)
    result = StepResult(step=step, started_s=started, ended_s=ended, calls=step_log.calls,
                        notes=step_log.notes, violations=violations,
                        requests=load.tally.requests - requests_before, failures=failures,
                        longest_without_live_s=gap.length_s if gap else 0.0, aborted=aborted)
    causes = {k: n for k, n in result.failed_by_cause(h.kills).items() if n}
    log(f"  {result.requests} requests, failed {causes or 0}; "
        f"{result.longest_without_live_s:.2f}s without LIVE"
        + (f"; VIOLATED: {violations}" if violations else ""))
    return result


def _check(h: Harness, baseline: _FdBaseline) -> dict[str, list[str]]:
    code, snap = h.status_cli()
    if snap is None:
        return {"status_cli": [f"meshctl status -o json: exit {code}"]}
    pid = snap["supervisor_pid"]
    fds = invariants.resting_fds(pid)
    if baseline.pid != pid:  # the first step, or a supervisor started again: a new baseline
        baseline.pid, baseline.fds = pid, None
        baseline.upgrades_at_start = snap["upgrades"] - _own_upgrade(snap)
    if baseline.fds is None and snap["upgrades"] > baseline.upgrades_at_start:
        baseline.fds = fds
    found = invariants.check_all(snap, h.site.state_dir, h.site.ports, fds_now=fds,
                                 fds_baseline=baseline.fds)
    return {name: problems for name, problems in found.items() if problems}


def _own_upgrade(snap: StatusSnapshot) -> int:
    """1 if the last upgrade in the history was this supervisor's and succeeded (the first
    step's, for the run's first supervisor), else 0."""
    last = snap["last_upgrade"]
    return int(last is not None and last["result"] == "succeeded"
               and (last.get("requested_at") or 0) >= _started_at(snap))


def _started_at(snap: StatusSnapshot) -> float:
    with contextlib.suppress(psutil.Error):
        return float(psutil.Process(snap["supervisor_pid"]).create_time())
    return float("inf")


def _leftovers(state_dir: Path, base_id: int | None) -> list[str]:
    """After the supervisor's stop: any process of ours (ended here, by pid), any hot-restart
    socket or shared-memory file."""
    left = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        if str(state_dir) in " ".join(proc.info["cmdline"] or []):
            left.append(f"pid {proc.info['pid']} ({proc.info['name']}) still running")
            with contextlib.suppress(psutil.Error):
                os.kill(proc.info["pid"], signal.SIGKILL)
    hr = state_dir / "hr"
    if hr.is_dir():
        left += [f"socket file left: {p.name}" for p in hr.iterdir()]
    if base_id is not None:
        shm = Path("/dev/shm") / f"envoy_shared_memory_{10 * base_id}"
        if shm.exists():
            left.append(f"shared memory left: {shm}")
            shm.unlink()
    return left


# --------------------------------------------------------------------------- the command


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--kinds", default="all",
                   help="fault kinds, comma-separated (default all): "
                        + ", ".join(f.value for f in schedule.FAULTS))
    p.add_argument("--fault-ratio", type=float, default=0.7)
    p.add_argument("--drain-min-s", type=float, default=1.0)
    p.add_argument("--drain-max-s", type=float, default=10.0)
    p.add_argument("--ready-timeout-s", type=float, default=10.0)
    p.add_argument("--old-envoy", type=Path, default=OLD_ENVOY)
    p.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    p.add_argument("--expect-no-refused", action="store_true",
                   help="a refused connection or a failure on a new connection is a violation")
    p.add_argument("--docs", type=Path, default=None,
                   help="write the figures between the chaos markers of this page "
                        "(docs/reliability.md)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        kinds = schedule.parse_kinds(args.kinds)
        seed = args.seed if args.seed is not None else int(time.time()) % 100_000
        settings = Settings(seed=seed, steps=args.steps, kinds=kinds,
                            fault_ratio=args.fault_ratio, drain_min_s=args.drain_min_s,
                            drain_max_s=args.drain_max_s, ready_timeout_s=args.ready_timeout_s,
                            expect_no_refused=args.expect_no_refused)
        schedule.generate(seed, args.steps, kinds=kinds, fault_ratio=args.fault_ratio)
    except ValueError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("chaos: run it as root (it mounts a tmpfs for the state dir)", file=sys.stderr)
        return 1
    binaries = {Binary.OLD: check_binary(args.old_envoy), Binary.NEW: new_envoy()}
    log(f"chaos run: seed {seed}, {args.steps} steps (reproduce with --seed {seed})")
    compile_meshctl()
    machine = machine_info()
    with workdir("mc-chaos-", keep=args.keep) as root:
        report = run_chaos(settings, binaries, root)
    finish_machine_info(machine)
    report.machine = machine
    write_json(args.json, report.to_json())
    if args.docs is not None:
        command = "python bench/chaos_run.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:])
            if not a.startswith("--docs") and a != str(args.docs))
        args.docs.write_text(replace_section(args.docs.read_text(),
                                             docs_section(report, command.strip())))
        log(f"figures written to {args.docs}")
    print(report.steps_table())
    print()
    print(report.summary_table())
    if report.violations:
        print(f"\nviolations (seed {seed}):\n{violations_text(report.violations)}")
    refused = report.failed_by_cause[Cause.REFUSED]
    log(f"done: {report.requests} requests, {report.failed} failed ({refused} refused), "
        f"{len(report.violations)} violation(s); seed {seed}")
    return 1 if report.violations else 0
