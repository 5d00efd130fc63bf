"""The slow-request breakdown of bench/zeroloss/breakdown.py, on attempts made up here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from zeroloss import breakdown, records  # noqa: E402
from zeroloss.records import Attempt  # noqa: E402

START = 100.0


def attempt(n: int, due_s: float, latency_ms: float, mode: str = "h1", reused: bool = True,
            epoch: str = "1") -> Attempt:
    due = START + due_s
    return Attempt(n, 0, mode, 0, due, due, due + latency_ms / 1000, "200", epoch, reused)


def test_slow_requests_are_counted_in_the_bin_of_their_intended_start_by_kind() -> None:
    attempts = [attempt(0, 1.00, 2), attempt(1, 1.01, 30, "h2"), attempt(2, 1.02, 25, "h2"),
                attempt(3, 1.06, 12, "h1-new", reused=False, epoch="0"), attempt(4, 1.07, 1),
                attempt(5, 0.99, 50), attempt(6, 1.20, 50)]  # outside [1.0, 1.1)
    rows = breakdown.bins(attempts, START, from_s=1.0, to_s=1.1, bin_s=0.05, slow_ms=10)
    assert [(r.start_s, r.requests) for r in rows] == [(1.0, 3), (1.05, 2)]
    assert rows[0].slow == {("h2", True, "1"): 2}
    assert rows[1].slow == {("h1-new", False, "0"): 1}
    assert rows[0].p50_ms is not None and round(rows[0].p50_ms) == 25
    text = breakdown.render(rows)
    assert "slow 2    h2 reused gen 1: 2" in text and "h1-new gen 0: 1" in text


def test_the_command_reads_what_proof_writes_and_refuses_a_bad_file_in_one_line(
        tmp_path: Path) -> None:
    good = tmp_path / "one-upgrade-meshctl.json"
    good.write_text(json.dumps({"load_start": START, "attempts": records.to_columns(
        [attempt(0, 1.0, 40), attempt(1, 1.01, 1)])}))
    assert breakdown.main([str(good), "--from", "0.5", "--to", "2"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert breakdown.main([str(bad)]) == 2
