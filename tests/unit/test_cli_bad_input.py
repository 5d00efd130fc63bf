"""Bad input on the real command line (`python -m meshctl` in a subprocess): one line
`meshctl: error: ...` on stderr and the documented exit code, never a traceback, and nothing
started. A subprocess because some of it only exists there: a closed stdin or stdout, a pipe
whose reader went away, a full disk.

Nothing here starts Envoy: every command is given input it must refuse first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshctl.cli.app import default_state_dir
from meshctl.exitcodes import ExitCode

ISOLATED = ("MESHCTL_ENVOY", "MESHCTL_SETTINGS", "MESHCTL_STATE_DIR", "MESHCTL_DEBUG",
            "MESHCTL_SLOT", "MESHCTL_HEALTH_ADDRESS", "MESHCTL_NICE")
IMAGE = "registry.example.com/meshctl:1.40.0"
POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n" \
      "  - {name: app, image: web:1}\n"

Run = Callable[..., subprocess.CompletedProcess[str]]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    env["MESHCTL_NICE"] = "0"  # the test's own priority: no PSI read, no SCHED_IDLE
    return env


@pytest.fixture
def meshctl() -> Run:
    def run(*args: str, **popen: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meshctl", *args], text=True,
                              capture_output="stdout" not in popen, timeout=60,
                              env=environment(), check=False, **popen)

    return run


def shell(command: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`python -m meshctl` under sh, for redirections Python cannot set up (`>&-`, `<&-`)."""
    return subprocess.run(["sh", "-c", f"{sys.executable} -m meshctl {command}"], text=True,
                          capture_output=True, timeout=60, env=environment(), cwd=tmp_path,
                          check=False)


