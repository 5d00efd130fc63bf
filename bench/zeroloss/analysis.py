"""From the attempts of one arm to its result: the accounting, latency in the windows before,
during and after the upgrades, the 100 ms timeline, the events on the same time axis. Pure: no
I/O, so that the report can be rebuilt from the JSON and the logic is unit-tested.

Time axis: seconds from the start of the arm's load. A request belongs to the bin and window
of its intended start (open loop: when it was due), so a stall shows where it began.

Windows, for an arm with upgrades:
- before: from `warmup_s` to the first upgrade command;
- during: from the first upgrade command (the operator runs it; meshctl's pre-flight checks
  included) to the end of the last upgrade (meshctl: the old generation gone, or the rollback
  done; naive: the new, or the restarted old, Envoy LIVE);
- handover: the same, but from the moment the upgrade was requested (the supervisor was asked;
  the naive arm's SIGTERM);
- after: from the end of the last upgrade to the end of the load;
- control: a window as long as `during`, starting `CONTROL_GAP_S` after it ends, with no
  upgrade in it (where the load lasts that long: scenarios 1 and 4): the ratio of its p99 to
  the p99 before is what this machine's own noise does to a window that long (the `null`
  ratio beside the upgrade's). A verdict whose control is much calmer than `before` is not
  counted as met: its `before` caught a burst of noise, and the ratio understates the cost.
Latency percentiles are over the requests that succeeded; the failures are counted beside them.

Rounds (scenario 1): the same upgrade repeated in fresh arms; `pool()` takes every round's
successful latencies per window together, so that one burst of the machine's noise in one
2-second window does not decide the verdict (see docs/latency.md for the spread of single
windows).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zeroloss import records
from zeroloss.records import Request

BIN_S = 0.1
SUSTAINED_QUEUE_P99_S = 0.05
"""An open-loop rate counts as sustained when 99 % of the requests waited less than this in the
client for a free lane (and none was left unsent). Beyond it the machine did not keep up: the
queue in the client, not the proxy, makes the latency, and p99 ratios mean little."""
_END_EVENTS_SKIP = frozenset({"command_done"})
CONTROL_GAP_S = 2.0


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 3)


def latency_summary(requests: Iterable[Request]) -> dict[str, Any]:
    reqs = list(requests)
    lat = sorted(r.latency_s for r in reqs if r.ok)
    return {"requests": len(reqs), "failed": sum(1 for r in reqs if not r.ok),
            "p50_ms": _ms(percentile(lat, 50)), "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(lat[-1] if lat else None)}


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float

    def contains(self, t: float) -> bool:
        return self.start_s <= t < self.end_s

    def to_json(self) -> list[float]:
        return [round(self.start_s, 3), round(self.end_s, 3)]


def upgrade_spans(upgrades: Sequence[Mapping[str, Any]], load_start_wall: float
                  ) -> list[tuple[Span, Span]]:
    """Per upgrade (UpgradeResult JSON): (command -> end, requested -> end), on the load's
    time axis."""
    out = []
    for up in upgrades:
        offset = float(up["requested_wall"]) - load_start_wall
        times = {e["event"]: float(e["t_s"]) for e in up["events"]}
        ends = [float(e["t_s"]) for e in up["events"] if e["event"] not in _END_EVENTS_SKIP]
        end = offset + (max(ends) if ends else 0.0)
        command = offset + min(times.get("command", 0.0), 0.0)
        out.append((Span(command, end), Span(offset, end)))
    return out


@dataclass(frozen=True)
class Windows:
    before: Span
    during: Span | None
    handover: Span | None
    after: Span | None

    def to_json(self) -> dict[str, list[float] | None]:
        return {name: None if span is None else span.to_json()
                for name, span in (("before", self.before), ("during", self.during),
                                   ("handover", self.handover), ("after", self.after))}


def windows(spans: Sequence[tuple[Span, Span]], duration_s: float, warmup_s: float) -> Windows:
    if not spans:
        return Windows(Span(warmup_s, duration_s), None, None, None)
    first = min(s[0].start_s for s in spans)
    first_request = min(s[1].start_s for s in spans)
    last = max(s[0].end_s for s in spans)
    return Windows(before=Span(min(warmup_s, first), first), during=Span(first, last),
                   handover=Span(first_request, last), after=Span(last, duration_s))


def relative_events(upgrades: Sequence[Mapping[str, Any]], load_start_wall: float
                    ) -> list[dict[str, Any]]:
    out = []
    for i, up in enumerate(upgrades):
        offset = float(up["requested_wall"]) - load_start_wall
        out += [{"t_s": round(offset + float(e["t_s"]), 4), "event": e["event"], "upgrade": i}
                for e in up["events"]]
    out.sort(key=lambda e: e["t_s"])
    return out


def timeline(requests: Sequence[Request], load_start: float, duration_s: float,
             bin_s: float = BIN_S) -> dict[str, Any]:
    """Per bin of intended start: successful requests by serving generation, failed requests
    by outcome, retried requests, and p50/p99 latency of the successful ones."""
    n = max(1, math.ceil(duration_s / bin_s))
    ok_by_epoch: dict[str, list[int]] = {}
    failed: dict[str, list[int]] = {}
    retried = [0] * n
    lat: list[list[float]] = [[] for _ in range(n)]
    for r in requests:
        i = min(n - 1, max(0, int((r.intended_s - load_start) / bin_s)))
        if r.ok:
            ok_by_epoch.setdefault(r.epoch or "?", [0] * n)[i] += 1
            lat[i].append(r.latency_s)
        else:
            failed.setdefault(r.outcome, [0] * n)[i] += 1
        if r.retried:
            retried[i] += 1
    p50: list[float | None] = []
    p99: list[float | None] = []
    for values in lat:
        values.sort()
        p50.append(_ms(percentile(values, 50)))
        p99.append(_ms(percentile(values, 99)))
    return {"bin_s": bin_s, "bins": n,
            "ok_by_epoch": {e: ok_by_epoch[e] for e in records.sorted_epochs(ok_by_epoch)},
            "failed_by_outcome": dict(sorted(failed.items())), "retried": retried,
            "p50_ms": p50, "p99_ms": p99}


def ratio(after: float | None, before: float | None) -> float | None:
    if after is None or before is None or before <= 0:
        return None
    return round(after / before, 3)


def summarize_arm(name: str, attempts: Sequence[records.Attempt], *, load_start: float,
                  load_start_wall: float, duration_s: float,
                  upgrades: Sequence[Mapping[str, Any]], warmup_s: float = 1.0,
                  bin_s: float = BIN_S, samples: bool = False) -> dict[str, Any]:
    """The result of one arm: accounting, windows, latency per window, timeline, events.
    `samples`: also every successful latency (ms) of the before, during and control windows,
    under `samples`, for `pool()` (the caller drops them before writing the result)."""
    reqs = records.fold(attempts)
    acc = records.account(reqs, attempts=len(attempts))
    spans = upgrade_spans(upgrades, load_start_wall)
    win = windows(spans, duration_s, warmup_s)

    def within(span: Span | None) -> list[Request]:
        if span is None:
            return []
        return [r for r in reqs if span.contains(r.intended_s - load_start)]

    control = (None if win.during is None else
               Span(win.during.end_s + CONTROL_GAP_S,
                    win.during.end_s + CONTROL_GAP_S + win.during.end_s - win.during.start_s))
    if control is not None and control.end_s > duration_s:
        control = None
    latency = {"all": latency_summary(reqs), "before": latency_summary(within(win.before)),
               "during": latency_summary(within(win.during)),
               "handover": latency_summary(within(win.handover)),
               "after": latency_summary(within(win.after)),
               "control": latency_summary(within(control))}
    by_mode = {mode: latency_summary(r for r in reqs if r.mode == mode)
               for mode in sorted({r.mode for r in reqs})}
    waits = sorted(a.start_s - a.intended_s for a in attempts
                   if a.attempt == 0 and a.outcome != records.NOT_SENT)
    not_sent = acc.outcomes.get(records.NOT_SENT, 0)
    wait_p99 = percentile(waits, 99) or 0.0
    client_queue = {"p50_ms": _ms(percentile(waits, 50)), "p99_ms": _ms(wait_p99),
                    "max_ms": _ms(waits[-1] if waits else None), "not_sent": not_sent,
                    "sustained": wait_p99 < SUSTAINED_QUEUE_P99_S and not_sent == 0}
    failures = [{"t_s": round(r.intended_s - load_start, 4), "mode": r.mode,
                 "outcome": r.outcome, "latency_ms": round(r.latency_s * 1000, 3)}
                for r in records.iter_failures(reqs)]
    out = {
        "arm": name,
        "accounting": acc.to_json(),
        "rate_achieved": round(acc.requests / duration_s, 1) if duration_s else None,
        "windows": win.to_json(),
        "latency": latency,
        "latency_by_mode": by_mode,
        "client_queue": client_queue,
        "p99_ratio": ratio(latency["during"]["p99_ms"], latency["before"]["p99_ms"]),
        "p99_ratio_handover": ratio(latency["handover"]["p99_ms"],
                                    latency["before"]["p99_ms"]),
        "p99_ratio_control": ratio(latency["control"]["p99_ms"],
                                   latency["before"]["p99_ms"]),
        "control_window": None if control is None else control.to_json(),
        "upgrades": list(upgrades),
        "events": relative_events(upgrades, load_start_wall),
        "failures_first": failures[:25],
        "timeline": timeline(reqs, load_start, duration_s, bin_s),
    }
    if samples:
        out["samples"] = {name: [round(r.latency_s * 1000.0, 3) for r in within(span) if r.ok]
                          for name, span in (("before", win.before), ("during", win.during),
                                             ("control", control))}
    return out


def pool(arms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One arm's rounds together (each a `summarize_arm(samples=True)` result): requests and
    failures summed, p99 of every round's before / during / control latencies taken together,
    and each round's own ratio beside it."""
    merged: dict[str, list[float]] = {"before": [], "during": [], "control": []}
    for arm in arms:
        for name, values in arm["samples"].items():
            merged[name] += values
    p99 = {name: percentile(sorted(values), 99) for name, values in merged.items()}
    ratios = [arm.get("p99_ratio") for arm in arms]
    known = sorted(r for r in ratios if r is not None)
    return {
        "rounds": len(arms),
        "requests": sum(arm["accounting"]["requests"] for arm in arms),
        "failed": sum(arm["accounting"]["failed"] for arm in arms),
        "p99_ms": {name: None if v is None else round(v, 3) for name, v in p99.items()},
        "p99_ratio": ratio(p99["during"], p99["before"]),
        "p99_ratio_control": ratio(p99["control"], p99["before"]),
        "round_ratios": ratios,
        "round_ratio_median": round(known[len(known) // 2], 3) if known else None,
        "round_ratios_control": [arm.get("p99_ratio_control") for arm in arms],
    }


# --------------------------------------------------------------------------- targets

FAILURE_TARGET_SCENARIOS = ("one-upgrade", "storm", "failed-upgrades")
P99_RATIO_MAX = 1.5
CPU_PCT_MAX = 1.0
RSS_MB_MAX = 60.0


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def targets(scenarios: Mapping[str, Mapping[str, Any]],
            supervisor: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's targets, each measured in this run: met or not, and the figure."""
    out: list[dict[str, Any]] = []
    for key, scen in scenarios.items():
        arms = scen["arms"]
        mesh, naive = arms.get("meshctl"), arms.get("naive")
        if mesh is None:
            continue
        pooled = scen.get("pooled") or {}
        if key in FAILURE_TARGET_SCENARIOS:
            counted = pooled.get("meshctl") or mesh["accounting"]
            other = pooled.get("naive") or (naive["accounting"] if naive else None)
            failed = counted["failed"]
            rounds = f" in {pooled['meshctl']['rounds']} rounds" if pooled else ""
            out.append({
                "target": f"{key}: 0 failed requests with meshctl",
                "value": f"{failed} of {counted['requests']:,}{rounds}"
                         + (f" (naive: {other['failed']:,} of {other['requests']:,})"
                            if other else ""),
                "met": failed == 0})
        queue = mesh.get("client_queue") or {}
        note = ("" if queue.get("sustained", True) else
                f"; the machine did not sustain the rate (client queue p99 "
                f"{queue.get('p99_ms') or 0:,.0f} ms)")
        if pooled:
            pm = pooled["meshctl"]
            r = pm["p99_ratio"]
            control = pm["p99_ratio_control"]
            value = ("-" if r is None else
                     f"{r:.2f}x over {pm['rounds']} rounds ({pm['p99_ms']['during']:.1f} ms / "
                     f"{pm['p99_ms']['before']:.1f} ms); rounds "
                     + ", ".join("-" if x is None else f"{x:.2f}x" for x in pm["round_ratios"]))
        else:
            r = mesh.get("p99_ratio")
            control = mesh.get("p99_ratio_control")
            before = mesh["latency"]["before"]["p99_ms"]
            during = mesh["latency"]["during"]["p99_ms"]
            value = "-" if r is None else f"{r:.2f}x ({during:.1f} ms / {before:.1f} ms)"
        # The ratio means something only if `before` is the machine's usual state: the
        # control window (no upgrade in it), where there is one, must not be much calmer.
        baseline_ok = control is None or control >= 1 / P99_RATIO_MAX
        if control is not None or pooled:
            value += f"; a window as long without an upgrade: {_x(control)}"
        if not baseline_ok:
            value += (" - not counted as met: the `before` window"
                      + ("s were" if pooled else " was")
                      + " noisier than the control, so the ratio understates the upgrade's cost")
        out.append({
            "target": f"{key}: p99 during the upgrade window <= {P99_RATIO_MAX:g}x p99 before",
            "value": value + note,
            "met": r is not None and r <= P99_RATIO_MAX and baseline_ok})
    if supervisor:
        cpu = supervisor.get("cpu_pct_of_one_core")
        rss = supervisor.get("rss_mb_max")
        out.append({"target": f"supervisor CPU while idle < {CPU_PCT_MAX:g}% of one core",
                    "value": "-" if cpu is None else
                    f"{cpu:.2f}% ({supervisor.get('cpu_s')} CPU-s in "
                    f"{supervisor.get('idle_s')} s)",
                    "met": cpu is not None and cpu < CPU_PCT_MAX})
        out.append({"target": f"supervisor RSS < {RSS_MB_MAX:g} MB",
                    "value": "-" if rss is None else f"{rss:.1f} MB (largest reading)",
                    "met": rss is not None and rss < RSS_MB_MAX})
    return out
