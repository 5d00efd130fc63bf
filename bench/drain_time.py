"""How long an upgrade keeps the old generation: meshctl's adaptive drain window against a
fixed window and against Envoy's own default timers, idle and under load, in one run.

Scenarios, each on its own fresh work dir, ports and base id (Envoy 1.39.3 -> 1.40.0):
  adaptive, idle      meshctl, drain_min_s=1, drain_max_s=60, no traffic
  adaptive, load      the same, under wrk -c16 (keep-alive) + hey -c4 (new connection each)
  fixed, idle / load  meshctl with drain_min_s = drain_max_s = 10: the window cannot end
                      early, as with a fixed drain timer
  Envoy defaults      plain Envoy hot restart with default flags (epoch 0, then epoch 1 with
                      --restart-epoch 1 and the same --base-id). The old generation is
                      watched for --observe seconds, not the 900 s of Envoy's default
                      --parent-shutdown-time-s; the defaults are read back from /server_info.

"Time to old gone" is meshctl's own record (`total_s`: from the upgrade request to the old
generation's exit). Under load the traffic runs from before the upgrade until a little after it.
Target: an idle upgrade ends in under drain_min_s + 2 s.

    python bench/drain_time.py                 # ~1 min
    python bench/drain_time.py --quick         # smoke run, < 60 s (3 s window, 5 s watch)
    python bench/drain_time.py --json bench/results/drain_time.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import (
    OLD_ENVOY,
    Load,
    LoadSpec,
    PlainEnvoy,
    Site,
    Supervisor,
    binary_version,
    check_binary,
    finish_machine_info,
    fmt_s,
    load_average,
    log,
    machine_info,
    machine_line,
    markdown_table,
    new_envoy,
    pid_alive,
    remove_shared_memory,
    server_info,
    tcp_table_size,
    wait_live,
    workdir,
    write_json,
)

LEAD_S = 2.0
"""Load before the upgrade is asked for."""
TAIL_S = 1.0
"""Load after the upgrade is over (the old generation gone)."""


def run_meshctl(name: str, old: Path, new: Path, *, drain_min_s: float, drain_max_s: float,
                load_spec: LoadSpec | None, args: argparse.Namespace) -> dict[str, Any]:
    with workdir("meshctl-bench-drain-", args.keep) as root:
        site = Site.create(root)
        sup = Supervisor(root, old, site.config_v1, drain_min_s=drain_min_s,
                         drain_max_s=drain_max_s)
        load: Load | None = None
        try:
            sup.start()
            cpu0 = sup.cpu_s()
            if load_spec is not None:
                load = Load(site.url, load_spec, root).start()
                time.sleep(LEAD_S)
            up = sup.upgrade(new, site.config_v2, timeout_s=drain_max_s + 120)
            rec = up.record
            log(f"{name}: upgrade {rec.get('result')}: new LIVE after {rec.get('live_after_s')}"
                f" s, old gone after {rec.get('total_s')} s (drain {rec.get('drain_s')} s, "
                f"ended: {rec.get('drain_end')}, forced closes {rec.get('forced_closes')})")
            out: dict[str, Any] = {
                "scenario": name, "kind": "meshctl", "drain_min_s": drain_min_s,
                "drain_max_s": drain_max_s, "upgrade": up.to_json(), "load": None,
                "supervisor_cpu_s": round(sup.cpu_s() - cpu0, 2),
                "tcp_table_at_end": tcp_table_size(),
            }
            if load is not None:
                time.sleep(TAIL_S)
                load.interrupt()
                out["load"] = load.wait(timeout_s=30).to_json()
            return out
        finally:
            if load is not None:
                load.kill()
            sup.stop()


def run_envoy_defaults(old: Path, new: Path, observe_s: float, args: argparse.Namespace
                       ) -> dict[str, Any]:
    """Envoy's own hot restart with default timers: is the old generation still there?"""
    with workdir("meshctl-bench-envoy-", args.keep) as root:
        site = Site.create(root)
        base_id = site.base_id
        first = PlainEnvoy(old, site.config_v1, base_id, root / "envoy-0.log")
        second = PlainEnvoy(new, site.config_v2, base_id, root / "envoy-1.log", epoch=1)
        try:
            first.start()
            wait_live(site.admin_port, epoch=0, timeout_s=30)
            info = server_info(site.admin_port) or {}
            t_restart = time.monotonic()
            second.start()
            t_live = wait_live(site.admin_port, epoch=1, timeout_s=30)
            child_opts = (server_info(site.admin_port) or {}).get("command_line_options", {})
            log(f"Envoy defaults: epoch 1 LIVE after {t_live - t_restart:.2f} s; watching the "
                f"old generation (pid {first.pid}) for {observe_s:g} s")
            gone_after: float | None = None
            deadline = t_restart + observe_s
            while time.monotonic() < deadline:
                if not pid_alive(first.pid):
                    gone_after = time.monotonic() - t_restart
                    break
                time.sleep(0.2)
            watched = time.monotonic() - t_restart
            alive = gone_after is None and pid_alive(first.pid)
            log(f"Envoy defaults: old generation "
                f"{'still alive' if alive else f'gone after {gone_after}'} after "
                f"{watched:.1f} s")
            return {
                "scenario": "Envoy defaults, idle", "kind": "envoy",
                "live_after_s": round(t_live - t_restart, 3),
                "watched_s": round(watched, 1), "old_alive_at_end": alive,
                "old_gone_after_s": None if gone_after is None else round(gone_after, 3),
                "defaults_seen": {
                    "epoch0": {k: info.get("command_line_options", {}).get(k)
                               for k in ("drain_time", "parent_shutdown_time",
                                         "drain_strategy")},
                    "epoch1": {k: child_opts.get(k)
                               for k in ("drain_time", "parent_shutdown_time",
                                         "drain_strategy")},
                },
                "help_text": help_defaults(new),
                "argv": [first.argv, second.argv],
            }
        finally:
            # The child first: Envoy's child asks its parent to terminate when it shuts down,
            # so both exit; `first.stop()` then only checks (SIGTERM, SIGKILL if need be).
            second.stop()
            first.stop()
            remove_shared_memory(base_id)


