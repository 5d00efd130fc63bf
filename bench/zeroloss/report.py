"""docs/benchmarks.md from one run's results: the targets (met or not), then per scenario the
table of both arms, the upgrades, and the timeline picture. Pure: a dict in, Markdown out, so
that it is unit-tested and the page can be rebuilt from the JSON (`proof.py --report-only`).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zeroloss import crash_section, records, xds_section

HAND_WRITTEN = "benchmarks-upgrade-drain.md"
"""The hand-written benchmark page (upgrade under load with wrk and hey, drain time, the
connection counter), linked from the top of the generated one."""

_MEANING = {
    records.REFUSED: "connection refused (nothing listening)",
    records.RESET: "connection reset with the request in flight",
    records.EOF: "connection closed with the request in flight",
    records.TIMEOUT: "no response within the timeout",
    records.CONNECT_TIMEOUT: "connect timed out",
    records.STALE: "a reused keep-alive connection closed within 50 ms of the request, before "
                   "any byte of the response (the keep-alive race)",
    records.GOAWAY: "HTTP/2 stream refused by GOAWAY",
    records.NOT_SENT: "never sent (client backlog at the end)",
}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def counts(mapping: Mapping[str, int], *, skip_ok: bool = False) -> str:
    items = [(k, v) for k, v in mapping.items() if not (skip_ok and records.is_ok(k))]
    return ", ".join(f"{k} {v:,}" for k, v in items) or "-"


def _event_times(upgrade: Mapping[str, Any]) -> dict[str, float]:
    times: dict[str, float] = {}
    for e in upgrade["events"]:
        times.setdefault(e["event"], float(e["t_s"]))
    return times


def upgrade_line(arm: str, upgrade: Mapping[str, Any]) -> str:
    """One upgrade in words: what happened, how long it took."""
    t = _event_times(upgrade)
    result = upgrade["result"]
    if arm == "meshctl":
        parts = [result]
        if "new_live" in t:
            parts.append(f"new LIVE after {secs(t['new_live'])}")
        if "rollback" in t:
            parts.append(f"rollback at {secs(t['rollback'])}")
        if "recovery_live" in t:
            parts.append(f"recovery generation LIVE at {secs(t['recovery_live'])}")
        if "old_exited" in t:
            parts.append(f"old gone after {secs(t['old_exited'])}")
        record = upgrade.get("detail", {}).get("record") or {}
        if record.get("drain_end"):
            forced = record.get("forced_closes") or 0
            parts.append(f"drain ended: {record['drain_end']}"
                         + (f", {forced} connection(s) forced closed" if forced else ""))
        end = max((v for k, v in t.items() if k != "command_done"), default=None)
        if "old_exited" not in t and end is not None:
            parts.append(f"done after {secs(end)}")
        if "command" in t:
            took = t.get("command_done", 0.0) - t["command"]
            cpu = upgrade.get("detail", {}).get("cli_cpu_s")
            sched = (upgrade.get("detail", {}).get("record") or {}).get("client_scheduling")
            parts.append(f"the command took {secs(took)}"
                         + (f" and {cpu:.2f} CPU-s" if cpu is not None else "")
                         + " (pre-flight and --wait included"
                         + (f"; it ran {sched}" if sched else "") + ")")
        return "; ".join(parts)
    live = t.get("new_live", t.get("old_live"))
    parts = [result, f"old exited after {secs(t.get('old_exited'))}"]
    if "new_failed" in t:
        parts.append(f"new one failed at {secs(t['new_failed'])}")
    parts.append(f"nothing listening until {secs(live)}" if live is not None
                 else "never LIVE again")
    return "; ".join(parts)


def upgrades_cell(arm: str, upgrades: Sequence[Mapping[str, Any]]) -> str:
    if not upgrades:
        return "-"
    if len(upgrades) == 1:
        return upgrade_line(arm, upgrades[0])
    results: dict[str, int] = {}
    for up in upgrades:
        results[up["result"]] = results.get(up["result"], 0) + 1
    ends = []
    for up in upgrades:
        t = _event_times(up)
        key = "old_exited" if arm == "meshctl" else ("new_live" if "new_live" in t
                                                     else "old_live")
        if key in t:
            ends.append(t[key])
    what = "old gone" if arm == "meshctl" else "listening again"
    spread = (f"; {what} after {min(ends):.2f} / {statistics.median(ends):.2f} / "
              f"{max(ends):.2f} s (min / median / max)" if ends else "")
    return ", ".join(f"{n} {r}" for r, n in results.items()) + spread


def arm_rows(scenario: Mapping[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, arm in scenario["arms"].items():
        acc = arm["accounting"]
        lat = arm["latency"]
        ratio = arm.get("p99_ratio")
        rows.append([
            f"**{name}**",
            f"{acc['requests']:,}",
            f"**{acc['failed']:,}**",
            counts(acc["outcomes"], skip_ok=True),
            counts(acc["retried"]),
            counts(acc["by_epoch"]),
            f"{ms(lat['before']['p50_ms'])} / {ms(lat['before']['p99_ms'])}",
            f"{ms(lat['during']['p50_ms'])} / {ms(lat['during']['p99_ms'])}",
            ("-" if ratio is None else f"{ratio:.2f}x")
            + ("" if arm.get("p99_ratio_control") is None else
               f" (control {arm['p99_ratio_control']:.2f}x)"),
            upgrades_cell(name, arm["upgrades"]),
        ])
    return rows


ARM_HEADERS = ["arm", "requests", "failed", "failed by outcome", "retried (then ok)",
               "answered by generation", "p50 / p99 before", "p50 / p99 during", "p99 ratio",
               "upgrades"]


def per_upgrade_table(scenario: Mapping[str, Any]) -> str:
    arms = scenario["arms"]
    names = list(arms)
    n = max(len(arms[a]["upgrades"]) for a in names)
    rows = []
    for i in range(n):
        row: list[object] = []
        for a in names:
            ups = arms[a]["upgrades"]
            if i < len(ups):
                if not row:
                    row.append(ups[i]["label"])
                row.append(upgrade_line(a, ups[i]))
            else:
                row.append("-")
        rows.append(row)
    return table(["upgrade", *names], rows)


def stream_rows(scenario: Mapping[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, arm in scenario["arms"].items():
        stream = arm.get("tcp_stream")
        if not stream:
            continue
        conns = stream["connections"]
        first = conns[0] if conns else None
        events = {e["event"]: e["t_s"] for e in arm["events"] if e["upgrade"] == 0}
        cut = "-"
        if first is not None:
            if first["end"] is None:
                cut = "lasted to the end of the load"
            else:
                gone = events.get("old_exited")
                rel = (f" ({first['closed_s'] - gone:+.2f} s from the old generation's exit)"
                       if gone is not None else "")
                cut = f"{first['end']} at {first['closed_s']:.2f} s{rel}"
        gap = "-"
        if len(conns) > 1 and conns[0]["closed_s"] is not None:
            gap = f"{(conns[1]['opened_s'] - conns[0]['closed_s']) * 1000:.0f} ms"
        request = events.get("command")
        rows.append([f"**{name}**",
                     "-" if first is None else f"{first['opened_s']:.2f} s",
                     "-" if request is None else f"{request:.2f} s",
                     cut, "-" if first is None else f"{first['pings_ok']:,}",
                     f"{stream['pings_sent']:,} / {stream['pings_ok']:,} / "
                     f"{stream['pings_lost']:,}",
                     counts(stream["connect_failures"]), gap,
                     f"{len(conns)}"])
    return rows


def calibration_table(cal: Mapping[str, Any]) -> str:
    rows = []
    names = {"client_mix": "this client, the scenario mix (closed loop)",
             "client_h1": "this client, HTTP/1.1 keep-alive, 32 lanes (closed loop)",
             "wrk_h1": "wrk -t1 -c32 (keep-alive)"}
    for key, label in names.items():
        r = cal.get(key)
        if not r:
            continue
        rows.append([label, f"{r['requests']:,}", f"{r['rate']:,.0f}", f"{r['failed']:,}",
                     f"{r['upstream_served']:,}"])
    out = table(["load (on plain Envoy 1.39.3, no upgrade)", "requests", "req/s", "failed",
                 "upstream served"], rows)
    if cal.get("client_vs_wrk") is not None:
        out += (f"\n\nThis Python client reaches {cal['client_vs_wrk']:.0%} of wrk's rate with "
                "the same number of keep-alive connections. The client's counts equal the "
                "upstream's (every response it counted, the upstream served); wrk's total "
                "leaves out the requests in flight when it stops.")
    return out


def rel(path: str | Path, start: Path) -> str:
    return os.path.relpath(Path(path), start).replace(os.sep, "/")


def build_markdown(suite: Mapping[str, Any], docs_path: Path) -> str:
    """The generated docs/benchmarks.md. Links are relative to `docs_path`'s folder."""
    base = docs_path.parent
    machine = suite["machine"]
    out: list[str] = [
        "# Benchmarks: proof of zero loss",
        "",
        "<!-- Generated by `python bench/proof.py` (bench/zeroloss/report.py); do not edit by "
        "hand: run it again. -->",
        "",
        f"The hand-written benchmarks (upgrade under load with wrk and hey, drain time, the "
        f"connection counter) are in [{HAND_WRITTEN}]({HAND_WRITTEN}).",
        "",
        f"Generated by `{suite['command']}` on {suite['generated_utc']} in "
        f"{suite['duration_s'] / 60:.1f} min" + (" (**smoke run**: short, for the pipeline, "
                                                 "not for figures)" if suite.get("smoke")
                                                 else "") + ".",
        "Every request of every scenario is accounted for: the load client records each one "
        "(intended start, start, end, outcome, the generation that served it), and each "
        "scenario runs meshctl and the naive alternative (stop the old Envoy, start the new "
        "one) one after the other in the same run, under the same open-loop load. Compare "
        "arms only within a scenario: the machine is shared with other people's Envoy tests, "
        "and its capacity drifts" + _drift(suite) + ".",
        "",
        f"Machine: {machine.get('cpus')} CPUs, {machine.get('platform')}; load average "
        f"(1/5/15 min) {machine.get('loadavg_at_start')} at the start, "
        f"{machine.get('loadavg_at_end')} at the end; other Envoy/meshctl/pytest processes "
        f"at the start: {_others(machine.get('others_at_start', {}))}, at the end: "
        f"{_others(machine.get('others_at_end', {}))}. Envoy {suite['envoy']['old']} -> "
        f"{suite['envoy']['new']}. CPUs: {_cpus(suite.get('settings', {}))}.",
        "",
        "## Targets",
        "",
        table(["target", "this run", "met"],
              [[t["target"], t["value"], "**met**" if t["met"] else "**not met**"]
               for t in suite["targets"]]),
        "",
        "Failed = requests whose final outcome was not a 2xx response. Latency runs from the "
        "request's intended start (so a stall counts) and is taken over the successful "
        "requests; `before` is the load before the first upgrade command, `during` from the "
        "command (meshctl's pre-flight checks included) to the end of the last upgrade "
        "(meshctl: old generation gone; naive: Envoy LIVE again).",
        "",
    ]
    sup = suite.get("supervisor") or {}
    if sup.get("readings"):
        out += ["Supervisor (`python -m meshctl run`, its pid only, not Envoy nor dumb-init), "
                "measured with psutil:", "",
                table(["when", "CPU", "% of one core", "RSS", "TCP table (entries)"],
                      [[when, f"{f['cpu_s']:.3f} s in {f['idle_s']:.1f} s",
                        f"{f['cpu_pct_of_one_core']:.2f} %", f"{f['rss_mb']:.1f} MB",
                        f"{f.get('tcp_table', 0):,}"]
                       for when, f in sup["readings"].items()]),
                "",
                "Where the idle supervisor's CPU goes: in steady state its loop wakes every "
                "0.5 s (`idle_tick_s`), and every 5 s it counts the live generation's "
                "connections (for `meshctl "
                "status`) through sock_diag, which walks the kernel's whole TCP table, "
                "TIME_WAIT entries included (the new-connection-per-request traffic leaves "
                "thousands). One count, timed in the benchmark's own process at each reading: "
                + ", ".join(f"{f['count_ms']:.1f} ms of CPU with {f.get('tcp_table', 0):,} "
                            f"entries" for f in sup["readings"].values() if "count_ms" in f)
                + ", so the counts alone take "
                + ", ".join(f"{f['count_ms'] / 50:.2f} %" for f in sup["readings"].values()
                            if "count_ms" in f) + " of a core.",
                "", "RSS after each scenario's load: " + ", ".join(
                    f"{k} {v:.1f} MB" for k, v in sup.get("rss_readings_mb", {}).items()
                    if "after load" in k) + ".", ""]
    for i, (key, scen) in enumerate(suite["scenarios"].items(), start=1):
        out += _scenario_section(i, key, scen, suite, base)
    out += _method(suite, base)
    text = "\n".join(out).rstrip() + "\n"
    scale = xds_section.load()
    text = xds_section.splice(text, scale) if scale is not None else text
    crash = crash_section.load()
    return crash_section.splice(text, crash) if crash is not None else text


