"""What bench/proof.py writes into the committed results: paths relative to the repository,
nothing of the machine that ran it (its home directory, its scratch folders)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import proof  # noqa: E402


def test_a_path_inside_the_repository_is_written_relative_to_it() -> None:
    assert proof.portable(proof.REPO / "docs" / "img" / "a.png") == "docs/img/a.png"


def test_a_path_outside_the_repository_keeps_only_its_last_part() -> None:
    assert proof.portable("/root/.cache/meshctl/envoy") == "<outside the repository>/envoy"


def test_the_summary_names_no_absolute_path() -> None:
    summary = {"command": proof._command(["--attempts", "/work/scratch/att", "--smoke"]),
               "results": {"storm": str(proof.REPO / "bench/results/proof/storm.json")},
               "images": {"storm": "/tmp/x/proof-storm.png"},
               "settings": {"old_envoy": "/root/e", "new_envoy": "/home/u/e",
                            "attempts_dir": None, "rounds": 5}}
    text = json.dumps(proof.portable_summary(summary))
    assert "/root" not in text and "/work" not in text and "/tmp" not in text
    assert "bench/results/proof/storm.json" in text


def test_the_committed_summary_names_no_absolute_path() -> None:
    committed = json.loads((BENCH / "results" / "proof" / "summary.json").read_text())
    paths = [*committed["results"].values(), *committed["images"].values(),
             committed["settings"]["old_envoy"], committed["settings"]["new_envoy"]]
    assert all(not p.startswith("/") for p in paths)
    assert " /" not in committed["command"]
