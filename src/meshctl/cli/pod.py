"""The pod commands: `meshctl inject`, `meshctl standby`, and the pod mode of `meshctl upgrade`
(`--pod NAME`, called from `meshctl.cli.app.upgrade`). Thin, like the rest of the CLI.

The `kubernetes` client is imported only when a command needs it, so that `meshctl status`
and the supervisor stay fast to start.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from meshctl import errors
from meshctl.cli import output
from meshctl.cli.bounds import DAY_S, Bound
from meshctl.podswap import layout
from meshctl.podswap.layout import Handover

Command = Callable[..., Any]


class SlotName(enum.StrEnum):
    """A pod's regular proxy slot (`meshctl.podswap.layout.SLOTS`), as `standby --slot`
    takes it (an ephemeral slot never stands by)."""

    A = "a"
    B = "b"


HANDOVER_HELP = ("Pod mode: two-slot (default: the standby slot restarts on the new image, "
                 "then the old slot on the standby image) or ephemeral (the new image starts in "
                 "a new ephemeral container: no restart, the pod stays Ready; the pod spec "
                 "keeps two ephemeral containers per upgrade until it is recreated).")


def check_slot(value: str | None) -> str | None:
    """`--slot` of run, upgrade, status, stop: a, b, or an ephemeral slot e<N>; anything else
    is a usage error (exit 2), as a bad choice is."""
    from meshctl.manager.pod import SLOT_NAMES, is_slot  # noqa: PLC0415  (keeps --help fast)

    if value is not None and not is_slot(value):
        raise typer.BadParameter(f"must be {SLOT_NAMES}, not {value!r}")
    return value


def inject(
    filename: Annotated[str, typer.Option(
        "--filename", "-f", help="The manifest (YAML, several documents allowed); - for stdin.")],
    image: Annotated[str, typer.Option(
        "--image", help="The proxy image (ENTRYPOINT `meshctl run`) of the active slot a.")],
    standby_image: Annotated[str, typer.Option(
        "--standby-image", help="The standby image (ENTRYPOINT `meshctl standby`) of slot b.")
    ] = layout.DEFAULT_STANDBY_IMAGE,
    native_sidecars: Annotated[bool, typer.Option(
        "--native-sidecars", help="Slots as native sidecars (initContainers with "
                                  "restartPolicy: Always; Kubernetes >= 1.29).")] = False,
    config_map: Annotated[str | None, typer.Option(
        "--config-map", help="ConfigMap with envoy.yaml, mounted at /etc/meshctl (default: "
                             "the proxy image's own /etc/meshctl/envoy.yaml).")] = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Re-inject objects that already have the slots (default: refuse "
                          "them).")] = False,
) -> None:
    """Add the two proxy slots to Pods, Deployments, StatefulSets and DaemonSets.

    Prints the result on stdout (like `istioctl kube-inject`); other documents pass through
    unchanged, and an object that already has the slots is refused unless --replace.

    The whole manifest is held in memory: a List of 10,000 pods takes ~25 s and ~0.9 GB."""
    from meshctl.podswap.inject import InjectOptions, inject_manifest  # noqa: PLC0415

    text = _read_manifest(filename)
    result = inject_manifest(
        text, InjectOptions(image=image, standby_image=standby_image,
                            native_sidecars=native_sidecars, config_map=config_map,
                            replace=replace),
        source="<stdin>" if filename == "-" else filename)
    for note in result.notes:
        typer.echo(f"meshctl inject: {note}", err=True)
    output.echo(result.text, nl=False)


def standby(
    ctx: typer.Context,
    slot: Annotated[SlotName | None, typer.Option("--slot", help="The slot (a or b), for logs.")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help="Accepted for the slot contract; a standby slot keeps no state.")
    ] = None,
    health: Annotated[str, typer.Option(
        "--health-address", envvar="MESHCTL_HEALTH_ADDRESS",
        help="HOST:PORT of /healthz/ready (always 200) and /healthz/live; `off` disables it.")
    ] = "127.0.0.1:15021",
) -> None:
    """Stand by in a proxy slot: serve the health port, exit 0 on SIGTERM.

    The standby image's ENTRYPOINT; any other argument (those of `meshctl run`) is ignored."""
    from meshctl.manager.runner import parse_health_address  # noqa: PLC0415
    from meshctl.podswap.standby import run_standby  # noqa: PLC0415

    del ctx, state_dir  # the slot contract passes them; a standby slot has no use for them
    code = run_standby(slot, parse_health_address(health),
                       ready_line=lambda line: typer.echo(line, err=True))
    raise typer.Exit(int(code))


def pod_check(
    slot: Annotated[str, typer.Option(
        "--slot", callback=check_slot, help="The slot whose generation must be LIVE (e<N>).")],
    state_dir: Annotated[Path, typer.Option(
        "--state-dir", readable=False, help="The pod dir the slots share (the emptyDir).")
    ] = Path(layout.STATE_DIR),
    timeout_s: Annotated[float, typer.Option(
        "--timeout", help="Seconds to wait for a verdict; past it, exit 10."),
        Bound(0.1, DAY_S)] = 120.0,
    termination_log: Annotated[Path, typer.Option(
        "--termination-log", readable=False,
        help="Where the verdict line goes too, if the file exists (the kubelet's "
             "terminationMessagePath).")] = Path("/dev/termination-log"),
) -> None:
    """Exit 0 once SLOT's generation is LIVE and every other slot's has exited; 8 when it
    failed (the previous generation keeps serving); 10 at --timeout. One line says why.

    Run by `meshctl upgrade --pod --handover ephemeral` in a short-lived ephemeral container:
    the kubelet records its exit code, which the CLI reads from the pod's status."""
    from meshctl.manager.podcheck import Verdict, wait_verdict  # noqa: PLC0415

    judgement = wait_verdict(state_dir, str(slot), timeout_s)
    line = f"{judgement.verdict.value}: {judgement.detail}"
    if termination_log.is_file():  # only where the kubelet made it: never create it
        with contextlib.suppress(OSError):
            termination_log.write_text(line[:4096])
    typer.echo(f"meshctl pod-check: {line}", err=judgement.verdict is not Verdict.DONE)
    raise typer.Exit(int(judgement.exit_code))


