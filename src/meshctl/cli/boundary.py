"""The CLI's error boundary: every error leaves a command as one line on stderr and a
documented exit code, never a traceback (set MESHCTL_DEBUG=1 to see one).

One mechanism, two tables of codes: most commands exit with the error's own code
(`meshctl.exitcodes`); `rollout` maps every error before it changed anything to its "refused"
code, which is what a CI job acts on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from meshctl import errors
from meshctl.cli import output

F = TypeVar("F", bound=Callable[..., Any])

INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""


def error_boundary(*, code_of: Callable[[errors.MeshctlError], int], failed: int,
                   passthrough: tuple[type[BaseException], ...] = ()) -> Callable[[F], F]:
    """A decorator: `code_of` gives a meshctl error's exit code, `failed` is the code of an
    unexpected exception; `passthrough` exceptions (besides typer's Exit and Abort) go on to
    the caller, e.g. click's usage errors for a command that formats them itself."""

    reraised: tuple[type[BaseException], ...] = (typer.Exit, typer.Abort, *passthrough)

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except errors.MeshctlError as exc:
                output.error(str(exc))
                raise typer.Exit(code_of(exc)) from None
            except KeyboardInterrupt:
                output.error("interrupted")
                raise typer.Exit(INTERRUPTED) from None
            except reraised:
                raise
            except Exception as exc:
                if os.environ.get("MESHCTL_DEBUG"):
                    raise
                output.error(f"internal error: {type(exc).__name__}: {exc} "
                             f"(set MESHCTL_DEBUG=1 for a traceback)")
                raise typer.Exit(failed) from None

        return wrapper  # type: ignore[return-value]

    return decorate
