"""Upgrade Envoy 1.39.3 -> 1.40.0 under constant load: meshctl's hot upgrade against
stopping the old Envoy and starting the new one, in one run.

Arms, each on its own fresh work dir, ports and base id, one after the other:
  baseline-meshctl  Envoy 1.39.3 under meshctl, load, no upgrade: the rate this machine
                    sustains (with the supervisor's own CPU use).
  baseline-plain    the same with plain Envoy 1.39.3 (no supervisor).
  meshctl           `meshctl run` on 1.39.3, load, `meshctl upgrade --envoy 1.40.0 --wait` at
                    the middle of the load (hot restart; the old generation drains, then exits).
  naive             plain `envoy -c CFG --base-id N --concurrency 2` 1.39.3, load, at the middle
                    SIGTERM it, wait for its exit, start 1.40.0, wait until it is LIVE. Its
                    upgrade time is stop -> LIVE.

Load, in every arm at once, closed loop (as fast as the machine answers):
  wrk -t1 -c64 --latency          keep-alive connections
  hey -c8 -disable-keepalive      a new connection per request
Failures = wrk socket errors (connect, read, write, timeout) + wrk non-2xx + hey non-2xx +
hey errors. A keep-alive connection that a draining Envoy closes with `Connection: close` is
reopened by wrk and is not an error.

    python bench/upgrade_under_load.py                 # 20 s per arm, ~1.2 min in all
    python bench/upgrade_under_load.py --quick         # smoke run, < 60 s
    python bench/upgrade_under_load.py --json bench/results/upgrade_under_load.json
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
    remove_shared_memory,
    tcp_table_size,
    wait_live,
    workdir,
    write_json,
)

CONCURRENCY = 2
"""Envoy worker threads in every arm (meshctl's default; plain Envoy is given the same)."""


def _supervised(name: str, old: Path, new: Path | None, spec: LoadSpec,
                args: argparse.Namespace) -> dict[str, Any]:
    """Envoy `old` under meshctl, load; with `new`, `meshctl upgrade` at the middle."""
    with workdir(f"meshctl-bench-{name}-", args.keep) as root:
        site = Site.create(root)
        sup = Supervisor(root, old, site.config_v1, drain_min_s=args.drain_min_s,
                         drain_max_s=args.drain_max_s)
        load: Load | None = None
        try:
            sup.start()
            tcp = tcp_table_size()
            cpu0 = sup.cpu_s()
            load = Load(site.url, spec, root).start()
            started = time.monotonic()
            upgrade: dict[str, Any] | None = None
            if new is not None:
                time.sleep(spec.duration_s / 2)
                log("meshctl: upgrade --envoy 1.40.0 --wait")
                up = sup.upgrade(new, site.config_v2)
                rec = up.record
                log(f"meshctl: upgrade {rec.get('result')} (exit {up.exit_code}): new LIVE "
                    f"after {rec.get('live_after_s')} s, old gone after {rec.get('total_s')} s "
                    f"(drain ended: {rec.get('drain_end')}); CLI took {up.cli_wall_s} s")
                upgrade = {**up.to_json(),
                           "done_at_s": round(time.monotonic() - started, 3)}
            result = load.wait()
            cpu = sup.cpu_s() - cpu0
            return {"arm": name, "load": result.to_json(), "upgrade": upgrade,
                    "supervisor_cpu_s": round(cpu, 2), "tcp_table_at_start": tcp,
                    "raw": load.raw()}
        finally:
            if load is not None:
                load.kill()
            sup.stop()


def run_baseline_meshctl(old: Path, _new: Path, spec: LoadSpec, args: argparse.Namespace
                         ) -> dict[str, Any]:
    return _supervised("baseline-meshctl", old, None, spec, args)


def run_meshctl(old: Path, new: Path, spec: LoadSpec, args: argparse.Namespace
                ) -> dict[str, Any]:
    return _supervised("meshctl", old, new, spec, args)


def run_baseline_plain(old: Path, _new: Path, spec: LoadSpec, args: argparse.Namespace
                       ) -> dict[str, Any]:
    return _plain("baseline-plain", old, None, spec, args)


def run_naive(old: Path, new: Path, spec: LoadSpec, args: argparse.Namespace
              ) -> dict[str, Any]:
    return _plain("naive", old, new, spec, args)


def _plain(name: str, old: Path, new: Path | None, spec: LoadSpec, args: argparse.Namespace
           ) -> dict[str, Any]:
    """Plain Envoy `old`, load; with `new`, stop it at the middle and start `new`."""
    with workdir(f"meshctl-bench-{name}-", args.keep) as root:
        site = Site.create(root)
        base_id = site.base_id
        extra = ["--concurrency", str(CONCURRENCY)]
        first = PlainEnvoy(old, site.config_v1, base_id, root / "envoy-old.log",
                           extra_args=extra)
        second: PlainEnvoy | None = None
        load: Load | None = None
        try:
            first.start()
            wait_live(site.admin_port, epoch=0, timeout_s=30)
            tcp = tcp_table_size()
            load = Load(site.url, spec, root).start()
            if new is None:
                return {"arm": name, "load": load.wait().to_json(), "upgrade": None,
                        "tcp_table_at_start": tcp, "raw": load.raw()}
            time.sleep(spec.duration_s / 2)
            log("naive: SIGTERM the old Envoy, wait for its exit, start the new one")
            assert first.proc is not None
            t_stop = time.monotonic()
            first.stop()
            t_exit = time.monotonic()
            # A new process, not a hot restart: Envoy's epoch 0 again; the epoch header (label)
            # still tells the two apart.
            second = PlainEnvoy(new, site.config_v2, base_id, root / "envoy-new.log",
                                label="1", extra_args=extra)
            second.start()
            t_live = wait_live(site.admin_port, epoch=0, timeout_s=30)
            up = {"stop_to_exit_s": round(t_exit - t_stop, 3),
                  "start_to_live_s": round(t_live - t_exit, 3),
                  "stop_to_live_s": round(t_live - t_stop, 3),
                  "old_exit": first.proc.returncode}
            log(f"naive: old exited after {up['stop_to_exit_s']} s, new LIVE "
                f"{up['start_to_live_s']} s later: stop -> LIVE {up['stop_to_live_s']} s")
            result = load.wait()
            return {"arm": name, "load": result.to_json(), "upgrade": up,
                    "tcp_table_at_start": tcp, "raw": load.raw()}
        finally:
            if load is not None:
                load.kill()
            for envoy in (second, first):
                if envoy is not None:
                    envoy.stop()
            remove_shared_memory(base_id)


def upgrade_cell(arm: dict[str, Any]) -> str:
    up = arm.get("upgrade")
    if not up:
        return "-"
    if "stop_to_live_s" in up:
        return f"stop -> LIVE {fmt_s(up['stop_to_live_s'])} (no listener meanwhile)"
    rec = up["record"]
    return (f"{rec.get('result')}: new LIVE {fmt_s(rec.get('live_after_s'))}, old gone "
            f"{fmt_s(rec.get('total_s'))} ({rec.get('drain_end')}); CLI incl. pre-flight "
            f"{fmt_s(up['cli_wall_s'])}")


def label(arm: dict[str, Any]) -> str:
    return str(arm["arm"]) + (f" #{arm['repeat']}" if arm.get("repeat") else "")


def report(arms: list[dict[str, Any]]) -> str:
    rows = []
    for arm in arms:
        load = arm["load"]
        wrk, hey = load["wrk"], load["hey"] or {}
        cpu = arm.get("supervisor_cpu_s")
        rows.append([
            label(arm),
            f"{load['requests']:,}",
            f"{load['rps']:,.0f}",
            f"{wrk['requests']:,}",
            f"c{wrk['connect_errors']}/r{wrk['read_errors']}/w{wrk['write_errors']}/"
            f"t{wrk['timeouts']}/{wrk['non_2xx']}",
            f"{hey.get('requests', 0):,}",
            f"{hey.get('failures', 0):,}",
            f"**{load['failures']:,}**",
            upgrade_cell(arm),
            "-" if cpu is None else f"{cpu:.1f} s",
            f"{arm['tcp_table_at_start']:,}",
        ])
    table = markdown_table(
        ["arm", "requests", "req/s", "wrk requests",
         "wrk errors (connect/read/write/timeout/non-2xx)", "hey requests", "hey failures",
         "failed", "upgrade", "supervisor CPU", "TCP table"], rows)
    epochs = [[label(arm), ", ".join(f"epoch {k}: {v:,}" for k, v in
                                     sorted(arm["load"]["wrk"]["by_epoch"].items()))]
              for arm in arms if arm["upgrade"]]
    errors = [[label(arm), f"[{n}] {msg}"] for arm in arms
              for msg, n in ((arm["load"]["hey"] or {}).get("errors") or {}).items()]
    out = table + "\n\nwrk responses by generation (`x-meshctl-epoch`):\n\n" + markdown_table(
        ["arm", "served by"], epochs)
    if errors:
        out += "\n\nhey errors:\n\n" + markdown_table(["arm", "count, message"], errors)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 6 s per arm, 3 s baselines (< 60 s in all)")
    parser.add_argument("--duration", type=int, default=20,
                        help="seconds of load per arm; the upgrade is at the middle (20)")
    parser.add_argument("--baseline", type=int, default=10,
                        help="seconds of each baseline run, 0 to skip them (10)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the meshctl and naive arms this many times each (1)")
    parser.add_argument("--wrk-connections", type=int, default=64)
    parser.add_argument("--hey-workers", type=int, default=8)
    parser.add_argument("--drain-min-s", type=float, default=1.0,
                        help="meshctl's drain window minimum (meshctl's default, 1)")
    parser.add_argument("--drain-max-s", type=float, default=45.0,
                        help="meshctl's drain window maximum (meshctl's default, 45)")
    parser.add_argument("--old-envoy", type=Path, default=OLD_ENVOY,
                        help=f"Envoy to upgrade from ({OLD_ENVOY})")
    parser.add_argument("--new-envoy", type=Path, default=None,
                        help="Envoy to upgrade to (default: the embedded 1.40.0)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dirs (debugging)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.baseline = 6, 3

    old = check_binary(args.old_envoy)
    new = check_binary(args.new_envoy or new_envoy())
    versions = {"old": binary_version(old), "new": binary_version(new)}
    log(f"Envoy {versions['old']} -> {versions['new']}; load {args.duration} s per arm; "
        f"load average {load_average()}")
    results: dict[str, Any] = {
        "benchmark": "upgrade_under_load", "quick": args.quick, "machine": machine_info(),
        "envoy": {"old": str(old), "new": str(new), **versions},
        "settings": {"duration_s": args.duration, "baseline_s": args.baseline,
                     "repeats": args.repeats, "wrk_connections": args.wrk_connections,
                     "hey_workers": args.hey_workers, "drain_min_s": args.drain_min_s,
                     "drain_max_s": args.drain_max_s, "envoy_concurrency": CONCURRENCY},
        "arms": [],
    }
    arms: list[dict[str, Any]] = results["arms"]
    spec = LoadSpec(args.duration, args.wrk_connections, args.hey_workers)
    if args.baseline:
        base_spec = LoadSpec(args.baseline, args.wrk_connections, args.hey_workers)
        for name, base in (("baseline-meshctl", run_baseline_meshctl),
                           ("baseline-plain", run_baseline_plain)):
            log(f"--- {name} (no upgrade)")
            arms.append(base(old, new, base_spec, args))
    for i in range(args.repeats):
        for name, fn in (("meshctl", run_meshctl), ("naive", run_naive)):
            log(f"--- {name}" + (f" (repeat {i + 1}/{args.repeats})" if args.repeats > 1
                                 else ""))
            arm = fn(old, new, spec, args)
            if args.repeats > 1:
                arm["repeat"] = i + 1
            arms.append(arm)
    finish_machine_info(results["machine"])

    print(f"Envoy {versions['old']} -> {versions['new']}, {args.duration} s of load per arm "
          f"(wrk -t1 -c{args.wrk_connections} keep-alive + hey -c{args.hey_workers} new "
          f"connection per request), upgrade at {args.duration / 2:g} s.\n"
          f"Machine: {machine_line(results['machine'])}\n")
    print(report(arms))
    if args.json:
        write_json(args.json, results)
    meshctl_failures = sum(a["load"]["failures"] for a in arms if a["arm"] == "meshctl")
    meshctl_ok = all(a["upgrade"]["record"].get("result") == "succeeded"
                     for a in arms if a["arm"] == "meshctl")
    print(f"\nmeshctl: {meshctl_failures} failed request(s); target 0: "
          f"{'met' if meshctl_failures == 0 and meshctl_ok else 'NOT met'}")
    return 0 if meshctl_failures == 0 and meshctl_ok else 1


if __name__ == "__main__":
    sys.exit(main())