def upgrade_pod(*, pod: str | None, namespace: str | None, image: str | None,
                context: str | None, kubeconfig: Path | None, dry_run: bool, timeout_s: float,
                out: output.Format, envoy: str | None = None,
                config: Path | None = None, force: bool = False,
                handover: Handover = Handover.TWO_SLOT, prepull: bool = False) -> None:
    """`meshctl upgrade --pod NAME --image REF`: swap the proxy image inside a running pod,
    once its disruption budgets allow it (a dry run does not wait for them)."""
    if pod is None or image is None:
        raise errors.BadInput("the pod mode of upgrade needs both --pod NAME and --image REF")
    if envoy is not None or config is not None:
        raise errors.BadInput("--envoy and --config do not apply with --pod: the image "
                              "brings both")
    if timeout_s <= 0:
        raise errors.BadInput("--timeout must be positive")
    from meshctl import kube  # noqa: PLC0415
    from meshctl.podswap import reference, swap  # noqa: PLC0415

    reference.parse(image)
    if handover is Handover.EPHEMERAL:
        if prepull:
            raise errors.BadInput("--prepull applies to the two-slot handover: the ephemeral "
                                  "one pulls the image in its own container, which no "
                                  "readiness rule counts")
        if force:
            raise errors.BadInput("--force does not apply with --handover ephemeral: it "
                                  "consults no disruption budget (the pod stays Ready)")
        from meshctl.podswap import ephemeral_swap  # noqa: PLC0415

        with kube.connect(kubeconfig=kubeconfig or _env_path("KUBECONFIG"),
                          context=context) as api:
            result = ephemeral_swap.upgrade_pod_ephemeral(
                api, namespace or api.default_namespace, pod, image,
                settings=swap.SwapSettings(timeout_s=timeout_s), dry_run=dry_run,
                report=lambda line: output.note(line, out))
        _print_result(result.to_dict(), out)
        raise typer.Exit(int(result.exit_code))
    with kube.connect(kubeconfig=kubeconfig or _env_path("KUBECONFIG"), context=context) as api:
        result = swap.upgrade_pod(
            api, namespace or api.default_namespace, pod, image,
            settings=swap.SwapSettings(timeout_s=timeout_s, prepull=prepull), dry_run=dry_run,
            report=lambda line: output.note(line, out), force=force)
    record = result.to_dict()
    _print_result(record, out)
    raise typer.Exit(int(result.exit_code))


def register(app: typer.Typer, cli_errors: Callable[[Command], Command]) -> None:
    """Add the pod commands to the `meshctl` app, each inside the app's error boundary."""
    app.command(name="inject")(cli_errors(inject))
    app.command(name="pod-check")(cli_errors(pod_check))
    app.command(name="standby", context_settings={
        "allow_extra_args": True, "ignore_unknown_options": True})(cli_errors(standby))


def _print_result(record: dict[str, Any], out: output.Format) -> None:
    if out is output.Format.JSON:
        output.emit_json(record)
        return
    from meshctl.podswap.swap import SwapEnd  # noqa: PLC0415  (loaded by the swap already)

    where = f"pod {record['namespace']}/{record['pod']}"
    end = SwapEnd(record["result"])
    if end is SwapEnd.DRY_RUN:
        if str(record["new_slot"]).startswith("e"):
            output.echo(f"{where}: dry run: would start {record['to_image']} in ephemeral "
                        f"slot {record['new_slot']}, handed over from slot "
                        f"{record['old_slot']} ({record['from_image']})")
        else:
            output.echo(f"{where}: dry run: would upgrade slot {record['new_slot']} to "
                        f"{record['to_image']}, then return slot {record['old_slot']} "
                        f"({record['from_image']}) to standby")
        output.echo(json.dumps({"plan": record.get("plan"), "patches": record.get("patches")},
                              indent=2, sort_keys=True))
        return
    line = f"{where}: {record['result']}: {record['from_image']} -> {record['image']}"
    if record.get("new_slot") and end is not SwapEnd.UNCHANGED:
        line += f" (slot {record['old_slot']} -> slot {record['new_slot']})"
    output.echo(line + f"; {record['api_requests']} API requests")
    window = record.get("not_ready")
    if window:
        output.echo(f"  pod NotReady {window['not_ready_s']:.2f}s in {window['ready_flips']} "
                    f"flip(s) (its Ready condition, as the API server holds it)")
    if record.get("error"):
        output.echo(f"  reason: {record['error']}")


def _read_manifest(filename: str) -> str:
    if filename == "-":
        if sys.stdin is None:  # fd 0 was closed when Python started (`<&-`)
            raise errors.BadInput("cannot read the manifest from stdin: stdin is closed")
        try:
            raw = getattr(sys.stdin, "buffer", None)  # bytes: a manifest is UTF-8, whatever
            return raw.read().decode("utf-8") if raw is not None else sys.stdin.read()
        except (OSError, UnicodeDecodeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise errors.BadInput(f"cannot read the manifest from stdin: {detail}") from exc
    try:
        return Path(filename).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise errors.BadInput(f"cannot read {filename}: {detail}") from exc


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    # KUBECONFIG may list several files; the client merges only when left to find it itself.
    if not value or os.pathsep in value:
        return None
    return Path(value)
