"""Every option of every command against README's exit-code table, in one table.

For each (command, option) of the click tree typer builds, `TABLE` gives a bad value and the
code it must end with: 2 a bad command line (not the option's type, not one of its choices,
a flag given a value, a value missing), 5 bad input (a number out of bounds, a file missing),
7 a state dir that cannot be used, and `rollout`'s 3 (refused before starting) for all of
its own. Every one of them must be exactly one stderr line `meshctl: error: ...`.

A new option that is not in the table fails `test_the_table_covers_every_option_of_every_
command`: add its row, with a bad value, and this sweep checks it like the others. A numeric
option's bad value must be a number (out of its bounds), so that each numeric option is
held to a `meshctl.cli.bounds.Bound`, not only to click's type check.

Each case runs `python -m meshctl` in a subprocess on a fresh, empty state dir; the cases run
concurrently in one module fixture (about 80 interpreters, ~0.5 s of CPU each). The commands
that would reach Kubernetes are only given values refused before any connection (and
KUBECONFIG points nowhere, in case one is not).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer
from typer import _click as click  # typer's own (vendored) click
from typer.core import TyperGroup, TyperOption

from meshctl.cli.app import app
from meshctl.exitcodes import ExitCode

USAGE, NOT_RUNNING, BAD_INPUT, STATE_DIR = (int(ExitCode.USAGE), int(ExitCode.NOT_RUNNING),
                                            int(ExitCode.BAD_INPUT), int(ExitCode.STATE_DIR))
REFUSED = 3
"""`rollout`'s code for everything refused before it started (RolloutExit.REFUSED)."""

IMAGE = "registry.example.com/meshctl:1.40.0"
ROLLOUT = ["--selector", "app=web", "--image", IMAGE]
"""What `rollout` needs besides the option under test, all valid."""

