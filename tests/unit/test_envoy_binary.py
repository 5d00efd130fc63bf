"""Where the Envoy binary comes from and what it says about itself (`meshctl.envoy.binary`).

Probes run small shell scripts that print what Envoy prints: real subprocesses, no Envoy.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshctl.envoy.binary import (
    ENVOY_ENV_VAR,
    check_executable,
    embedded_binary,
    last_line,
    parse_version,
    probe_binary,
    resolve_binary,
    validate_config,
)
from meshctl.errors import BadInput, PreflightFailed

HASH = "9e5580933739775e8bce696a57a2e1bc99368f23"


def executable(path: Path, script: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)
    return path


def fake_envoy(path: Path, *, version_banner: str, hot_restart: str = "11.104",
               validate_exit: int = 0, validate_message: str = "") -> Path:
    """A script that answers --version, --hot-restart-version and --mode validate."""
    return executable(path, f"""#!/bin/sh
case "$1" in
  --version) echo ''; echo '{version_banner}'; echo ''; exit 0 ;;
  --hot-restart-version) echo '{hot_restart}'; exit 0 ;;
  --mode) echo '{validate_message}' >&2; exit {validate_exit} ;;
esac
exit 64
""")


# ----------------------------------------------------------------- parse_version


@pytest.mark.parametrize(
    ("banner", "version"),
    [
        (f"envoy  version: {HASH}/1.40.0/Clean/RELEASE/BoringSSL", "1.40.0"),
        (f"\nenvoy  version: {HASH}/1.40.0/Clean/RELEASE/BoringSSL\n\n", "1.40.0"),
        (f"envoy  version: {HASH}/1.31.10/Modified/DEBUG/BoringSSL-FIPS", "1.31.10"),
        (f"envoy  version: {HASH}/1.41.0-dev/Clean/RELEASE/BoringSSL", "1.41.0-dev"),
        (f"envoy  version: {HASH}/1.38.0-rc.1/Distribution/RELEASE/OpenSSL", "1.38.0-rc.1"),
        (f"{HASH}/1.40.0/Clean/RELEASE/BoringSSL", "1.40.0"),  # /server_info's "version"
    ],
)
def test_the_version_is_read_from_envoys_version_banner(banner: str, version: str) -> None:
    assert parse_version(banner) == version


@pytest.mark.parametrize("text", ["", "envoy: command not found",
                                  "envoy version 1.40.0", "1.40.0", "/1.40/Clean/"])
def test_text_without_a_version_banner_has_no_version(text: str) -> None:
    assert parse_version(text) is None


def test_the_version_is_read_from_the_banner_even_when_the_binary_path_has_a_version() -> None:
    # What the embedded binary prints under pyenv: the path comes first.
    banner = ("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/envoy/_bin/envoy  "
              f"version: {HASH}/1.40.0/Clean/RELEASE/BoringSSL")
    assert parse_version(banner) == "1.40.0"


# ----------------------------------------------------------------- resolve_binary


def test_an_explicit_binary_wins_over_the_environment(tmp_path: Path) -> None:
    explicit = executable(tmp_path / "explicit" / "envoy")
    from_env = executable(tmp_path / "env" / "envoy")
    assert resolve_binary(str(explicit), {ENVOY_ENV_VAR: str(from_env)}) == explicit


def test_an_explicit_binary_may_be_a_path_object(tmp_path: Path) -> None:
    explicit = executable(tmp_path / "envoy")
    assert resolve_binary(explicit, {}) == explicit


def test_the_environment_variable_wins_over_the_embedded_binary(tmp_path: Path) -> None:
    from_env = executable(tmp_path / "env" / "envoy")
    assert resolve_binary(None, {ENVOY_ENV_VAR: str(from_env)}) == from_env


def test_only_the_given_environment_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENVOY_ENV_VAR, str(executable(tmp_path / "process-env" / "envoy")))
    from_mapping = executable(tmp_path / "mapping" / "envoy")
    assert resolve_binary(None, {ENVOY_ENV_VAR: str(from_mapping)}) == from_mapping
    assert resolve_binary(None, {}) == embedded_binary().resolve()


def test_without_explicit_or_environment_the_embedded_binary_is_used() -> None:
    binary = resolve_binary(None, {})
    assert binary == embedded_binary().resolve()
    assert binary.is_file()


def test_an_empty_environment_variable_counts_as_unset() -> None:
    assert resolve_binary(None, {ENVOY_ENV_VAR: ""}) == embedded_binary().resolve()


def test_the_resolved_binary_is_an_absolute_path_with_links_followed(tmp_path: Path) -> None:
    real = executable(tmp_path / "real" / "envoy")
    link = tmp_path / "envoy-link"
    link.symlink_to(real)
    assert resolve_binary(str(link), {}) == real


def test_a_binary_path_may_start_with_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    real = executable(tmp_path / "bin" / "envoy")
    assert resolve_binary("~/bin/envoy", {}) == real


def test_a_missing_binary_is_bad_input_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "envoy"
    with pytest.raises(BadInput, match="not found") as info:
        resolve_binary(str(missing), {})
    assert str(missing) in str(info.value)


def test_a_missing_binary_named_by_the_environment_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found"):
        resolve_binary(None, {ENVOY_ENV_VAR: str(tmp_path / "nope")})


def test_a_file_without_execute_permission_is_bad_input(tmp_path: Path) -> None:
    plain = tmp_path / "envoy"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    with pytest.raises(BadInput, match="not an executable file"):
        check_executable(plain)


def test_a_directory_is_not_an_executable_file(tmp_path: Path) -> None:
    directory = tmp_path / "envoy"
    directory.mkdir()
    assert directory.stat().st_mode & stat.S_IXUSR
    with pytest.raises(BadInput, match="not an executable file"):
        resolve_binary(str(directory), {})


# ----------------------------------------------------------------- last_line


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("one line", "one line"),
        ("first\nsecond\n", "second"),
        ("first\nerror: the last word\n\n   \n", "error: the last word"),
        ("  padded  \n", "padded"),
        ("", "(no output)"),
        ("\n \n\t\n", "(no output)"),
    ],
)
def test_last_line_is_the_last_line_with_something_on_it(text: str, line: str) -> None:
    assert last_line(text) == line


# ----------------------------------------------------------------- probes


def test_a_probe_reports_the_version_and_the_hot_restart_version(tmp_path: Path) -> None:
    binary = fake_envoy(tmp_path / "bin" / "envoy",
                        version_banner=f"envoy  version: {HASH}/1.40.0/Clean/RELEASE/BoringSSL",
                        hot_restart="11.104")
    info = probe_binary(binary, timeout_s=10)
    assert (info.path, info.version, info.hot_restart_version) == (binary, "1.40.0", "11.104")


def test_a_binary_that_does_not_print_a_version_fails_preflight(tmp_path: Path) -> None:
    binary = executable(tmp_path / "envoy", "#!/bin/sh\necho 'usage: something else' >&2\n"
                                            "exit 2\n")
    with pytest.raises(PreflightFailed, match="not a working Envoy binary") as info:
        probe_binary(binary, timeout_s=10)
    assert "usage: something else" in str(info.value)


def test_a_binary_that_does_not_answer_in_time_fails_preflight(tmp_path: Path) -> None:
    binary = executable(tmp_path / "envoy", "#!/bin/sh\nexec sleep 5\n")
    with pytest.raises(PreflightFailed, match=r"did not answer within 0\.3s"):
        probe_binary(binary, timeout_s=0.3)


def test_a_binary_that_cannot_be_run_fails_preflight(tmp_path: Path) -> None:
    binary = executable(tmp_path / "envoy", "not a program\x00\x01")
    with pytest.raises(PreflightFailed, match="cannot be run"):
        probe_binary(binary, timeout_s=10)


def test_a_config_the_binary_rejects_fails_preflight_with_envoys_reason(tmp_path: Path) -> None:
    binary = fake_envoy(tmp_path / "envoy", version_banner="x", validate_exit=1,
                        validate_message="Unable to parse JSON as proto")
    with pytest.raises(PreflightFailed, match="Unable to parse JSON as proto"):
        validate_config(binary, tmp_path / "envoy.yaml", timeout_s=10)


def test_a_config_the_binary_accepts_passes_preflight(tmp_path: Path) -> None:
    binary = fake_envoy(tmp_path / "envoy", version_banner="x", validate_exit=0)
    validate_config(binary, tmp_path / "envoy.yaml", timeout_s=10)