def _drift(suite: Mapping[str, Any]) -> str:
    rates = [scen["calibration"]["client_mix"]["rate"]
             for scen in suite["scenarios"].values()
             if (scen.get("calibration") or {}).get("client_mix")]
    if len(rates) < 2:
        return ""
    return (f" (the closed-loop maximum, measured before scenarios 1, 2 and 4, went from "
            f"{min(rates):,.0f} to {max(rates):,.0f} req/s in this run)")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _others(counts_: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts_.items() if n) or "none"


ROUND_HEADERS = ["round", "meshctl requests", "failed", "p99 before / during / control",
                 "p99 ratio", "control ratio", "naive failed", "naive p99 ratio",
                 "naive control ratio"]


def rounds_table(scenario: Mapping[str, Any]) -> str:
    rows: list[list[object]] = []
    for i, r in enumerate(scenario["rounds"], start=1):
        m, n = r["meshctl"], r["naive"]
        rows.append([i, f"{m['requests']:,}", f"**{m['failed']:,}**",
                     f"{ms(m['p99_before_ms'])} / {ms(m['p99_during_ms'])} / "
                     f"{ms(m['p99_control_ms'])}", _ratio(m["p99_ratio"]),
                     _ratio(m["p99_ratio_control"]), f"{n['failed']:,}",
                     _ratio(n["p99_ratio"]), _ratio(n["p99_ratio_control"])])
    pm, pn = scenario["pooled"]["meshctl"], scenario["pooled"]["naive"]
    rows.append(["**pooled**", f"{pm['requests']:,}", f"**{pm['failed']:,}**",
                 f"{ms(pm['p99_ms']['before'])} / {ms(pm['p99_ms']['during'])} / "
                 f"{ms(pm['p99_ms']['control'])}", f"**{_ratio(pm['p99_ratio'])}**",
                 _ratio(pm["p99_ratio_control"]), f"{pn['failed']:,}",
                 _ratio(pn["p99_ratio"]), _ratio(pn["p99_ratio_control"])])
    return table(ROUND_HEADERS, rows)


