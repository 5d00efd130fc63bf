"""`meshctl rollout`'s progress bar, fed the events a rollout emits, and its help (the k8s tests
cover the rest of the command; they run off a terminal, where progress is JSON lines)."""

from __future__ import annotations

import io
import re

from rich.console import Console
from typer.testing import CliRunner

from meshctl.cli.app import app
from meshctl.cli.rollout import _Bar


def test_the_progress_bar_counts_upgrades_and_prints_failures_and_skips_above_it() -> None:
    screen = io.StringIO()
    bar = _Bar(Console(file=screen, force_terminal=True, width=100))
    pod = {"rollout": "r-1", "namespace": "shop"}
    for event in [
        {"event": "rollout_started", "to_upgrade": 3},
        {"event": "pod_skipped", **pod, "pod": "web-9", "reason": "not Ready"},
        {"event": "pod_started", **pod, "pod": "web-0", "batch": 1, "of": 2},
        {"event": "pod_upgraded", **pod, "pod": "web-0", "batch": 1},
        {"event": "pod_started", **pod, "pod": "web-1", "batch": 2, "of": 2},
        {"event": "pod_started", **pod, "pod": "web-2", "batch": 2, "of": 2},
        {"event": "pod_upgraded", **pod, "pod": "web-1", "batch": 2},
        {"event": "pod_rolled_back", **pod, "pod": "web-2", "batch": 2,
         "reason": "not ready within 1s"},
        {"event": "budget_wait", **pod, "pod": "web-3", "batch": 2,
         "reason": "PodDisruptionBudget shop/web needs 2 healthy pod(s) of 3, has 2"},
        {"event": "note", "message": "no Events will be recorded: forbidden"},
        {"event": "rollout_done", "exit_code": 1},
    ]:
        bar.event(event)
    assert bar.counts == {"upgraded": 2, "failed": 1}
    assert bar.progress.tasks[0].completed == 3
    bar.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # no colours, no cursor
    assert "shop/web-9: skipped: not Ready" in text
    assert "shop/web-2: rolled_back: not ready within 1s" in text
    assert "no Events will be recorded: forbidden" in text
    assert "shop/web-3: held: PodDisruptionBudget shop/web needs 2 healthy pod(s) of 3" in text


def test_the_rollout_help_breaks_its_prose_only_at_the_end_of_a_sentence() -> None:
    result = CliRunner().invoke(app, ["rollout", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    prose = result.stdout.split("Exit codes:")[0].split("Usage:")[1].splitlines()[1:]
    lines = [line.strip() for line in prose if line.strip()]
    assert lines[0] == "Upgrade the proxy of every pod of a selector, in place, in batches."
    assert all(line.endswith(".") for line in lines), lines


def test_meshctl_help_offers_shell_completion() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout
