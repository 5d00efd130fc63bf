"""How results reach people (text) and scripts (JSON). Progress and errors go to stderr.

Results go through `echo`: a result that cannot be written (stdout closed, a full disk) is an
error of its own (`OutputLost`, exit 1), not a silent success, since a script reading it (an
injected manifest) would have lost it; a reader that went away (`| head -1`) is
`BrokenPipeError`, which the error boundary ends quietly.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import typer

from meshctl import errors


class Format(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class OutputLost(errors.MeshctlError):
    """The result could not be written to stdout (closed, no space left): exit 1."""


def error(message: str) -> None:
    typer.echo(f"meshctl: error: {message}", err=True)


def echo(text: str = "", *, nl: bool = True) -> None:
    """One piece of the result on stdout (flushed: a write error shows here, not at exit)."""
    if sys.stdout is None:  # fd 1 was closed when Python started (`>&-`)
        raise OutputLost("cannot write output: stdout is closed")
    try:
        typer.echo(text, nl=nl)
    except BrokenPipeError:
        raise
    except OSError as exc:
        discard_stdout()
        raise OutputLost(f"cannot write output: {exc.strerror or exc}") from None


def discard_stdout() -> None:
    """Point fd 1 at /dev/null: what is still buffered for a stdout that failed (a closed
    pipe, a full disk) would fail again when Python flushes it at exit, with a second
    message ("Exception ignored ...") after our one line."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def note(line: str, out: Format) -> None:
    if out is Format.JSON:
        typer.echo(json.dumps({"event": "note", "message": line}), err=True)
    else:
        typer.echo(line, err=True)


def emit_json(obj: Any) -> None:
    echo(json.dumps(obj, indent=2, sort_keys=True))


def progress_reporter(out: Format) -> Callable[[Mapping[str, Any]], None]:
    """A live line on a terminal; JSON-lines events on stderr otherwise (CI logs, pipes)."""
    tty = sys.stderr.isatty() and out is Format.TEXT
    last: dict[str, Any] = {"line": None, "t": 0.0}

    def report(upgrade: Mapping[str, Any]) -> None:
        drain = upgrade.get("drain") or {}
        phase = upgrade.get("phase")
        if tty:
            text = f"upgrade {upgrade['id']}: epoch {upgrade['from_epoch']} -> " \
                   f"{upgrade['to_epoch']}: {phase}"
            if drain:
                text += f", {drain_line(drain)}"
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
            return
        event = {"event": "upgrade_progress", "id": upgrade["id"], "phase": phase,
                 "from_epoch": upgrade["from_epoch"], "to_epoch": upgrade["to_epoch"], **drain}
        # One event per change, or per second when nothing changes.
        key = json.dumps({k: v for k, v in event.items() if k not in ("elapsed_s",
                                                                       "time_left_s")})
        now = time.monotonic()
        if key != last["line"] or now - last["t"] >= 1.0:
            last["line"], last["t"] = key, now
            typer.echo(json.dumps(event), err=True)

    return report


def drain_line(drain: Mapping[str, Any]) -> str:
    """The drain's progress in words; before the first count the connections are not known
    (the first reading waits until it can help end the window), and say so."""
    n = drain.get("connections")
    left = (f"{n} connection(s) left on the old generation" if n is not None
            else "counting the old generation's connections")
    return f"{left}, {drain.get('time_left_s', 0):.1f}s left"


def upgrade_result(record: Mapping[str, Any], out: Format) -> None:
    if sys.stderr.isatty() and out is Format.TEXT:
        sys.stderr.write("\r\033[K")
    if out is Format.JSON:
        emit_json(record)
        return
    line = (f"upgrade {record['id']}: {record['result']}: epoch {record['from_epoch']} "
            f"({record.get('from_version')}, pid {record.get('from_pid')}) -> epoch "
            f"{record['to_epoch']} ({record.get('to_version') or '?'}, pid "
            f"{record.get('to_pid')})")
    echo(line)
    if record["result"] == "in_progress":
        echo("  started; follow it with `meshctl status`")
        return
    if record.get("live_after_s") is not None:
        echo(f"  new generation LIVE after {record['live_after_s']:.2f}s; old generation "
                   f"drained in {record.get('drain_s') or 0:.2f}s (ended: "
                   f"{record.get('drain_end')}, forced closes: {record.get('forced_closes')}); "
                   f"total {record.get('total_s') or 0:.2f}s")
    gate = record.get("xds")
    if gate:
        echo(f"  xDS: {xds_line(gate.get('new'))}; gate {gate.get('state')} after "
                   f"{gate.get('checks')} check(s)" + _lost(gate.get("parity") or {}))
    if record.get("error"):
        echo(f"  reason: {record['error']}")


