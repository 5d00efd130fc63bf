"""The client commands lower their own CPU priority; the serving commands keep it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshctl.cli import priority
from meshctl.exitcodes import ExitCode
from meshctl.images.rollout_plan import RolloutExit


@pytest.mark.parametrize("argv", [["meshctl", "upgrade", "--wait"], ["meshctl", "status"],
                                  ["meshctl", "rollout", "--selector", "app=x"]])
def test_client_commands_run_at_the_default_nice_value(argv: list[str]) -> None:
    assert priority.wanted_nice(argv, {}) == priority.DEFAULT_NICE


@pytest.mark.parametrize("command", sorted(priority.SERVING_COMMANDS))
def test_serving_commands_keep_their_priority_whatever_the_environment(command: str) -> None:
    assert priority.wanted_nice(["meshctl", command], {priority.NICE_ENV: "19"}) == 0


def test_the_environment_sets_the_value_and_zero_turns_it_off() -> None:
    assert priority.wanted_nice(["meshctl", "upgrade"], {priority.NICE_ENV: "15"}) == 15
    assert priority.wanted_nice(["meshctl", "upgrade"], {priority.NICE_ENV: "0"}) == 0
    assert priority.wanted_nice(["meshctl", "upgrade"], {priority.NICE_ENV: " "}) == 10


@pytest.mark.parametrize("raw", ["x", "-1", "20", "1.5"])
def test_a_bad_value_is_refused(raw: str) -> None:
    with pytest.raises(priority.BadNice, match="MESHCTL_NICE must be an integer from 0 to 19"):
        priority.wanted_nice(["meshctl", "status"], {priority.NICE_ENV: raw})


def test_the_command_is_the_first_non_option_argument() -> None:
    assert priority.command_of(["meshctl"]) is None
    assert priority.command_of(["meshctl", "--help"]) is None
    assert priority.command_of(["meshctl", "--help", "run"]) == "run"


def _nice_after(code: str, start_nice: int = 0) -> str:
    """Run `code` in a child (so this test process keeps its priority) at `start_nice`."""
    done = subprocess.run(
        [sys.executable, "-c", f"import os; os.nice({start_nice}); "
         f"from meshctl.cli import priority; {code}; "
         f"print(os.getpriority(os.PRIO_PROCESS, 0))"],
        capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def test_lowering_the_priority_raises_the_nice_value() -> None:
    assert _nice_after("priority.lower_priority(10)") == "10"


def test_a_caller_that_asked_for_a_lower_priority_keeps_it() -> None:
    assert _nice_after("priority.lower_priority(10)", start_nice=15) == "15"


def test_the_console_script_refuses_a_bad_value_in_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "meshctl", "status"], capture_output=True,
                          text=True, timeout=60, env={"MESHCTL_NICE": "high", "PATH": ""},
                          check=False)
    assert done.returncode == ExitCode.BAD_INPUT
    assert done.stderr.splitlines() == [
        "meshctl: error: MESHCTL_NICE must be an integer from 0 to 19 (0: do not lower the "
        "priority), got 'high'"]


def test_rollout_refuses_a_bad_value_with_its_own_refused_code() -> None:
    assert priority.REFUSED_EXIT["rollout"] == RolloutExit.REFUSED
    done = subprocess.run([sys.executable, "-m", "meshctl", "rollout", "--selector", "app=x"],
                          capture_output=True, text=True, timeout=60,
                          env={"MESHCTL_NICE": "99", "PATH": ""}, check=False)
    assert done.returncode == RolloutExit.REFUSED
    assert done.stderr.startswith("meshctl: error: MESHCTL_NICE must be")