def help_defaults(binary: Path) -> dict[str, str]:
    """What `envoy --help` says of the timers (1.40.0 names the flags but prints no default;
    the defaults are then read from a running Envoy's /server_info)."""
    import subprocess  # noqa: PLC0415

    done = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30,
                          check=False, stdin=subprocess.DEVNULL)
    text = done.stdout + done.stderr
    out: dict[str, str] = {}
    for flag in ("--parent-shutdown-time-s", "--drain-time-s", "--drain-strategy"):
        marker = f"   {flag} "
        start = text.find(marker)
        if start >= 0:
            block = text[start:].split("\n\n", 1)[0]
            out[flag] = " ".join(block.split())
    return out


def row_for(sc: dict[str, Any], target_s: float) -> list[str]:
    if sc["kind"] == "envoy":
        child = sc["defaults_seen"]["epoch1"]
        gone = (f"still alive after {sc['watched_s']:g} s" if sc["old_alive_at_end"]
                else fmt_s(sc["old_gone_after_s"]))
        return [sc["scenario"], "Envoy's timers: drain " + str(child.get("drain_time")) +
                ", parent shutdown " + str(child.get("parent_shutdown_time")),
                fmt_s(sc["live_after_s"]), f"**{gone}**",
                f"envoy's --parent-shutdown-time-s ({child.get('parent_shutdown_time')})",
                "-", "- (no traffic)"]
    up, rec, load = sc["upgrade"], sc["upgrade"]["record"], sc["load"]
    lo, hi = sc["drain_min_s"], sc["drain_max_s"]
    window = f"fixed {hi:g} s" if lo == hi else f"adaptive {lo:g}-{hi:g} s"
    total = rec.get("total_s")
    note = ""
    if sc["scenario"].startswith("adaptive, idle") and total is not None:
        note = f" (target < {target_s:g} s: {'met' if total < target_s else 'NOT met'})"
    failed = "- (no traffic)" if load is None else (
        f"{load['failures']:,} of {load['requests']:,}")
    return [sc["scenario"], window, fmt_s(rec.get("live_after_s")),
            f"**{fmt_s(total)}**{note}; drain {fmt_s(rec.get('drain_s'))}; CLI "
            f"{fmt_s(up['cli_wall_s'])}",
            f"{rec.get('drain_end')} ({rec.get('result')})", str(rec.get("forced_closes")),
            failed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: fixed window 3 s, Envoy watched 5 s (< 60 s)")
    parser.add_argument("--drain-min-s", type=float, default=1.0)
    parser.add_argument("--drain-max-s", type=float, default=60.0)
    parser.add_argument("--fixed-window-s", type=float, default=10.0,
                        help="the fixed window (drain_min_s = drain_max_s) (10)")
    parser.add_argument("--observe", type=float, default=20.0,
                        help="seconds to watch Envoy's old generation under default timers")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each meshctl scenario this many times (1)")
    parser.add_argument("--wrk-connections", type=int, default=16)
    parser.add_argument("--hey-workers", type=int, default=4)
    parser.add_argument("--old-envoy", type=Path, default=OLD_ENVOY)
    parser.add_argument("--new-envoy", type=Path, default=None,
                        help="default: the embedded 1.40.0")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dirs (debugging)")
    args = parser.parse_args(argv)
    if args.quick:
        args.fixed_window_s, args.observe = 3.0, 5.0

    old = check_binary(args.old_envoy)
    new = check_binary(args.new_envoy or new_envoy())
    versions = {"old": binary_version(old), "new": binary_version(new)}
    machine = machine_info()
    log(f"Envoy {versions['old']} -> {versions['new']}; load average {load_average()}")
    # Long enough for any upgrade here; the load is interrupted once the upgrade is over.
    load_spec = LoadSpec(duration_s=int(args.fixed_window_s + args.drain_max_s + 120),
                         wrk_connections=args.wrk_connections, hey_workers=args.hey_workers)
    plan: list[tuple[str, float, float, LoadSpec | None]] = [
        ("adaptive, idle", args.drain_min_s, args.drain_max_s, None),
        ("adaptive, load", args.drain_min_s, args.drain_max_s, load_spec),
        ("fixed, idle", args.fixed_window_s, args.fixed_window_s, None),
        ("fixed, load", args.fixed_window_s, args.fixed_window_s, load_spec),
    ]
    scenarios: list[dict[str, Any]] = []
    for i in range(args.repeats):
        for name, lo, hi, spec in plan:
            label = name + (f" #{i + 1}" if args.repeats > 1 else "")
            log(f"--- {label}: meshctl, drain window {lo:g}-{hi:g} s")
            scenarios.append(run_meshctl(label, old, new, drain_min_s=lo, drain_max_s=hi,
                                         load_spec=spec, args=args))
    log(f"--- Envoy defaults: plain hot restart, watched {args.observe:g} s")
    scenarios.append(run_envoy_defaults(old, new, args.observe, args))

    finish_machine_info(machine)
    target_s = args.drain_min_s + 2
    results = {
        "benchmark": "drain_time", "quick": args.quick, "machine": machine,
        "envoy": {"old": str(old), "new": str(new), **versions},
        "settings": {"drain_min_s": args.drain_min_s, "drain_max_s": args.drain_max_s,
                     "fixed_window_s": args.fixed_window_s, "observe_s": args.observe,
                     "repeats": args.repeats, "wrk_connections": args.wrk_connections,
                     "hey_workers": args.hey_workers, "lead_s": LEAD_S, "tail_s": TAIL_S,
                     "target_idle_total_s": target_s},
        "scenarios": scenarios,
    }
    print(f"Envoy {versions['old']} -> {versions['new']}; load: wrk -t1 "
          f"-c{args.wrk_connections} keep-alive + hey -c{args.hey_workers} new connection per "
          f"request.\nMachine: {machine_line(machine)}\n")
    print(markdown_table(
        ["scenario", "drain window", "new LIVE after", "time to old gone", "drain end",
         "forced closes", "failed requests"],
        [row_for(sc, target_s) for sc in scenarios]))
    envoy = scenarios[-1]
    print(f"\nEnvoy's defaults as the running Envoy reports them (/server_info): "
          f"{envoy['defaults_seen']['epoch1']}; `envoy --help`: "
          f"{envoy['help_text'].get('--parent-shutdown-time-s', '?')!r} (no default printed)")
    if args.json:
        write_json(args.json, results)
    idle = [sc for sc in scenarios if sc["scenario"].startswith("adaptive, idle")]
    met = all(sc["upgrade"]["record"].get("total_s") is not None
              and sc["upgrade"]["record"]["total_s"] < target_s for sc in idle)
    failed = sum(sc["load"]["failures"] for sc in scenarios if sc.get("load"))
    print(f"\nidle upgrade under drain_min_s + 2 = {target_s:g} s: {'met' if met else 'NOT met'};"
          f" failed requests under load (meshctl): {failed}")
    return 0 if met and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