# {sd}: a fresh empty state dir; {file}: a regular file; {missing}: a path that does not
# exist; {manifest}: a valid Pod manifest.
TABLE: dict[tuple[str, str], tuple[list[str], int]] = {
    ("run", "--config"): (["--config", "{missing}"], BAD_INPUT),
    ("run", "--envoy"): (["--envoy", "{missing}"], BAD_INPUT),
    ("run", "--state-dir"): (["--state-dir", "{file}"], STATE_DIR),
    ("run", "--slot"): (["--slot", "c"], USAGE),
    ("run", "--base-id"): (["--base-id", "-1"], BAD_INPUT),
    ("run", "--concurrency"): (["--concurrency", "0"], BAD_INPUT),
    ("run", "--settings"): (["--settings", "{missing}"], BAD_INPUT),
    ("run", "--drain-min-s"): (["--drain-min-s", "nan"], BAD_INPUT),
    ("run", "--drain-max-s"): (["--drain-max-s", "5e9"], BAD_INPUT),
    ("run", "--drain-strategy"): (["--drain-strategy", "sometimes"], USAGE),
    ("run", "--stop-grace-s"): (["--stop-grace-s", "-1"], BAD_INPUT),
    ("run", "--ready-timeout-s"): (["--ready-timeout-s", "nan"], BAD_INPUT),
    ("run", "--health-address"): (["--health-address", "nowhere"], BAD_INPUT),
    ("run", "--keeper"): (["--keeper=yes"], USAGE),
    ("run", "--max-restarts"): (["--max-restarts", "-1"], BAD_INPUT),
    ("run", "--restart-window-s"): (["--restart-window-s", "inf"], BAD_INPUT),
    ("run", "--hold-sockets"): (["--hold-sockets=yes"], USAGE),
    ("run", "--init-priority"): (["--init-priority", "high"], USAGE),
    ("run", "--log-level"): (["--log-level", "loud"], USAGE),

    ("upgrade", "--envoy"): (["--envoy", "{missing}"], BAD_INPUT),
    ("upgrade", "--config"): (["--config", "{missing}"], BAD_INPUT),
    ("upgrade", "--state-dir"): (["--state-dir", "{file}"], STATE_DIR),
    ("upgrade", "--slot"): (["--slot", "c"], USAGE),
    ("upgrade", "--wait"): (["--wait=yes"], USAGE),
    ("upgrade", "--timeout"): (["--timeout", "-5"], BAD_INPUT),
    ("upgrade", "--settings"): (["--settings", "{missing}"], BAD_INPUT),
    ("upgrade", "--drain-min-s"): (["--drain-min-s", "-1"], BAD_INPUT),
    ("upgrade", "--drain-max-s"): (["--drain-max-s", "5e9"], BAD_INPUT),
    ("upgrade", "--drain-strategy"): (["--drain-strategy", "sometimes"], USAGE),
    ("upgrade", "--ready-timeout-s"): (["--ready-timeout-s", "nan"], BAD_INPUT),
    ("upgrade", "--skip-preflight"): (["--skip-preflight=yes"], USAGE),
    ("upgrade", "--force"): (["--force=yes"], USAGE),
    ("upgrade", "--accept-listener-change"): (["--accept-listener-change=yes"], USAGE),
    ("upgrade", "--output"): (["--output", "yaml"], USAGE),
    ("upgrade", "--pod"): (["--pod", "web"], BAD_INPUT),  # no --image
    ("upgrade", "--namespace"): (["--namespace", "shop"], BAD_INPUT),  # no --pod
    ("upgrade", "--image"): (["--image", IMAGE], BAD_INPUT),  # no --pod
    ("upgrade", "--context"): (["--context", "prod"], BAD_INPUT),  # no --pod
    ("upgrade", "--kubeconfig"): (["--kubeconfig", "{missing}"], BAD_INPUT),  # no --pod
    ("upgrade", "--dry-run"): (["--dry-run"], BAD_INPUT),  # no --pod
    ("upgrade", "--handover"): (["--handover", "sideways"], USAGE),
    ("upgrade", "--prepull"): (["--prepull"], BAD_INPUT),  # no --pod

    ("status", "--state-dir"): (["--state-dir", "{file}"], STATE_DIR),
    ("status", "--slot"): (["--slot", "c"], USAGE),
    ("status", "--output"): (["--output", "yaml"], USAGE),

    ("stop", "--state-dir"): (["--state-dir", "{file}"], STATE_DIR),
    ("stop", "--slot"): (["--slot", "c"], USAGE),
    ("stop", "--now"): (["--now=yes"], USAGE),
    ("stop", "--wait"): (["--wait=yes"], USAGE),
    ("stop", "--timeout"): (["--timeout", "-1"], BAD_INPUT),

    ("demo", "--duration"): (["--duration", "-1"], BAD_INPUT),
    ("demo", "--to-envoy"): (["--to-envoy", "{missing}"], BAD_INPUT),
    ("demo", "--xds"): (["--xds=yes"], USAGE),
    ("demo", "--output"): (["--output", "yaml"], USAGE),

    ("inject", "--filename"): (["--filename", "{missing}", "--image", IMAGE], BAD_INPUT),
    ("inject", "--image"): (["-f", "{manifest}", "--image", "Not An Image"], BAD_INPUT),
    ("inject", "--standby-image"): (["-f", "{manifest}", "--image", IMAGE,
                                     "--standby-image", IMAGE], BAD_INPUT),
    ("inject", "--native-sidecars"): (["-f", "{manifest}", "--image", IMAGE,
                                       "--native-sidecars=yes"], USAGE),
    ("inject", "--config-map"): (["-f", "{manifest}", "--image", IMAGE,
                                  "--config-map", "Envoy_Config"], BAD_INPUT),
    ("inject", "--replace"): (["-f", "{manifest}", "--image", IMAGE, "--replace=yes"], USAGE),

    ("pod-check", "--slot"): (["--slot", "e0"], USAGE),
    ("pod-check", "--state-dir"): (["--slot", "e1", "--state-dir", "{missing}"], STATE_DIR),
    ("pod-check", "--timeout"): (["--slot", "e1", "--timeout", "-1"], BAD_INPUT),
    ("pod-check", "--termination-log"): (["--slot", "e1", "--termination-log"], USAGE),

    ("standby", "--slot"): (["--slot", "c"], USAGE),
    ("standby", "--state-dir"): (["--state-dir"], USAGE),  # accepted and ignored: only a
    ("standby", "--health-address"): (["--health-address", "nowhere"], BAD_INPUT),  # value

    ("rollout", "--selector"): (["--selector", "app in (", "--image", IMAGE], REFUSED),
    ("rollout", "--namespace"): ([*ROLLOUT, "--namespace"], REFUSED),
    ("rollout", "--all-namespaces"): ([*ROLLOUT, "--all-namespaces=yes"], REFUSED),
    ("rollout", "--image"): (["--selector", "app=web", "--image", "Not An Image"], REFUSED),
    ("rollout", "--max-parallel"): ([*ROLLOUT, "--max-parallel", "0"], REFUSED),
    ("rollout", "--canary"): ([*ROLLOUT, "--canary", "-1"], REFUSED),
    ("rollout", "--pause-after-canary"): ([*ROLLOUT, "--pause-after-canary=yes"], REFUSED),
    ("rollout", "--max-failures"): ([*ROLLOUT, "--max-failures", "0"], REFUSED),
    ("rollout", "--timeout"): ([*ROLLOUT, "--timeout", "nan"], REFUSED),
    ("rollout", "--pod-timeout"): ([*ROLLOUT, "--pod-timeout", "-1"], REFUSED),
    ("rollout", "--retry-failed"): ([*ROLLOUT, "--retry-failed=yes"], REFUSED),
    ("rollout", "--events"): ([*ROLLOUT, "--events", "sometimes"], REFUSED),
    ("rollout", "--force"): ([*ROLLOUT, "--force=yes"], REFUSED),
    ("rollout", "--handover"): ([*ROLLOUT, "--handover", "sideways"], REFUSED),
    ("rollout", "--dry-run"): ([*ROLLOUT, "--dry-run=yes"], REFUSED),
    ("rollout", "--output"): ([*ROLLOUT, "--output", "yaml"], REFUSED),
    ("rollout", "--context"): ([*ROLLOUT, "--context"], REFUSED),
    ("rollout", "--kubeconfig"): ([*ROLLOUT, "--kubeconfig"], REFUSED),

    ("rollout status", "--selector"): (["--selector", "app in ("], REFUSED),
    ("rollout status", "--namespace"): (["--namespace"], REFUSED),
    ("rollout status", "--all-namespaces"): (["--all-namespaces=yes"], REFUSED),
    ("rollout status", "--output"): (["--output", "yaml"], REFUSED),
    ("rollout status", "--context"): (["--context"], REFUSED),
    ("rollout status", "--kubeconfig"): (["--kubeconfig"], REFUSED),
}