def _scenario_section(i: int, key: str, scen: Mapping[str, Any], suite: Mapping[str, Any],
                      base: Path) -> list[str]:
    out = [f"## {i}. {scen['title']}", "", scen["what"] + ".", ""]
    if (scen.get("calibration") or {}).get("client_mix"):
        out += ["Highest rate, closed loop, measured first:", "",
                calibration_table(scen["calibration"]), ""]
    if len(scen.get("rounds") or []) > 1:
        out += [f"Every round (round {scen.get('shown_round')} is the one in the table and "
                "the picture below); `pooled` takes every round's requests of each window "
                "together. The control is a window as long as the upgrade's, 2 s after it, "
                "with no upgrade in it: what the machine's own noise does to a window that "
                "short.", "", rounds_table(scen), ""]
    out += [table(ARM_HEADERS, arm_rows(scen)), ""]
    for name, arm in scen["arms"].items():
        load = arm.get("load", {})
        machine = arm.get("machine", {})
        queue = arm.get("client_queue") or {}
        sustained = "sustained" if queue.get("sustained", True) else "**not sustained**"
        sustained += (f" (time a request waited for a free lane in the client: p99 "
                      f"{ms(queue.get('p99_ms'))}, max {ms(queue.get('max_ms'))}"
                      + (f"; {queue['not_sent']:,} never sent" if queue.get("not_sent")
                         else "") + ")")
        cli_cpu = [u["detail"]["cli_cpu_s"] for u in arm["upgrades"]
                   if "cli_cpu_s" in u.get("detail", {})]
        if len(cli_cpu) > 1:
            sustained += (f"; the {len(cli_cpu)} `meshctl upgrade` commands used "
                          f"{sum(cli_cpu):.1f} CPU-s (Python start-up and pre-flight runs of "
                          f"Envoy), {100 * sum(cli_cpu) / max(load.get('duration_s', 1), 1):.0f}"
                          f" % of one core over the load")
        out.append(f"- {name}: target {load.get('rate_target', 0):,.0f} req/s for "
                   f"{load.get('duration_s', 0):.1f} s, {sustained}; upstream served "
                   f"{arm.get('upstream', {}).get('served', 0):,}; "
                   f"p99 from the upgrade request to its end (pre-flight left out): "
                   f"{ms(arm['latency']['handover']['p99_ms'])} ("
                   f"{_ratio(arm.get('p99_ratio_handover'))} the p99 before); machine CPU "
                   f"{machine.get('cpu_pct_all_cores', '-')} % of all cores, load average "
                   f"{machine.get('loadavg_before', ['-'])[0]} -> "
                   f"{machine.get('loadavg_after', ['-'])[0]}.")
    out.append("")
    if any(len(a["upgrades"]) > 1 for a in scen["arms"].values()) and key != "storm":
        out += [per_upgrade_table(scen), ""]
    rows = stream_rows(scen)
    if rows:
        out += ["The long-lived TCP stream:", "",
                table(["arm", "opened", "upgrade command", "first connection ended",
                       "pings on it", "pings sent / answered / lost",
                       "refused reconnects", "reconnected after", "connections"], rows),
                ""]
    image = suite.get("images", {}).get(key)
    if image:
        out += [f"![{scen['title']}]({rel(image, base)})", ""]
    result = suite.get("results", {}).get(key)
    if result:
        out += [f"Every figure, the upgrade records and the first failures: "
                f"[`{rel(result, base)}`]({rel(result, base)}).", ""]
    return out