def one_error_line(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("meshctl: error: "), lines[0]
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------- numeric options


@pytest.mark.parametrize("args", [
    ["--ready-timeout-s", "nan"], ["--ready-timeout-s", "-1"], ["--ready-timeout-s", "0"],
    ["--ready-timeout-s", "inf"], ["--drain-max-s", "5e9"], ["--drain-min-s", "nan"],
    ["--stop-grace-s", "inf"], ["--restart-window-s", "nan"], ["--concurrency", "0"],
    ["--max-restarts", "-1"], ["--base-id", "-1"],
], ids=" ".join)
def test_run_refuses_a_numeric_option_out_of_bounds_before_making_the_state_dir(
        meshctl: Run, tmp_path: Path, args: list[str]) -> None:
    done = meshctl("run", "--state-dir", str(tmp_path / "state"), *args)
    one_error_line(done, ExitCode.BAD_INPUT, args[0], "must be a number of")
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("args", [
    ["--timeout", "-5"], ["--timeout", "nan"], ["--ready-timeout-s", "nan"],
    ["--drain-max-s", "5e9"], ["--drain-min-s", "-1"],
], ids=" ".join)
def test_upgrade_refuses_a_numeric_option_out_of_bounds_before_asking_the_supervisor(
        meshctl: Run, tmp_path: Path, args: list[str]) -> None:
    one_error_line(meshctl("upgrade", "--state-dir", str(tmp_path), *args),
                   ExitCode.BAD_INPUT, args[0])


def test_upgrade_refuses_a_minimum_drain_above_the_maximum(meshctl: Run, tmp_path: Path) -> None:
    done = meshctl("upgrade", "--state-dir", str(tmp_path), "--drain-min-s", "10",
                   "--drain-max-s", "5")
    one_error_line(done, ExitCode.BAD_INPUT, "drain_min_s (10) is above drain_max_s (5)")


@pytest.mark.parametrize("value", ["5e9", ".nan", ".inf", "-1"])
def test_a_settings_file_is_held_to_the_bounds_of_the_flags(
        meshctl: Run, tmp_path: Path, value: str) -> None:
    settings = tmp_path / "meshctl.yaml"
    settings.write_text(f"drain:\n  drain_max_s: {value}\n")
    for command in ("run", "upgrade"):
        done = meshctl(command, "--state-dir", str(tmp_path / "state"), "--settings",
                       str(settings))
        one_error_line(done, ExitCode.BAD_INPUT, str(settings))
    assert not (tmp_path / "state").exists()


def test_stop_refuses_a_negative_timeout(meshctl: Run, tmp_path: Path) -> None:
    one_error_line(meshctl("stop", "--state-dir", str(tmp_path), "--timeout", "-1"),
                   ExitCode.BAD_INPUT, "--timeout")


def test_a_demo_of_negative_duration_is_bad_input_before_anything_starts(meshctl: Run) -> None:
    done = meshctl("demo", "--duration", "-1")
    one_error_line(done, ExitCode.BAD_INPUT, "--duration must be a number of seconds from 1")
    assert done.stdout == ""


def test_a_demo_to_a_missing_binary_is_bad_input_before_anything_starts(
        meshctl: Run, tmp_path: Path) -> None:
    done = meshctl("demo", "--to-envoy", str(tmp_path / "no-envoy"))
    one_error_line(done, ExitCode.BAD_INPUT, "Envoy binary not found")


def test_a_rollout_with_a_timeout_of_nan_is_refused_before_any_connection(meshctl: Run) -> None:
    done = meshctl("rollout", "--selector", "app=web", "--image", IMAGE, "--timeout", "nan",
                   "--kubeconfig", "/nonexistent/kubeconfig")
    one_error_line(done, 3, "--timeout")


# ----------------------------------------------------------------- run's own options, and Envoy's


def test_an_unknown_option_of_run_is_a_usage_error_not_an_envoy_argument(
        meshctl: Run, tmp_path: Path) -> None:
    done = meshctl("run", "--state-dir", str(tmp_path / "state"), "--frobnicate")
    one_error_line(done, ExitCode.USAGE, "No such option: --frobnicate", "run --help")
    assert not (tmp_path / "state").exists()


def test_a_stray_argument_of_run_before_the_double_dash_is_a_usage_error(
        meshctl: Run, tmp_path: Path) -> None:
    done = meshctl("run", "--state-dir", str(tmp_path / "state"), "envoy.yaml")
    one_error_line(done, ExitCode.USAGE, "unexpected extra argument")


def test_envoy_arguments_after_the_double_dash_still_reach_meshctls_check(
        meshctl: Run, tmp_path: Path) -> None:
    done = meshctl("run", "--state-dir", str(tmp_path / "state"), "--",
                   "--component-log-level", "upstream:debug", "--concurrency", "4")
    one_error_line(done, ExitCode.BAD_INPUT, "extra Envoy argument --concurrency is managed")
    assert not (tmp_path / "state").exists()


def test_a_missing_envoy_binary_is_refused_before_the_state_dir_is_made(
        meshctl: Run, tmp_path: Path) -> None:
    done = meshctl("run", "--state-dir", str(tmp_path / "state"), "--envoy",
                   str(tmp_path / "no-envoy"))
    one_error_line(done, ExitCode.BAD_INPUT, "Envoy binary not found")
    assert not (tmp_path / "state").exists()


# ----------------------------------------------------------------- config files


@pytest.fixture
def binary_config(tmp_path: Path) -> Path:
    path = tmp_path / "envoy.yaml"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe" + bytes(range(256)))
    return path


def test_run_with_a_binary_config_is_bad_input_before_anything_starts(
        meshctl: Run, tmp_path: Path, binary_config: Path) -> None:
    done = meshctl("run", "--state-dir", str(tmp_path / "state"), "-c", str(binary_config))
    one_error_line(done, ExitCode.BAD_INPUT, "Envoy config is not UTF-8 text", str(binary_config))
    assert not (tmp_path / "state").exists()


def test_upgrade_to_a_binary_config_is_bad_input_not_an_internal_error(
        meshctl: Run, tmp_path: Path, binary_config: Path) -> None:
    done = meshctl("upgrade", "--state-dir", str(tmp_path), "--config", str(binary_config))
    one_error_line(done, ExitCode.BAD_INPUT, "Envoy config is not UTF-8 text")


def test_a_config_with_nul_bytes_is_not_text(meshctl: Run, tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_bytes(b"admin:\0\n")
    done = meshctl("run", "--state-dir", str(tmp_path / "state"), "-c", str(config))
    one_error_line(done, ExitCode.BAD_INPUT, "NUL")


def test_an_unreadable_config_is_bad_input(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text("admin: {}\n")
    config.chmod(0)
    # Root reads a file of mode 000 through CAP_DAC_OVERRIDE: run meshctl without it (and
    # without CAP_DAC_READ_SEARCH), as a root whose file permissions apply.
    drop = (["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
            if os.geteuid() == 0 else [])
    for command in ("run", "upgrade"):
        done = subprocess.run(
            [*drop, sys.executable, "-m", "meshctl", command, "--state-dir",
             str(tmp_path / "state"), "-c", str(config)],
            text=True, capture_output=True, timeout=60, env=environment(), check=False)
        one_error_line(done, ExitCode.BAD_INPUT, "cannot be read", "Permission denied")


def test_an_upgrade_to_a_missing_binary_is_bad_input_with_no_supervisor_asked(
        meshctl: Run, tmp_path: Path) -> None:
    done = meshctl("upgrade", "--state-dir", str(tmp_path), "--envoy", str(tmp_path / "nope"))
    one_error_line(done, ExitCode.BAD_INPUT, "Envoy binary not found")


def test_pod_mode_options_without_a_pod_are_refused(meshctl: Run, tmp_path: Path) -> None:
    done = meshctl("upgrade", "--state-dir", str(tmp_path), "-n", "shop", "--dry-run")
    one_error_line(done, ExitCode.BAD_INPUT, "--namespace, --dry-run: only with --pod")


# ----------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args", [["status", "-o", "yaml"], ["status", "--slot", "c"],
                                  ["bogus"], ["run", "--log-level", "loud"],
                                  ["stop", "--timeout", "soon"], ["status", "--now"]],
                         ids=" ".join)
def test_a_usage_error_is_one_line_and_exit_2(meshctl: Run, args: list[str]) -> None:
    line = one_error_line(meshctl(*args), ExitCode.USAGE, "--help")
    assert "Value error" not in line and "╭" not in line


def test_help_is_still_typers_own(meshctl: Run) -> None:
    done = meshctl("status", "--help")
    assert done.returncode == 0
    assert "Usage:" in done.stdout and "--output" in done.stdout
    assert done.stderr == ""


def test_meshctl_alone_prints_its_help(meshctl: Run) -> None:
    done = meshctl()
    assert done.returncode == ExitCode.USAGE
    assert "Commands" in done.stdout + done.stderr
    assert "meshctl: error" not in done.stderr


# ----------------------------------------------------------------- stdin and stdout


def test_output_into_a_pipe_nobody_reads_exits_quietly_with_141(meshctl: Run) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before meshctl writes: `meshctl version | true`
    try:
        done = meshctl("version", stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""


def test_an_injected_manifest_into_a_pipe_nobody_reads_exits_quietly(
        meshctl: Run, tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(POD)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = meshctl("inject", "-f", str(manifest), "--image", IMAGE, stdout=write_end,
                       stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert "error" not in done.stderr and "Exception" not in done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_inject_onto_a_full_disk_fails_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text(POD)
    done = shell(f"inject -f pod.yaml --image {IMAGE} >/dev/full", tmp_path)
    one_error_line(done_without_notes(done), ExitCode.FAILED,
                   "cannot write output: No space left on device")


def test_inject_with_stdout_closed_fails_since_the_manifest_would_be_lost(
        tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text(POD)
    done = shell(f"inject -f pod.yaml --image {IMAGE} >&-", tmp_path)
    one_error_line(done_without_notes(done), ExitCode.FAILED,
                   "cannot write output: stdout is closed")


def test_inject_from_a_closed_stdin_is_bad_input(tmp_path: Path) -> None:
    done = shell(f"inject -f - --image {IMAGE} <&-", tmp_path)
    one_error_line(done, ExitCode.BAD_INPUT, "stdin is closed")


def test_inject_from_stdin_that_is_not_utf8_is_bad_input(meshctl: Run) -> None:
    done = subprocess.run([sys.executable, "-m", "meshctl", "inject", "-f", "-", "--image",
                           IMAGE], input=b"kind: Pod\xff\xfe\n", capture_output=True,
                          timeout=60, env=environment(), check=False)
    assert done.returncode == ExitCode.BAD_INPUT
    assert done.stderr.decode().startswith("meshctl: error: cannot read the manifest from stdin")


def test_inject_refuses_a_config_map_name_kubernetes_would_refuse(
        meshctl: Run, tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text(POD)
    done = meshctl("inject", "-f", str(tmp_path / "pod.yaml"), "--image", IMAGE,
                   "--config-map", "Envoy_Config")
    one_error_line(done, ExitCode.BAD_INPUT, "is not a ConfigMap name")


def done_without_notes(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """inject's per-object notes (`meshctl inject: injected Pod/web`) are progress, not errors."""
    kept = "".join(line for line in done.stderr.splitlines(keepends=True)
                   if not line.startswith("meshctl inject: "))
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, kept)


# ----------------------------------------------------------------- the default state dir


def test_the_default_state_dir_of_root_is_run_meshctl(tmp_path: Path) -> None:
    assert default_state_dir({}, uid=0, home=tmp_path) == Path("/run/meshctl")


def runtime_dir(tmp_path: Path, mode: int) -> tuple[Path, int]:
    """An XDG runtime dir of `mode`, and its owner: a user who is not root (root's state dir
    is /run/meshctl whatever the environment), given the dir by chown when the test is root."""
    runtime = tmp_path / "run-user"
    runtime.mkdir()
    runtime.chmod(mode)
    uid = os.getuid()
    if uid == 0:
        uid = 1000
        os.chown(runtime, uid, -1)
    return runtime, uid


def test_the_default_state_dir_is_in_a_private_xdg_runtime_dir(tmp_path: Path) -> None:
    runtime, uid = runtime_dir(tmp_path, 0o700)
    assert default_state_dir({"XDG_RUNTIME_DIR": str(runtime)}, uid=uid,
                             home=tmp_path) == runtime / "meshctl"


@pytest.mark.parametrize("case", ["unset", "missing", "writable by others",
                                  "writable by its group", "someone else's", "a file"])
def test_the_default_state_dir_falls_back_to_home_never_to_tmp(tmp_path: Path, case: str) -> None:
    runtime, uid = tmp_path / "run-user", 1000
    if case == "writable by others":
        runtime, uid = runtime_dir(tmp_path, 0o1777)
    elif case == "writable by its group":
        runtime, uid = runtime_dir(tmp_path, 0o770)
    elif case == "someone else's":
        runtime, owner = runtime_dir(tmp_path, 0o700)
        uid = owner + 1
    elif case == "a file":
        runtime.write_text("")
    environ = {} if case == "unset" else {"XDG_RUNTIME_DIR": str(runtime)}
    chosen = default_state_dir(environ, uid=uid, home=tmp_path / "home")
    assert chosen == tmp_path / "home" / ".local" / "state" / "meshctl"


def test_no_default_state_dir_is_under_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    chosen = default_state_dir(uid=1000)
    assert not str(chosen).startswith("/tmp"), chosen


def _without_dac_override(*args: str) -> subprocess.CompletedProcess[str]:
    drop = (["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
            if os.geteuid() == 0 else [])
    return subprocess.run([*drop, sys.executable, "-m", "meshctl", *args], text=True,
                          capture_output=True, timeout=60, env=environment(), check=False)


def test_an_unreadable_state_dir_is_exit_7_and_an_unreadable_settings_file_exit_5(
        tmp_path: Path) -> None:
    """Click's own readability check said exit 2; the README's table says 7 and 5."""
    state = tmp_path / "state"
    state.mkdir(mode=0)
    settings = tmp_path / "settings.yaml"
    settings.write_text("drain: {}\n")
    settings.chmod(0)
    for args in (("status", "--state-dir", str(state)), ("run", "--state-dir", str(state))):
        one_error_line(_without_dac_override(*args), ExitCode.STATE_DIR)
    for command in ("run", "upgrade"):
        done = _without_dac_override(command, "--state-dir", str(tmp_path / "other"),
                                     "--settings", str(settings))
        one_error_line(done, ExitCode.BAD_INPUT, "settings file cannot be read")
    state.chmod(0o700)
