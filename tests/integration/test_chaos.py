"""The chaos run of issue 17, short form: a real supervisor and real Envoy 1.39.3 and 1.40.0
(with a real ADS control plane) under load, a seeded schedule of upgrades with every fault kind
at least once, and the invariants after every step (`bench/chaos/`; the long form is
`bench/chaos_run.py`). Everything it starts is stopped by pid and its tmpfs unmounted, by the
run itself (`chaos.run.run_chaos`)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from chaos.causes import Cause  # noqa: E402
from chaos.report import Report, violations_text  # noqa: E402
from chaos.run import Settings, run_chaos  # noqa: E402
from chaos.schedule import FAULTS, Binary, Fault  # noqa: E402

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")]

SEED = 4432
"""Of the seeds below 5,000 whose supervisor kills all come during an upgrade (an idle one
meets a src bug: the xfail test below), one whose 11 steps draw 10 of the variants (a port in
use, a crashing binary, a rejected config, a binary that is not Envoy, ...)."""
STEPS = 11

EXPECT_NO_REFUSED = True
"""Since the supervisor holds the live generation's listening sockets through a crash (the
"held sockets" commits, 70918c4 and after), a kill -9 of the live Envoy refuses no connection:
this run must then see no refused connection and no request lost on a new connection away
from a kill's own moment (requests in flight on a killed process, and new connections it had
accepted, are lost whatever a supervisor does: `chaos.causes`). False before that work."""

KNOWN_SRC_BUGS: dict[str, str] = {
    "no_stale_parent_socket":
        "a supervisor killed with SIGKILL leaves its stand-in's socket file (envoy_parent_N) "
        "in hr/; the supervisor that adopts its generations never removes it, it stays until "
        "an upgrade reuses the slot (docs/reliability.md, the chaos run)",
}
"""Invariants a src bug violates today, tolerated here with the reason; remove an entry with
its fix, and the test holds meshctl to it again."""


@pytest.fixture
def chaos_root() -> Iterator[Path]:
    """A short temp dir only we can write (meshctl runs nothing another user could change)."""
    path = Path(tempfile.mkdtemp(prefix="mc-chaos-"))
    yield path
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"])
                 if str(path) in " ".join(p.info["cmdline"] or [])]
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"processes left running: {leftovers}"


def _run(root: Path, envoy_old: Path, envoy_new: Path, kinds: tuple[Fault, ...],
         steps: int, seed: int = SEED) -> Report:
    settings = Settings(seed=seed, steps=steps, kinds=kinds,
                        expect_no_refused=EXPECT_NO_REFUSED)
    report = run_chaos(settings, {Binary.OLD: envoy_old, Binary.NEW: envoy_new}, root)
    print(report.steps_table())
    print(report.summary_table())
    return report


def _unexplained(report: Report) -> list[dict[str, object]]:
    return [v for v in report.violations if v["invariant"] not in KNOWN_SRC_BUGS]


@pytest.mark.timeout(400)
def test_a_short_chaos_run_keeps_every_invariant_after_every_fault(
        chaos_root: Path, envoy_old: Path, envoy_new: Path) -> None:
    kinds = tuple(f for f in FAULTS if f is not Fault.FULL_STATE_DIR)
    report = _run(chaos_root, envoy_old, envoy_new, kinds, STEPS)

    assert not report.aborted and len(report.steps) == STEPS
    assert {r.step.fault for r in report.steps} >= set(kinds)
    assert report.requests > 1000 and report.longest_without_live_s >= 0
    unexplained = _unexplained(report)
    assert not unexplained, f"seed {SEED}:\n{violations_text(unexplained)}"
    causes = report.failed_by_cause
    if EXPECT_NO_REFUSED:
        assert causes[Cause.REFUSED] == 0 and causes[Cause.NEW_CONNECTION] == 0, causes


@pytest.mark.xfail(strict=True, reason=(
    "src bug: a supervisor killed while the live generation's parent is gone (the stand-in "
    "answering on its parent socket dies with it) is replaced by one that adopts the live "
    "Envoy but binds no stand-in there: the live Envoy's next hot-restart message (its "
    "Terminate at --parent-shutdown-time-s) meets ECONNREFUSED, blocks 10 s and aborts "
    "(Trap 2). See docs/reliability.md, the chaos run."))
@pytest.mark.timeout(300)
def test_a_supervisor_killed_between_upgrades_is_replaced_without_losing_the_live_envoy(
        chaos_root: Path, envoy_old: Path, envoy_new: Path) -> None:
    # Seed 1: a plain upgrade, then a supervisor kill 0.49 s after it settled.
    report = _run(chaos_root, envoy_old, envoy_new, (Fault.KILL_SUPERVISOR,), 2, seed=1)

    assert not report.aborted and len(report.steps) == 2
    assert report.steps[1].step.variant == "idle"
    assert not report.violations, violations_text(report.violations)


@pytest.mark.xfail(strict=True, reason=(
    "src bug: with the state dir's file system full the supervisor exits (a StateDirError "
    "from a state save in its loop) and ends every Envoy; StateDir.save ignores a short "
    "os.write, so the state file is left truncated and no supervisor starts on it again "
    "(exit 7, corrupt). See docs/reliability.md, the chaos run."))
@pytest.mark.timeout(300)
def test_a_full_state_dir_costs_no_generation_and_no_state(
        chaos_root: Path, envoy_old: Path, envoy_new: Path) -> None:
    report = _run(chaos_root, envoy_old, envoy_new, (Fault.FULL_STATE_DIR,), 2, seed=1)

    assert not report.aborted and len(report.steps) == 2
    unexplained = _unexplained(report)
    assert not unexplained, f"seed 1:\n{violations_text(unexplained)}"
