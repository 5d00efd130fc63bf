"""The PNG timeline of one scenario: a column per arm (meshctl, naive), three rows on one time
axis (seconds from the start of the load, by intended start):

1. successful requests per 100 ms bin, stacked by the generation that served them;
2. failed requests per bin, stacked by outcome (and retried requests, hatched);
3. p50 and p99 latency of the successful requests per bin (log scale).

Vertical lines mark the upgrade events: the command, new generation started, new LIVE, drain
start, old generation gone (meshctl's upgrade record; the naive arm's own timings), rollbacks.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # the backend is chosen first
from matplotlib.lines import Line2D

EVENT_STYLE: dict[str, tuple[str, str, str]] = {
    # event -> (legend label, colour, line style)
    "command": ("upgrade command", "0.55", ":"),
    "new_started": ("new generation started", "tab:blue", "--"),
    "new_live": ("new generation LIVE", "tab:green", "-"),
    "recovery_started": ("recovery generation started", "tab:cyan", "--"),
    "recovery_live": ("recovery generation LIVE", "tab:olive", "-"),
    "old_restarted": ("old Envoy started again", "tab:cyan", "--"),
    "old_live": ("old Envoy LIVE again", "tab:olive", "-"),
    "drain_start": ("drain start", "tab:orange", "--"),
    "old_exited": ("old generation gone", "tab:red", "-"),
    "stop_sent": ("old generation stopped (SIGTERM)", "tab:purple", ":"),
    "rollback": ("new generation failed", "black", "-."),
    "new_failed": ("new generation failed", "black", "-."),
    "tcp_stream_cut": ("TCP stream cut", "tab:brown", "-"),
}
"""Events not listed (drain_end_*, succeeded, command_done, ...) are not drawn: they coincide
with a listed one or add nothing to the picture."""

_FAIL_COLOURS = ["#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f",
                 "#9467bd", "#17becf"]


def _epoch_colours(epochs: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab20" if len(epochs) > 10 else "tab10")
    return {e: cmap(i % cmap.N) for i, e in enumerate(epochs)}


def plot_scenario(title: str, arms: Mapping[str, Mapping[str, Any]], out: Path,
                  *, subtitle: str = "") -> Path:
    """Draw the scenario's arms (their `timeline` and `events`) to `out` (PNG)."""
    names = list(arms)
    fig, axes = plt.subplots(3, len(names), figsize=(7.5 * len(names), 8.5), sharex="col",
                             squeeze=False, gridspec_kw={"height_ratios": [3, 2, 2]})
    epochs_all: list[str] = []
    for arm in arms.values():
        for e in arm["timeline"]["ok_by_epoch"]:
            if e not in epochs_all:
                epochs_all.append(e)
    colours = _epoch_colours(epochs_all)
    outcomes_all = sorted({o for arm in arms.values()
                           for o in arm["timeline"]["failed_by_outcome"]})
    fail_colours = {o: _FAIL_COLOURS[i % len(_FAIL_COLOURS)] for i, o in enumerate(outcomes_all)}
    ok_max = fail_max = 1.0
    lat_min, lat_max = float("inf"), 0.0

    for col, name in enumerate(names):
        arm = arms[name]
        tl = arm["timeline"]
        bin_s = float(tl["bin_s"])
        xs = [i * bin_s for i in range(int(tl["bins"]))]
        ax_ok, ax_fail, ax_lat = axes[0][col], axes[1][col], axes[2][col]

        edges = [*xs, len(xs) * bin_s]
        top = _stack(ax_ok, edges, [(f"gen {e}", colours[e], c, None)
                                    for e, c in tl["ok_by_epoch"].items()])
        ok_max = max(ok_max, max(top, default=0.0))
        layers: list[tuple[str, Any, Sequence[int], str | None]] = [
            (o, fail_colours[o], c, None) for o, c in tl["failed_by_outcome"].items()]
        if any(tl["retried"]):
            layers.append(("retried (then ok)", "none", tl["retried"], "////"))
        top = _stack(ax_fail, edges, layers)
        fail_max = max(fail_max, max(top, default=0.0))

        for key in ("p50_ms", "p99_ms"):
            ys = [float("nan") if v is None else v for v in tl[key]]
            # Markers too: at a low rate most bins are empty and a line alone would not show.
            ax_lat.plot([x + bin_s / 2 for x in xs], ys, "-", marker=".", markersize=3,
                        linewidth=1.0, color="tab:blue" if key == "p50_ms" else "tab:red",
                        label=key.replace("_ms", ""))
            finite = [v for v in tl[key] if v is not None and v > 0]
            if finite:
                lat_min, lat_max = min(lat_min, *finite), max(lat_max, *finite)

        # Each arm on its own time scale: a naive storm is over in seconds, meshctl's takes a
        # minute (each upgrade waits for the old generation to drain).
        for ax in (ax_ok, ax_fail, ax_lat):
            _draw_events(ax, arm["events"])
            ax.grid(True, axis="y", linewidth=0.3)
            ax.set_xlim(0, len(xs) * bin_s)
        acc = arm["accounting"]
        ax_ok.set_title(f"{name}: {acc['requests']:,} requests, {acc['failed']:,} failed",
                        fontsize=11)
        ax_ok.set_ylabel(f"ok requests / {bin_s * 1000:.0f} ms")
        ax_fail.set_ylabel(f"failed / {bin_s * 1000:.0f} ms")
        ax_lat.set_ylabel("latency (ms)")
        if any(v for v in tl["p99_ms"]):  # none when every request failed
            ax_lat.set_yscale("log")
        ax_lat.set_xlabel("seconds from the start of the load (intended start)")
        _legend(ax_ok, max_items=12)
        if tl["failed_by_outcome"] or any(tl["retried"]):
            _legend(ax_fail)
        else:
            ax_fail.text(0.5, 0.5, "no failed request", transform=ax_fail.transAxes,
                         ha="center", va="center", fontsize=12, color="tab:green")
        ax_lat.legend(loc="upper left", fontsize=7)

    for col in range(len(names)):
        axes[0][col].set_ylim(0, ok_max * 1.15)
        axes[1][col].set_ylim(0, fail_max * 1.15)
        if lat_max > 0:
            axes[2][col].set_ylim(lat_min * 0.7, lat_max * 1.5)

    handles = {}
    for arm in arms.values():
        for event in arm["events"]:
            style = EVENT_STYLE.get(event["event"])
            if style is not None and style[0] not in handles:
                line_style: Any = style[2]
                handles[style[0]] = Line2D([], [], color=style[1], linestyle=line_style)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center",
                   ncol=min(6, len(handles)), fontsize=8, frameon=False)
    # Wrapped: a scenario's description is longer than the figure is wide.
    fig.suptitle(title + (f"\n{textwrap.fill(subtitle, 150)}" if subtitle else ""),
                 fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _stack(ax: Any, edges: Sequence[float],
           layers: Sequence[tuple[str, Any, Sequence[int], str | None]]) -> list[float]:
    """Stacked step areas, one per (label, colour, counts per bin, hatch); returns the top.
    (One polygon per layer: bars would be one patch per bin, thousands in a storm.)"""
    bottom = [0.0] * (len(edges) - 1)
    for label, colour, counts, hatch in layers:
        top = [b + c for b, c in zip(bottom, counts, strict=True)]
        ax.fill_between(edges, [*bottom, bottom[-1]], [*top, top[-1]], step="post",
                        facecolor=colour, edgecolor="0.3" if hatch else colour,
                        hatch=hatch, linewidth=0.0 if not hatch else 0.3, label=label)
        bottom = top
    return bottom


def _draw_events(ax: Any, events: Sequence[Mapping[str, Any]]) -> None:
    for event in events:
        style = EVENT_STYLE.get(event["event"])
        if style is not None:
            ax.axvline(float(event["t_s"]), color=style[1], linestyle=style[2],
                       linewidth=0.8, alpha=0.8)


def _legend(ax: Any, max_items: int = 8) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > max_items:
        keep = [*range(max_items // 2), *range(len(handles) - max_items // 2, len(handles))]
        handles = [handles[i] for i in keep]
        labels = [labels[i] for i in keep]
    ax.legend(handles, labels, loc="upper right", fontsize=7, ncol=2)
