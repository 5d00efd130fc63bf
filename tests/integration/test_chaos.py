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
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from chaos.causes import Cause  # noqa: E402
from chaos.report import violations_text  # noqa: E402
from chaos.run import Settings, run_chaos  # noqa: E402
from chaos.schedule import FAULTS, Binary  # noqa: E402

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")]

SEED = 4878
"""Of the seeds below 5,000, one whose 12 steps draw every fault kind and 11 of the 12
variants, among them two supervisor kills in a row (during an upgrade, then between two),
the sequence that found the adoption's missing stand-in (fixed in bcd68cf)."""
STEPS = 12

EXPECT_NO_REFUSED = True
"""Since the supervisor holds the live generation's listening sockets through a crash (the
"held sockets" commits, 70918c4 and after), a kill -9 of the live Envoy refuses no connection:
this run must then see no refused connection and no request lost on a new connection away
from a kill's own moment (requests in flight on a killed process, and new connections it had
accepted, are lost whatever a supervisor does: `chaos.causes`). False before that work."""

KNOWN_SRC_BUGS: dict[tuple[str, str], str] = {}
"""(fault kind or "*", invariant) -> the src bug that violates it, tolerated here with its
reason until its fix; remove the entry with the fix, and the test holds meshctl to it again.
Empty since 7fba36d, which fixed the last two the run found (a killed supervisor's stand-in
socket left in hr/; a state file left stale after a full state dir)."""


def _known(violation: Mapping[str, object]) -> bool:
    return any((fault in ("*", violation["fault"])) and invariant == violation["invariant"]
               for fault, invariant in KNOWN_SRC_BUGS)


@pytest.fixture
def chaos_root() -> Iterator[Path]:
    """A short temp dir only we can write (meshctl runs nothing another user could change)."""
    path = Path(tempfile.mkdtemp(prefix="mc-chaos-"))
    yield path
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"])
                 if str(path) in " ".join(p.info["cmdline"] or [])]
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"processes left running: {leftovers}"


@pytest.mark.timeout(400)
def test_a_short_chaos_run_keeps_every_invariant_after_every_fault(
        chaos_root: Path, envoy_old: Path, envoy_new: Path) -> None:
    settings = Settings(seed=SEED, steps=STEPS, expect_no_refused=EXPECT_NO_REFUSED)
    report = run_chaos(settings, {Binary.OLD: envoy_old, Binary.NEW: envoy_new}, chaos_root)
    print(report.steps_table())
    print(report.summary_table())

    assert not report.aborted and len(report.steps) == STEPS
    assert {r.step.fault for r in report.steps} >= set(FAULTS)
    assert report.requests > 1000 and report.longest_without_live_s >= 0
    unexplained = [v for v in report.violations if not _known(v)]
    assert not unexplained, f"seed {SEED}:\n{violations_text(unexplained)}"
    causes = report.failed_by_cause
    if EXPECT_NO_REFUSED:
        assert causes[Cause.REFUSED] == 0 and causes[Cause.NEW_CONNECTION] == 0, causes
