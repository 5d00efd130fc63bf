"""The xDS section of docs/benchmarks.md: written by bench/xds_scale.py, kept by proof.py."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from zeroloss import xds_section  # noqa: E402

ROUND = {"to": "1.40.0", "result": "succeeded", "live_after_s": 3.4, "gate_checks": 1,
         "total_s": 5.2, "rss_one_generation_mb": 201.2, "rss_peak_mb": 406.7,
         "p99_before_ms": 7.2, "p99_during_ms": 15.3, "p99_ratio": 2.12, "failed_before": 0,
         "failed_during": 0, "requests": 411888}
DATA = {"listeners": 100, "clusters": 2000, "endpoints": 10000, "drain_strategy": "gradual",
        "xds": {"first_live_s": 1.3, "gate_check_s": 0.207, "rounds": [ROUND]}}


def test_the_section_is_appended_once_then_replaced_in_place() -> None:
    doc = "# Benchmarks\n\nproof figures\n"
    once = xds_section.splice(doc, DATA)
    assert once.startswith(doc.rstrip()) and once.count(xds_section.START) == 1
    assert "| xds | 1.40.0 | succeeded | 3.4 s | 1 |" in once
    changed = {**DATA, "xds": {**DATA["xds"], "rounds": [{**ROUND, "p99_ratio": 1.5}]}}
    twice = xds_section.splice(once + "\ntail\n", changed)
    assert twice.count(xds_section.START) == 1 and twice.endswith("\ntail\n")
    assert "**1.5x**" in twice and "**2.12x**" not in twice
