"""The benchmark's CPU split (bench/zeroloss/cpus.py): which CPUs the proxy and the load get,
the command-line forms, and real processes started with the load's prefix running there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from zeroloss import cpus  # noqa: E402
from zeroloss.cpus import Partition  # noqa: E402


@pytest.mark.parametrize(("available", "proxy", "load"), [
    ([0, 1], (0,), (1,)),
    ([0, 1, 2, 3], (0, 1), (2, 3)),
    ([0, 1, 2], (0, 1), (2,)),
    ([3, 1, 2, 1], (1, 2), (3,)),  # sorted, duplicates ignored
])
def test_auto_gives_the_proxy_the_first_half_rounded_up(
        available: list[int], proxy: tuple[int, ...], load: tuple[int, ...]) -> None:
    assert cpus.split(available) == Partition(proxy, load)
    assert cpus.parse("auto", available) == Partition(proxy, load)


def test_one_cpu_is_not_split_and_nothing_is_prefixed() -> None:
    part = cpus.split([0])
    assert not part.pinned and part.load_prefix() == []
    assert "not pinned" in part.describe()


def test_none_and_explicit_lists() -> None:
    assert cpus.parse("none", [0, 1]) == Partition()
    part = cpus.parse("0-1/2,3", [0, 1, 2, 3])
    assert part == Partition((0, 1), (2, 3))
    assert part.load_prefix() == ["taskset", "-c", "2,3"]
    assert part.to_json() == {"proxy": [0, 1], "load": [2, 3]}
    assert "proxy on CPU 0,1" in part.describe() and "load on CPU 2,3" in part.describe()


@pytest.mark.parametrize(("text", "message"), [
    ("0", "auto, none or PROXY/LOAD"),
    ("0/0", "share CPU(s) [0]"),
    ("0/7", "CPU(s) [7] not available"),
    ("/1", "empty CPU list"),
    ("0/x", "'x' is not a CPU number"),
    ("1-0/2", "bad CPU range '1-0'"),
])
def test_bad_cpu_lists_get_one_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        cpus.parse(text, [0, 1, 2])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to split")
def test_a_process_started_with_the_load_prefix_runs_on_the_load_cpus_only() -> None:
    part = cpus.split(sorted(os.sched_getaffinity(0)))
    probe = "import os; print(sorted(os.sched_getaffinity(0)))"
    done = subprocess.run([*part.load_prefix(), sys.executable, "-c", probe],
                          capture_output=True, text=True, check=True, timeout=30)
    assert done.stdout.strip() == str(list(part.load))


def test_proof_refuses_a_bad_cpu_list_in_one_line_before_starting_anything(
        tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "proof.py"), "--cpus", "0/0",
         "--results", str(tmp_path / "results"), "--images", str(tmp_path / "img"),
         "--docs", str(tmp_path / "b.md")],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["--cpus: the proxy and the load share CPU(s) [0]"]
    assert not any(tmp_path.iterdir())  # no result, picture or page written