def _cpus(settings: Mapping[str, Any]) -> str:
    split = settings.get("cpus") or {}
    if not (split.get("proxy") and split.get("load")):
        return "the proxy and the load share every CPU"
    return (f"proxy on {', '.join(map(str, split['proxy']))}, load on "
            f"{', '.join(map(str, split['load']))}")


def _strategy(settings: Mapping[str, Any]) -> str:
    return str(settings.get("drain_strategy") or "immediate")


def _method(suite: Mapping[str, Any], base: Path) -> list[str]:
    outcomes = "; ".join(f"`{k}`: {v}" for k, v in _MEANING.items())
    return [
        "## How it is measured",
        "",
        "- **Load client** (`bench/zeroloss/client.py`): open loop: request *i* is due at "
        "start + i/rate whatever happens, waits for a free lane if need be, and its latency "
        "runs from when it was due. Several worker processes (asyncio) share the rate. "
        "Traffic mix: 60 % HTTP/1.1 keep-alive, 20 % HTTP/1.1 with a new connection per "
        "request, 20 % HTTP/2 (h2c, prior knowledge) on 2 connections per worker. Each "
        "response's `x-meshctl-epoch` header (from MESHCTL_EPOCH, set by meshctl for each "
        "generation; the naive arm sets it for each Envoy it starts) says which generation "
        "answered.",
        f"- **Outcomes**: an HTTP status, or exactly why there was none: {outcomes}. A request "
        "that the server provably did not process (a reused keep-alive connection closed "
        "before any byte of the response; an HTTP/2 stream above the GOAWAY's last stream id, "
        "or refused with REFUSED_STREAM) is retried once on a new connection, as HTTP clients "
        "do; it then counts by the retry's outcome, and the retries are shown in their own "
        "column.",
        "- **Upstream**: Envoy routes every request to an HTTP server the benchmark starts "
        "(asyncio, 2 processes on one port); `?delay_ms=` holds a request in the upstream. Its "
        "count of served requests is checked against the client's.",
        "- **Windows**: `before` from 1 s to the upgrade command, `during` from the command "
        "to the end of the last upgrade (meshctl: the old generation gone), and in scenarios "
        "1 and 4 a `control` window as long as `during`, 2 s after it, with no upgrade in it "
        "(a verdict whose control is much calmer than `before`, by more than the 1.5x "
        "target, is not counted as met). Scenarios 2 and 4 start their upgrades after "
        f"{suite.get('settings', {}).get('lead_s', 12):g} s of load, so that `before` is not "
        "a short window set against a long one. "
        "Scenario 1 runs in rounds (a fresh pair of arms each) and its targets are judged on "
        "every round's requests together: a single 2-second window's p99 swings 0.3-5.7x "
        "on this machine with no upgrade in it ([latency.md](latency.md)).",
        "- **Arms**: meshctl: `python -m meshctl run --drain-strategy "
        f"{_strategy(suite.get('settings', {}))}` (drain window 1-45 s, meshctl's defaults, but "
        "for scenario 3) and `python -m meshctl upgrade --wait -o json`; the vertical lines are "
        "the upgrade record's `events`. Naive: plain `envoy --concurrency 2` stopped with "
        "SIGTERM; when it has exited, the new one is started and polled until LIVE.",
        "- **CPUs**: the proxy (this benchmark's process and what it starts: meshctl, every "
        "Envoy, the `meshctl upgrade` command and its pre-flight runs) and the load (the load "
        "client's workers, the upstream, wrk) run on separate CPUs (`--cpus`, default half "
        "each, `bench/zeroloss/cpus.py`), as a sidecar's clients and application do not run on "
        "the proxy container's CPUs. The Python load client takes more CPU per request than "
        "Envoy does for both hops; sharing the cores, its own bursts counted as the proxy's "
        "latency ([latency.md](latency.md)).",
        "- **Timeline**: requests per 100 ms by intended start: successful ones by the "
        "generation that answered, failed ones by outcome; p50/p99 latency per bin.",
        "",
        "Run it again (about 8 minutes; `--smoke` for a short run that writes to "
        "/tmp/meshctl-proof-smoke/):",
        "",
        "```sh",
        "python bench/proof.py",
        "python bench/proof.py --report-only   # rebuild this page from the JSON results",
        "```",
        "",
    ]
