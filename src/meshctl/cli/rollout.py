"""`meshctl rollout` and `meshctl rollout status`: the fleet rollout's command line. Thin: it
parses options, calls `meshctl.rollout.run`, and renders progress and the summary.

Progress: a bar on a terminal; JSON lines (one event each) on stderr otherwise, or with
`--output json`. The summary goes to stdout: a table, or one JSON document.

The rollout has its own exit codes (`RolloutExit`, a CI job acts on them): 0 all upgraded,
1 some pods failed (rolled back), 2 deadline exceeded, 3 refused before starting. Usage
errors exit 3 too, as one line (click's own 2 would read as "deadline exceeded"). The
`kubernetes` client is imported only when the command runs.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from typer import _click as click  # typer's own (vendored) click: its errors, its Context
from typer.core import TyperCommand, TyperGroup

from meshctl import errors
from meshctl.cli import output
from meshctl.cli.boundary import error_boundary, usage_line
from meshctl.cli.bounds import DAY_S, Bound
from meshctl.podswap.layout import Handover
from meshctl.rollout.plan import EventPolicy, RolloutEvent, RolloutExit
from meshctl.rollout.record import PodPhase

if TYPE_CHECKING:
    from meshctl.rollout.report import RolloutReport
    from meshctl.rollout.run import StopFlag
    from meshctl.rollout.status import StatusJson

F = TypeVar("F", bound=Callable[..., Any])

_TABLE_MAX_PODS = 100
"""Past this, the text summary lists only the pods that did not end upgraded."""


def _refused_usage(exc: click.exceptions.UsageError) -> NoReturn:
    """A usage error as one line and exit 3 ("refused before starting"): click's own 2 would
    read as "deadline exceeded", and its boxed message is not one line for a CI log."""
    output.error(usage_line(exc, "meshctl rollout"))
    raise typer.Exit(int(RolloutExit.REFUSED)) from None


class _RefusingGroup(TyperGroup):
    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.UsageError as exc:
            _refused_usage(exc)


class _RefusingCommand(TyperCommand):
    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.UsageError as exc:
            _refused_usage(exc)


rollout_app = typer.Typer(cls=_RefusingGroup, add_completion=False,
                          pretty_exceptions_enable=False)

SelectorOpt = Annotated[str | None, typer.Option(
    "--selector", "-l", help="Label selector of the pods, as kubectl takes it "
                             "(app=web,tier in (front,edge),!canary).")]
NamespaceOpt = Annotated[str | None, typer.Option(
    "--namespace", "-n", help="The pods' namespace (default: the context's).")]
AllNamespacesOpt = Annotated[bool, typer.Option(
    "--all-namespaces", "-A", help="Select in every namespace.")]
OutputOpt = Annotated[output.Format, typer.Option(
    "--output", "-o", help="text (a table) or json (one document); progress as JSON lines on "
                           "stderr with json or off a terminal.")]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context.")]
KubeconfigOpt = Annotated[Path | None, typer.Option(
    "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config or the "
                         "in-cluster service account).")]


refusals = error_boundary(
    code_of=lambda exc: int(RolloutExit.FAILED if isinstance(exc, output.OutputLost)
                            else RolloutExit.REFUSED),
    failed=int(RolloutExit.FAILED), passthrough=(click.exceptions.ClickException,))
"""Errors before any change exit 3 with one line; the rollout reports the rest itself (a
summary that cannot be written is exit 1: the rollout happened)."""


@rollout_app.callback(invoke_without_command=True)
@refusals
def rollout(
    ctx: typer.Context,
    selector: SelectorOpt = None,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNamespacesOpt = False,
    image: Annotated[str | None, typer.Option("--image", help="The new proxy image.")] = None,
    max_parallel: Annotated[int, typer.Option(
        "--max-parallel", min=1, help="Pods swapped at once: the size of each batch."),
        Bound(1, 10_000, "pods")] = 10,
    canary: Annotated[int, typer.Option(
        "--canary", min=0, help="Pods upgraded first, as a batch of their own; a failure "
                                "among them stops the rollout."),
        Bound(0, 10_000, "pods")] = 1,
    pause_after_canary: Annotated[bool, typer.Option(
        "--pause-after-canary", help="Stop after the canary (exit 0); the same command run "
                                     "again continues with the rest.")] = False,
    max_failures: Annotated[int, typer.Option(
        "--max-failures", min=1, help="Start no further pod once this many failed (earlier "
                                      "runs of the same rollout included)."),
        Bound(1, 1_000_000, "pods")] = 1,
    timeout_s: Annotated[float | None, typer.Option(
        "--timeout", min=0.1, help="Deadline of the whole rollout, in seconds (default: "
                                   "none). Past it, pods not ready yet are set back; exit 2."),
        Bound(0.1, 7 * DAY_S)] = None,
    pod_timeout_s: Annotated[float, typer.Option(
        "--pod-timeout", min=0.1, help="Seconds a pod's new slot has to be started and ready "
                                       "before that pod is rolled back."),
        Bound(0.1, DAY_S)] = 300.0,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Start again the pods an earlier run of this rollout rolled "
                               "back (by default they stay failed).")] = False,
    events: Annotated[EventPolicy, typer.Option(
        "--events", help="Kubernetes Events on the pods: for every outcome (all), for the pods "
                         "that did not end upgraded (failures), or none.")
    ] = EventPolicy.FAILURES,
    force: Annotated[bool, typer.Option(
        "--force", help="Swap a pod that is the only Ready pod of its controller although no "
                        "PodDisruptionBudget covers it (skipped otherwise). Budgets are "
                        "always respected.")] = False,
    handover: Annotated[Handover, typer.Option(
        "--handover", help="two-slot (the standby slot restarts on the new image, then the "
                           "old slot on the standby image; budgets respected) or ephemeral "
                           "(each pod's new image in a new ephemeral container: nothing "
                           "restarts, the pods stay Ready, no budget is needed; two ephemeral "
                           "containers per upgrade stay in each pod's spec).")
    ] = Handover.TWO_SLOT,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan (batches, pods, patches); change nothing.")] = False,
    out: OutputOpt = output.Format.TEXT,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Upgrade the proxy of every pod of a selector, in place, in batches.

    A canary first, then --max-parallel pods at a time.
    Each failed pod is rolled back: its old slot never stopped serving.
    Pods that are not Ready or lack the two proxy slots are skipped and reported.
    PodDisruptionBudgets are respected, whatever --max-parallel says.
    A pod whose budget allows no disruption waits, within --timeout (or --pod-timeout).
    With --handover ephemeral nothing restarts and no budget is needed.
    A pod in flight at --timeout or a signal is then not set back: the same command follows it.

    The state is kept in the pods (annotation meshctl.io/rollout).
    Run the same command again to continue after a pause, --timeout, a signal or a crash.
    Pods already on the image are done; pods left mid-swap are followed to the end.
    `meshctl rollout status` shows it.

    \b
    Exit codes:
      0    every selected pod runs the image (skipped pods are listed),
           or paused after the canary, or a dry run
      1    some pods failed and were rolled back, or the API failed midway
      2    --timeout passed; pods not ready by then were set back
           (run the same command again to continue)
      3    refused before starting, nothing changed: bad selector or image,
           no permission, no pod matched, no kubeconfig, API unreachable,
           bad usage
      130  interrupted (SIGINT/SIGTERM); pods not ready yet were set back
    """
    if ctx.invoked_subcommand is not None:
        return
    if selector is None or image is None:
        raise errors.BadInput("meshctl rollout needs --selector LABELS and --image REF "
                              "(see --help)")
    if all_namespaces and namespace is not None:
        raise errors.BadInput("give either --namespace or --all-namespaces, not both")
    if force and handover is Handover.EPHEMERAL:
        raise errors.BadInput("--force does not apply with --handover ephemeral: it needs no "
                              "disruption budget (the pods stay Ready)")
    from meshctl import kube  # noqa: PLC0415
    from meshctl.podswap import reference  # noqa: PLC0415
    from meshctl.rollout import plan as rollout_plan  # noqa: PLC0415
    from meshctl.rollout import selector as selectors  # noqa: PLC0415
    from meshctl.rollout.run import StopFlag, run_rollout  # noqa: PLC0415

    parsed = selectors.parse(selector)
    reference.parse(image)  # refused here, before any connection
    settings = rollout_plan.RolloutSettings(timeout_s=timeout_s, pod_timeout_s=pod_timeout_s,
                                            events=events, force=force)
    stop = StopFlag()
    with kube.connect(kubeconfig=kubeconfig or _env_path("KUBECONFIG"),
                      context=context) as connection:
        scope = None if all_namespaces else (namespace or connection.default_namespace)
        spec = rollout_plan.RolloutSpec(
            image=image, selector=parsed, namespace=scope, max_parallel=max_parallel,
            canary=canary, max_failures=max_failures, pause_after_canary=pause_after_canary,
            retry_failed=retry_failed, handover=handover)
        # The ~10^5 objects of the imports (the client's models) live as long as the process:
        # out of the collector's way, so that a full collection walks only the rollout's own.
        gc.freeze()
        # The rollout allocates a burst of short-lived acyclic dicts per watch event and per
        # response (JSON): the default threshold (700) ran a young collection every few events.
        gc.set_threshold(50_000, 20, 20)
        with _progress(out) as emit, _signals_recorded(stop):
            report = run_rollout(connection, spec, settings, dry_run=dry_run, emit=emit, stop=stop)
    _print_report(report, out)
    raise typer.Exit(int(report.exit_code))