CLIENT_COMMANDS = ("status", "stop", "upgrade")
"""On an empty state dir, with nothing wrong on the command line: no supervisor, exit 3."""

POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n" \
      "  - {name: app, image: web:1}\n"
ISOLATED = ("MESHCTL_ENVOY", "MESHCTL_SETTINGS", "MESHCTL_STATE_DIR", "MESHCTL_DEBUG",
            "MESHCTL_SLOT", "MESHCTL_HEALTH_ADDRESS")


def command_tree() -> dict[str, click.Command]:
    """Every command typer builds, by its path below `meshctl` (`rollout status`)."""
    found: dict[str, click.Command] = {}

    def walk(command: click.Command, path: str) -> None:
        if path:
            found[path] = command
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def long_flag(param: click.Parameter) -> str:
    return next(o for o in param.opts if o.startswith("--"))


def options() -> dict[tuple[str, str], click.Parameter]:
    return {(path, long_flag(p)): p for path, command in command_tree().items()
            for p in command.params}


def argv(key: tuple[str, str], paths: dict[str, Path]) -> list[str]:
    command, option = key
    args, _ = TABLE[key]
    if "--state-dir" in {long_flag(p) for p in command_tree()[command].params} \
            and option != "--state-dir" and command != "standby":
        # run would make the dir: a path inside the empty one shows it did not.
        args = [*args, "--state-dir", "{sd}/state" if command == "run" else "{sd}"]
    return [*command.split(), *(a.format(**{k: str(v) for k, v in paths.items()})
                                for a in args)]


