"""The exit codes of every meshctl command. Scripts and CI jobs rely on these; never renumber."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    """Done: the supervisor stopped cleanly, or the upgrade finished (new LIVE, old gone)."""
    FAILED = 1
    """An unexpected failure (Envoy died on its own, an internal error); the message says which."""
    USAGE = 2
    """The command line itself is wrong (unknown option, missing argument)."""
    NOT_RUNNING = 3
    """No supervisor is running on the state dir (status/upgrade/stop had nothing to talk to)."""
    BUSY = 4
    """Refused because something is in progress: another supervisor owns the state dir, or an
    upgrade is already running."""
    BAD_INPUT = 5
    """A binary, config file or option value is missing, unreadable or malformed."""
    PREFLIGHT = 6
    """The new binary or config was refused by the pre-flight checks; nothing was started."""
    STATE_DIR = 7
    """The state dir cannot be used: not creatable, not writable, wrong owner, or corrupt state."""
    ROLLED_BACK = 8
    """The upgrade failed and was rolled back: the new generation was stopped, the old one kept
    serving."""
    START_FAILED = 9
    """`meshctl run` could not bring the first Envoy generation to LIVE."""
    TIMEOUT = 10
    """`--wait` gave up before the operation finished; it may still finish on its own."""