@rollout_app.command("status", cls=_RefusingCommand)
@refusals
def status(
    selector: SelectorOpt = None,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNamespacesOpt = False,
    out: OutputOpt = output.Format.TEXT,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Show the rollouts recorded in the pods (default: every pod of the namespace) and which
    image each pod's active slot runs. Exit 0, or 3 when refused."""
    if all_namespaces and namespace is not None:
        raise errors.BadInput("give either --namespace or --all-namespaces, not both")
    from meshctl import kube  # noqa: PLC0415
    from meshctl.rollout import selector as selectors  # noqa: PLC0415
    from meshctl.rollout.status import rollout_status  # noqa: PLC0415

    parsed = selectors.parse(selector) if selector is not None else None
    with kube.connect(kubeconfig=kubeconfig or _env_path("KUBECONFIG"),
                      context=context) as connection:
        scope = None if all_namespaces else (namespace or connection.default_namespace)
        summary = rollout_status(connection, scope, parsed)
    if out is output.Format.JSON:
        output.emit_json(summary)
        return
    _print_status(summary)


def register(app: typer.Typer) -> None:
    """Add `meshctl rollout` (and `rollout status`) to the `meshctl` app."""
    app.add_typer(rollout_app, name="rollout")


# ----------------------------------------------------------------- progress


@contextmanager
def _progress(out: output.Format) -> Iterator[Callable[[dict[str, Any]], None]]:
    if out is output.Format.TEXT and sys.stderr.isatty():
        bar = _Bar()
        try:
            yield bar.event
        finally:
            bar.close()
        return

    def json_line(event: dict[str, Any]) -> None:
        typer.echo(json.dumps(event, separators=(",", ":")), err=True)

    yield json_line


class _Bar:
    """A rich progress bar on stderr; failures and skips printed above it."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console  # noqa: PLC0415  (only on a terminal)
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=console or Console(stderr=True), transient=True)
        self.task: Any = None
        self.counts = {"upgraded": 0, "failed": 0}
        self.batch = ""

    def event(self, event: dict[str, Any]) -> None:
        try:
            kind = RolloutEvent(str(event.get("event")))
        except ValueError:
            return  # an event this CLI does not know of: nothing to draw
        where = f"{event.get('namespace')}/{event.get('pod')}"
        if kind is RolloutEvent.ROLLOUT_STARTED:
            self.progress.start()
            self.task = self.progress.add_task("starting", total=event["to_upgrade"] or 1)
        elif kind is RolloutEvent.POD_STARTED and event.get("batch"):
            self.batch = f"batch {event['batch']}/{event.get('of', '?')}"
        elif kind is RolloutEvent.POD_UPGRADED and not event.get("already"):
            self.counts["upgraded"] += 1
            self._advance()
        elif kind in (RolloutEvent.POD_ROLLED_BACK, RolloutEvent.POD_FAILED):
            if not event.get("interrupted"):
                self.counts["failed"] += 1
            self._advance()
            self.progress.console.print(f"{where}: {kind.removeprefix('pod_')}: "
                                        f"{event.get('reason')}", markup=False)
        elif kind is RolloutEvent.POD_SKIPPED:
            if event.get("batch"):
                self._advance()
            self.progress.console.print(f"{where}: skipped: {event.get('reason')}",
                                        markup=False)
        elif kind is RolloutEvent.BUDGET_WAIT:
            self.progress.console.print(f"{where}: held: {event.get('reason')}", markup=False)
        elif kind is RolloutEvent.NOTE:
            self.progress.console.print(str(event.get("message")), markup=False)
        if self.task is not None:
            self.progress.update(self.task, description=(
                f"{self.batch or 'rollout'}: {self.counts['upgraded']} upgraded, "
                f"{self.counts['failed']} failed"))

    def _advance(self) -> None:
        if self.task is not None:
            self.progress.advance(self.task)

    def close(self) -> None:
        self.progress.stop()


@contextmanager
def _signals_recorded(stop: StopFlag) -> Iterator[None]:
    """SIGINT and SIGTERM only set the flag; the rollout sets back the pods in flight and
    returns. Restored afterwards."""
    def record(signum: int, _frame: FrameType | None) -> None:
        stop.request(signum)

    try:
        previous = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ----------------------------------------------------------------- the summary


def _print_report(report: RolloutReport, out: output.Format) -> None:
    record = report.to_dict()
    if out is output.Format.JSON:
        output.emit_json(record)
        return
    spec = record["rollout"]
    scope = spec["namespace"] or "all namespaces"
    output.echo(f"rollout {spec['id']} ({spec['selector']} in {scope} -> {spec['image']}): "
               f"{record['result']} (exit {record['exit_code']})")
    output.echo(f"  {record['message']}")
    if record.get("plan") is not None:
        _print_plan(record["plan"])
        return
    pods = record["pods"]
    upgraded = PodPhase.UPGRADED.value
    shown = [p for p in pods if len(pods) <= _TABLE_MAX_PODS or p["result"] != upgraded]
    rows = [["POD", "RESULT", "BATCH", "SLOTS", "TIME", "REQUESTS", "DETAIL"]]
    for p in shown:
        slots = f"{p['from_slot']}->{p['to_slot']}" if p.get("to_slot") else "-"
        batch = "-" if p["batch"] is None else f"{p['batch']}{' canary' if p['canary'] else ''}"
        took = "-" if p["duration_s"] is None else f"{p['duration_s']:.2f}s"
        detail = "" if p["result"] == upgraded else (p["detail"] or "")
        rows.append([f"{p['namespace']}/{p['pod']}", p["result"], batch, slots, took,
                     str(p["api_requests"]), detail])
    _table(rows)
    if len(shown) < len(pods):
        output.echo(f"  ({len(pods) - len(shown)} upgraded pods not listed; --output json "
                   f"lists every pod)")
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in record["counts"].items() if v)
    requests = record["api_requests"]
    per_pod = "" if requests["per_pod"] is None else f", {requests['per_pod']} per pod started"
    output.echo(f"{counts}; API requests {requests['total']}{per_pod} (list and watch "
               f"{requests['list_and_watch']}); {record['elapsed_s']:.1f}s")
    for budget in record.get("budgets") or []:
        output.echo(f"PodDisruptionBudget {budget['namespace']}/{budget['name']}: allowed "
                   f"{budget['allowed_at_start']} at the start; {budget['waits']} pod(s) held; "
                   f"at most {budget['max_mid_swap']} of its pods mid-swap at once")


def _print_plan(plan: dict[str, Any]) -> None:
    pods = {f"{p['namespace']}/{p['pod']}": p for p in plan["pods"]}
    for batch in plan["batches"]:
        output.echo(f"batch {batch['index']} ({batch['kind']}): {len(batch['pods'])} pod(s)")
        for name in batch["pods"]:
            p = pods[name]
            output.echo(f"  {name}: slot {p['from_slot']} ({p['from_image']}) -> slot "
                       f"{p['to_slot']} ({p['to_image']})")
            for step, patch in p["patches"].items():
                output.echo(f"    {step}: {json.dumps(patch, separators=(',', ':'))}")
    output.echo(f"  ({plan['retire_guard']})")


def _print_status(summary: StatusJson) -> None:
    scope = summary["namespace"] or "all namespaces"
    images = ", ".join(f"{image} {n}" for image, n in summary["active_images"].items())
    output.echo(f"{summary['pods']} pod(s) in {scope}"
               + (f" matching {summary['selector']}" if summary["selector"] else "")
               + f"; {summary['pods_with_slots']} with proxy slots; active images: "
               + (images or "none"))
    if not summary["rollouts"]:
        output.echo("no rollout recorded in these pods")
    for entry in summary["rollouts"]:
        states = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in entry["states"].items())
        output.echo(f"rollout {entry['id']} -> {entry['image']}: {states}; "
                   f"{entry['pods_on_image']} on the image, {entry['pods_not_on_image']} not; "
                   f"last change {entry['last_change']}")
        output.echo(f"  {entry['summary']}")
        for p in entry["pods"]:
            if p["state"] != PodPhase.UPGRADED.value:
                output.echo(f"  {p['namespace']}/{p['pod']}: {p['state']}"
                           + (f" ({p['reason']})" if p.get("reason") else ""))


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        output.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    # KUBECONFIG may list several files; the client merges only when left to find it itself.
    if not value or os.pathsep in value:
        return None
    return Path(value)
