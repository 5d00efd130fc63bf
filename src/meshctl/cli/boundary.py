"""The CLI's error boundary: every error leaves a command as one line on stderr and a
documented exit code, never a traceback (set MESHCTL_DEBUG=1 to see one).

One mechanism, two tables of codes: most commands exit with the error's own code
(`meshctl.exitcodes`); `rollout` maps every error before it changed anything to its "refused"
code, which is what a CI job acts on.

Two layers: `error_boundary` wraps each command's body (meshctl's own errors, the option
bounds of `meshctl.cli.bounds`, unexpected exceptions, a reader that went away);
`OneLineErrorsGroup` wraps the whole app, for what click raises before a command runs
(unknown option, a value that is not of the option's type): one line and exit 2 instead of
click's boxed, multi-line message.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import typer
from typer import _click as click  # typer's own (vendored) click: its errors, its Context
from typer.core import TyperGroup

from meshctl import errors
from meshctl.cli import bounds, output
from meshctl.exitcodes import ExitCode

F = TypeVar("F", bound=Callable[..., Any])

INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""
READER_GONE = 141
"""Exit code when the reader of stdout went away (`meshctl status | head -1`): 128 + SIGPIPE,
what a shell reports for a C tool killed by SIGPIPE in the same pipeline. Nothing is printed."""


def usage_line(exc: click.exceptions.UsageError, fallback_command: str = "meshctl") -> str:
    """click's usage error as one line: its message, and where to look."""
    ctx = exc.ctx
    command = ctx.command_path if ctx is not None else fallback_command
    # typer's enum conversion says "Value error, 'yaml' is not one of ...": the prefix is noise.
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    return f"{message} (see {command} --help)"


def reader_gone() -> NoReturn:
    """stdout's reader closed the pipe: exit quietly, as `cat` or `grep` would."""
    output.discard_stdout()
    raise typer.Exit(READER_GONE)


def error_boundary(*, code_of: Callable[[errors.MeshctlError], int], failed: int,
                   passthrough: tuple[type[BaseException], ...] = ()) -> Callable[[F], F]:
    """A decorator: `code_of` gives a meshctl error's exit code, `failed` is the code of an
    unexpected exception; `passthrough` exceptions (besides typer's Exit and Abort) go on to
    the caller, e.g. click's usage errors for a command that formats them itself.

    Before the body runs, every option value is checked against the `bounds.Bound` of its
    annotation (a bad one is `BadInput`, so `code_of` decides its code too)."""

    reraised: tuple[type[BaseException], ...] = (typer.Exit, typer.Abort, *passthrough)

    def decorate(func: F) -> F:
        checks = bounds.of_function(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                bounds.check(checks, kwargs)
                return func(*args, **kwargs)
            except errors.MeshctlError as exc:
                output.error(str(exc))
                raise typer.Exit(code_of(exc)) from None
            except KeyboardInterrupt:
                output.error("interrupted")
                raise typer.Exit(INTERRUPTED) from None
            except BrokenPipeError:
                reader_gone()
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


class OneLineErrorsGroup(TyperGroup):
    """The app's group: click's usage errors as one `meshctl: error:` line and exit 2
    (`--help`, and the help a bare `meshctl` prints, stay as typer renders them)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode,
                                windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            code = exc.exit_code  # the help is already printed
        except click.exceptions.UsageError as exc:
            output.error(usage_line(exc))
            code = int(ExitCode.USAGE)
        except click.exceptions.ClickException as exc:
            output.error(" ".join(exc.format_message().split()))
            code = exc.exit_code
        except typer.Abort:
            output.error("aborted")
            code = int(ExitCode.FAILED)
        except BrokenPipeError:  # --help into a closed pipe
            output.discard_stdout()
            code = READER_GONE
        sys.exit(code if isinstance(code, int) else 0)