@pytest.fixture(scope="module")
def outcomes() -> Iterator[tuple[dict[tuple[str, str], subprocess.CompletedProcess[str]],
                                 dict[tuple[str, str], Path]]]:
    """Every case of the table, run at once (each on its own empty state dir)."""
    root = Path(tempfile.mkdtemp(prefix="mce-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    env.update(MESHCTL_NICE="0", KUBECONFIG=str(root / "no-kubeconfig"))
    (root / "file").write_text("not a dir\n")
    (root / "pod.yaml").write_text(POD)
    state_dirs: dict[tuple[str, str], Path] = {}

    def run(key: tuple[str, str]) -> subprocess.CompletedProcess[str]:
        sd = root / f"sd-{key[0].replace(' ', '-')}{key[1]}"
        sd.mkdir(mode=0o700)
        state_dirs[key] = sd
        paths = {"sd": sd, "file": root / "file", "missing": root / "missing",
                 "manifest": root / "pod.yaml"}
        return subprocess.run([sys.executable, "-m", "meshctl", *argv(key, paths)],
                              capture_output=True, text=True, timeout=60, env=env,
                              stdin=subprocess.DEVNULL, check=False)

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            done = dict(zip(TABLE, pool.map(run, TABLE), strict=True))
        yield done, state_dirs
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_the_table_covers_every_option_of_every_command() -> None:
    assert set(options()) == set(TABLE)


def test_every_option_is_an_option_with_a_long_flag() -> None:
    for path, command in command_tree().items():
        for param in command.params:
            assert isinstance(param, TyperOption), (path, param.name)
            assert any(o.startswith("--") for o in param.opts), (path, param.name)


def numeric(param: click.Parameter) -> bool:
    """An int or float option (typer keeps the parameter's annotation on its TyperOption)."""
    return isinstance(param, TyperOption) and param.type_descriptor.annotation in (int, float)


@pytest.mark.parametrize("key", [k for k, p in options().items() if numeric(p)], ids=" ".join)
def test_a_numeric_option_is_refused_for_its_bounds_not_its_type(key: tuple[str, str]) -> None:
    args, code = TABLE[key]
    value = args[args.index(key[1]) + 1]
    float(value)  # a number: out of bounds, which only a Bound refuses
    assert code in (BAD_INPUT, REFUSED)


@pytest.mark.parametrize("key", list(TABLE), ids=" ".join)
def test_a_bad_value_of_each_option_is_one_line_and_its_documented_code(
        key: tuple[str, str],
        outcomes: tuple[dict[tuple[str, str], subprocess.CompletedProcess[str]],
                        dict[tuple[str, str], Path]]) -> None:
    done = outcomes[0][key]
    _, code = TABLE[key]
    assert done.returncode == code, (done.args, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("meshctl: error: "), lines[0]
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert done.stdout == ""
    if key[0] == "run":
        assert not (outcomes[1][key] / "state").exists(), "run made its state dir"


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_a_client_command_on_an_empty_state_dir_finds_no_supervisor(
        command: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "meshctl", command, "--state-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "MESHCTL_NICE": "0"})
    assert done.returncode == NOT_RUNNING, done.stderr
    assert done.stderr == f"meshctl: error: no supervisor is running on {tmp_path}\n"
