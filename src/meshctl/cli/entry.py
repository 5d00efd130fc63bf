"""The `meshctl` console script: lower the client's priority, then load the typer app.

Kept apart from `meshctl.cli.app` on purpose: importing the app (typer, pydantic, the
Kubernetes planning code) is most of a client command's CPU, and it should already run at the
lowered priority (see `meshctl.cli.priority`).
"""

from __future__ import annotations

import os
import sys

from meshctl import cpu
from meshctl.cli import priority
from meshctl.exitcodes import ExitCode


def main() -> None:
    try:
        priority.apply(priority.wanted(sys.argv, os.environ, cpu.pressure))
    except priority.BadNice as exc:
        print(f"meshctl: error: {exc}", file=sys.stderr)
        code = priority.REFUSED_EXIT.get(priority.command_of(sys.argv) or "", ExitCode.BAD_INPUT)
        raise SystemExit(int(code)) from None

    from meshctl.cli.app import main as app_main  # noqa: PLC0415  (after the priority change)

    app_main()