def xds_line(view: Mapping[str, Any] | None) -> str:
    view = view or {}
    return (f"{len(view.get('listeners') or {})} listener(s), {view.get('routes', 0)} route "
            f"config(s), {view.get('clusters', 0)} cluster(s), {view.get('endpoints', 0)} "
            f"endpoint(s)")


def _lost(parity: Mapping[str, Any]) -> str:
    lost = parity.get("missing_listeners") or []
    return f"; LISTENERS LOST (accepted): {', '.join(lost)}" if lost else ""


def status(snap: Mapping[str, Any], out: Format) -> None:
    if out is Format.JSON:
        emit_json(snap)
        return
    echo(f"supervisor pid {snap['supervisor_pid']}  phase {snap['phase']}  "
               f"base id {snap['base_id']}  state dir {snap['state_dir']}")
    rows = [["EPOCH", "ROLE", "PID", "VERSION", "CONNS", "BINARY", "CONFIG"]]
    for g in snap.get("generations", []):
        rows.append([str(g["epoch"]), g["role"], str(g["pid"]), str(g.get("version") or "?"),
                     "?" if g.get("connections") is None else str(g["connections"]),
                     g["binary"], g["config"]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    xds = snap.get("xds")
    if xds:
        cp = xds.get("control_plane")
        health = ("unknown (no admin API)" if cp is None else
                  f"{'connected' if cp.get('connected') else 'DISCONNECTED'}, last update "
                  f"{_ago(cp.get('last_update_at'))}, rejected {cp.get('lds_rejected', 0)} LDS / "
                  f"{cp.get('cds_rejected', 0)} CDS")
        echo(f"xDS: {xds_line(xds)}; control plane {health}")
    held = snap.get("held_sockets")
    if held is not None:
        echo(held_line(held))
    up = snap.get("upgrade")
    if up:
        drain = up.get("drain") or {}
        echo(f"upgrade {up['id']} in progress: epoch {up['from_epoch']} -> "
                   f"{up['to_epoch']}"
                   + (f", old generation has {drain.get('connections')} connection(s), "
                      f"{drain.get('time_left_s', 0):.1f}s left in the drain window"
                      if drain else ""))
    last = snap.get("last_upgrade")
    if last:
        echo(f"last upgrade {last['id']}: {last['result']} epoch {last['from_epoch']} "
                   f"-> {last['to_epoch']} ({last.get('from_version')} -> "
                   f"{last.get('to_version')}) in {last.get('total_s') or 0:.2f}s, drain "
                   f"ended {last.get('drain_end')}, {last.get('forced_closes', 0)} forced "
                   f"close(s)" + (f"; {last['error']}" if last.get("error") else ""))


def held_line(held: Mapping[str, Any]) -> str:
    """What a crash would do to new connections, from `status`'s held_sockets."""
    if not held.get("sockets"):
        return "held sockets: none (a crash refuses connections until the restart binds)"
    line = (f"held sockets: {held['sockets']} for {', '.join(held.get('addresses') or [])} "
            f"(a crash refuses nothing)")
    if held.get("pending"):
        line += f"; {held['pending']} waiting for the restarted generation"
    return line


def demo_report(report: dict[str, Any], out: Format) -> None:
    if out is Format.JSON:
        emit_json(report)
        return
    up = report["upgrade"]
    echo(f"requests: {report['requests']}  served: {report['ok']}  failed: "
               f"{report['failed']}  (non-2xx: {report['http_error']})")
    echo(f"served by epoch: {report['by_epoch']}")
    echo(f"upgrade: {up['result']} {up.get('from_version')} -> {up.get('to_version')}, "
               f"LIVE after {up.get('live_after_s')}s, old gone after {up.get('total_s')}s "
               f"(drain ended: {up.get('drain_end')})")


def xds_demo_report(report: dict[str, Any], out: Format) -> None:
    if out is Format.JSON:
        emit_json(report)
        return
    echo(f"requests: {report['requests']}  served: {report['ok']}  failed: "
               f"{report['failed']}  (non-2xx: {report['http_error']})")
    for n, (up, expected) in enumerate(zip(report["upgrades"], report["expected"],
                                           strict=True), start=1):
        gate = up.get("xds") or {}
        new = gate.get("new") or {}
        echo(f"upgrade {n}: {up.get('result')} (expected {expected}); "
                   f"{len(new.get('listeners') or {})} listener(s), {new.get('routes', 0)} "
                   f"route(s), {new.get('clusters', 0)} cluster(s) in the new generation"
                   + (f"; {up['error']}" if up.get("error") else ""))


def _ago(at: float | None) -> str:
    return "never" if not at else f"{max(0.0, time.time() - at):.0f}s ago"
