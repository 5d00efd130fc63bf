"""The client commands lower their own CPU priority; the serving commands keep it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from meshctl.cli import priority
from meshctl.exitcodes import ExitCode
from meshctl.rollout.plan import RolloutExit


def _calm() -> float:
    return 3.0


def _no_call() -> float:
    raise AssertionError("the pressure should not be read for this command")


@pytest.mark.parametrize("argv", [["meshctl", "upgrade", "--wait"], ["meshctl", "status"],
                                  ["meshctl", "stop"]])
def test_local_client_commands_run_idle_when_the_cpu_has_room(argv: list[str]) -> None:
    got = priority.wanted(argv, {}, _calm)
    assert got.idle and got.why == "CPU pressure 3 %"


@pytest.mark.parametrize("some", [priority.SATURATED_PCT, 97.5])
def test_a_saturated_cpu_gets_nice_10_instead_of_idle_which_could_starve(some: float) -> None:
    got = priority.wanted(["meshctl", "upgrade"], {}, lambda: some)
    assert (got.idle, got.nice) == (False, priority.DEFAULT_NICE)


def test_an_unreadable_pressure_gets_nice_10() -> None:
    got = priority.wanted(["meshctl", "status"], {}, lambda: None)
    assert (got.idle, got.nice, got.why) == (False, 10, "CPU pressure unknown")


@pytest.mark.parametrize("argv", [["meshctl", "rollout", "--selector", "app=x"],
                                  ["meshctl", "upgrade", "--pod", "p", "--image", "i"],
                                  ["meshctl", "upgrade", "--pod=p", "--image=i"]])
def test_commands_run_outside_the_proxy_take_nice_10_never_idle(argv: list[str]) -> None:
    got = priority.wanted(argv, {}, _no_call)
    assert (got.idle, got.nice) == (False, priority.DEFAULT_NICE)


@pytest.mark.parametrize("command", sorted(priority.SERVING_COMMANDS))
def test_serving_commands_keep_their_priority_whatever_the_environment(command: str) -> None:
    for value in ("19", "idle"):
        got = priority.wanted(["meshctl", command], {priority.NICE_ENV: value}, _no_call)
        assert (got.idle, got.nice) == (False, 0)


def test_the_environment_overrides_the_choice() -> None:
    def wanted(value: str, argv: list[str] | None = None) -> tuple[bool, int]:
        got = priority.wanted(argv or ["meshctl", "upgrade"], {priority.NICE_ENV: value},
                              _no_call)
        return got.idle, got.nice

    assert wanted("15") == (False, 15)
    assert wanted("0") == (False, 0)
    assert wanted("IDLE") == (True, 0)
    assert wanted("idle", ["meshctl", "rollout"]) == (True, 0)
    assert priority.wanted(["meshctl", "upgrade"], {priority.NICE_ENV: " "}, _calm).idle


@pytest.mark.parametrize("raw", ["x", "-1", "20", "1.5"])
def test_a_bad_value_is_refused(raw: str) -> None:
    with pytest.raises(priority.BadNice, match="MESHCTL_NICE must be 'idle' or an integer "
                                               "from 0 to 19"):
        priority.wanted(["meshctl", "status"], {priority.NICE_ENV: raw}, _calm)


def test_the_command_is_the_first_non_option_argument() -> None:
    assert priority.command_of(["meshctl"]) is None
    assert priority.command_of(["meshctl", "--help"]) is None
    assert priority.command_of(["meshctl", "--help", "run"]) == "run"


def _nice_after(code: str, start_nice: int = 0) -> str:
    """Run `code` in a child (so this test process keeps its priority) at `start_nice`;
    its nice value and whether it is under SCHED_IDLE."""
    done = subprocess.run(
        [sys.executable, "-c", f"import os; os.nice({start_nice}); "
         f"from meshctl.cli import priority; {code}; "
         f"print(os.getpriority(os.PRIO_PROCESS, 0), "
         f"os.sched_getscheduler(0) == os.SCHED_IDLE)"],
        capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def test_lowering_the_priority_raises_the_nice_value() -> None:
    assert _nice_after("priority.lower_priority(10)") == "10 False"


def test_a_caller_that_asked_for_a_lower_priority_keeps_it() -> None:
    assert _nice_after("priority.lower_priority(10)", start_nice=15) == "15 False"


def test_applying_idle_puts_the_process_under_sched_idle() -> None:
    assert _nice_after("print(priority.apply(priority.Priority(idle=True)).idle)") == \
        "True\n0 True"


def test_what_was_applied_is_described_for_the_upgrade_record() -> None:
    assert _nice_after("priority.apply(priority.Priority(nice=10, why='runs outside the "
                       "proxy')); print(priority.describe())") == \
        "nice 10 (runs outside the proxy)\n10 False"
    assert _nice_after("print(priority.describe())") == "unchanged\n0 False"


def test_applying_a_nice_value_leaves_the_policy_alone() -> None:
    assert _nice_after("priority.apply(priority.Priority(nice=12))") == "12 False"


def test_the_console_script_applies_the_environment_before_loading_the_app() -> None:
    # `meshctl version` under MESHCTL_NICE=idle: the app module sees itself under SCHED_IDLE.
    done = subprocess.run(
        [sys.executable, "-c", "import os, sys; sys.argv = ['meshctl', 'version']; "
         "from meshctl.cli import entry, app; "
         "app.main = lambda: print(os.sched_getscheduler(0) == os.SCHED_IDLE); entry.main()"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "MESHCTL_NICE": "idle"})
    assert done.stdout.strip() == "True"


def test_the_console_script_refuses_a_bad_value_in_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "meshctl", "status"], capture_output=True,
                          text=True, timeout=60, env={"MESHCTL_NICE": "high", "PATH": ""},
                          check=False)
    assert done.returncode == ExitCode.BAD_INPUT
    assert done.stderr.splitlines() == [
        "meshctl: error: MESHCTL_NICE must be 'idle' or an integer from 0 to 19 (0: do not "
        "lower the priority), got 'high'"]


def test_rollout_refuses_a_bad_value_with_its_own_refused_code() -> None:
    assert priority.REFUSED_EXIT["rollout"] == RolloutExit.REFUSED
    done = subprocess.run([sys.executable, "-m", "meshctl", "rollout", "--selector", "app=x"],
                          capture_output=True, text=True, timeout=60,
                          env={"MESHCTL_NICE": "99", "PATH": ""}, check=False)
    assert done.returncode == RolloutExit.REFUSED
    assert done.stderr.startswith("meshctl: error: MESHCTL_NICE must be")
