"""meshctl's own error tree. Each error carries the exit code the CLI returns for it.

The CLI prints `str(error)` as one line and exits with `error.exit_code`; see
`meshctl.exitcodes` for the documented table.
"""

from __future__ import annotations

from meshctl.exitcodes import ExitCode


class MeshctlError(Exception):
    """Base of every error meant for a person: one clear line, one exit code."""

    exit_code: ExitCode = ExitCode.FAILED


class BadInput(MeshctlError):
    """A file, binary or option the user gave does not work (missing, unreadable, invalid)."""

    exit_code = ExitCode.BAD_INPUT


class PreflightFailed(MeshctlError):
    """The new binary or config was checked before starting anything, and refused."""

    exit_code = ExitCode.PREFLIGHT


class StateDirError(MeshctlError):
    """The state dir cannot be created, read or written, or its contents are corrupt."""

    exit_code = ExitCode.STATE_DIR


class Busy(MeshctlError):
    """Someone else holds what is needed: a running supervisor, an upgrade in progress."""

    exit_code = ExitCode.BUSY


class NotRunning(MeshctlError):
    """No supervisor answers on the state dir's control socket."""

    exit_code = ExitCode.NOT_RUNNING


class UpgradeFailed(MeshctlError):
    """The new generation did not become LIVE; the old one kept serving."""

    exit_code = ExitCode.ROLLED_BACK


class StartFailed(MeshctlError):
    """The first generation did not become LIVE at start."""

    exit_code = ExitCode.START_FAILED


class TimedOut(MeshctlError):
    """A --wait deadline passed before the operation finished (it may still finish)."""

    exit_code = ExitCode.TIMEOUT
