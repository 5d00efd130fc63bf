"""A short run of the proof suite (`bench/proof.py --smoke`) on real Envoy 1.39.3 and 1.40.0,
the real supervisor and CLI, the real load client: it writes a JSON result and a PNG timeline
per scenario and the page, and meshctl loses no request where the issue says it must not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.envoy

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCENARIOS = ("one-upgrade", "storm", "slow", "failed-upgrades")
ZERO_LOSS = ("one-upgrade", "storm", "failed-upgrades")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def out_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mcb-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(300)
def test_the_smoke_run_writes_every_result_and_meshctl_loses_no_request(
        out_dir: Path, envoy_old: Path) -> None:
    docs = out_dir / "benchmarks.md"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(BENCH / "proof.py"), "--smoke", "--old-envoy", str(envoy_old),
         "--results", str(out_dir / "results"), "--images", str(out_dir / "img"),
         "--docs", str(docs)],
        capture_output=True, text=True, timeout=280, check=False, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started

    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"
    for key in SCENARIOS:
        result = json.loads((out_dir / "results" / f"{key}.json").read_text())
        assert set(result["arms"]) == {"meshctl", "naive"}, key
        assert (out_dir / "img" / f"proof-{key}.png").read_bytes()[:8] == PNG_MAGIC
        for arm in result["arms"].values():
            acc = arm["accounting"]
            assert acc["requests"] > 0 and acc["ok"] + acc["failed"] == acc["requests"]
            assert arm["upgrades"], f"{key}: no upgrade recorded"
        if key in ZERO_LOSS:
            mesh = result["arms"]["meshctl"]
            assert mesh["accounting"]["failed"] == 0, (key, mesh["failures_first"])
            assert mesh["upgrades"][-1]["result"] == "succeeded" or key == "failed-upgrades"
    # Scenarios 1 and 4 keep their load after the upgrades for a control window
    # (Settings.control), however long the upgrades took.
    for key in ("one-upgrade", "failed-upgrades"):
        result = json.loads((out_dir / "results" / f"{key}.json").read_text())
        for arm in result["arms"].values():
            assert arm["control_window"] is not None, key
            assert arm["latency"]["control"]["requests"] > 0, key
    summary = json.loads((out_dir / "results" / "summary.json").read_text())
    assert summary["supervisor"]["rss_mb_max"] > 0
    # The load runs apart from the proxy (zeroloss/cpus.py), and the page says where.
    split = summary["settings"]["cpus"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert split["proxy"] and split["load"] and not set(split["proxy"]) & set(split["load"])
    assert summary["settings"]["drain_strategy"] == "gradual"
    page = docs.read_text()
    assert "(benchmarks-upgrade-drain.md)" in page
    assert "CPUs: proxy on" in page or len(os.sched_getaffinity(0)) < 2
    assert all(f"(img/proof-{key}.png)" in page for key in SCENARIOS)
    assert elapsed < 120, f"the smoke run took {elapsed:.0f} s"
