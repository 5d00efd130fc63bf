"""A mesh-sized config from a control plane: what an upgrade costs when Envoy is xDS-driven.

A real ADS control plane (`meshctl.demo.controlplane`) serves 100 listeners (each with an RDS
route config), 2,000 EDS clusters and 10,000 endpoints to Envoy 1.39.3 under `meshctl run`;
then, under load (wrk keep-alive + hey new connections on one listener), an upgrade to 1.40.0.
Measured in one run:
- time to LIVE of the first generation, and of the upgrade's new generation (with the xDS
  gate's checks: how many, and what one costs at this size);
- peak memory (RSS) of the old generation alone, and of both generations side by side;
- p99 latency of a window with the upgrade against a window as long before it (a ratio in the
  same run, never an absolute figure), and failed requests in both.

Run: `python bench/xds_scale.py [--listeners 100 --clusters 2000 --endpoints 5 --load-s 15]`.
Writes bench/results/xds_scale.json; the figures go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

# The control plane runs in this process (grpc threads) and the load tools are started with a
# preexec_fn (a real fork): grpc's fork handlers would run in the forked child and print into
# the tools' output ("epoll_wait error: Bad file descriptor"), which then cannot be parsed.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from google.protobuf.json_format import MessageToDict

from benchlib import (
    OLD_ENVOY,
    Load,
    LoadSpec,
    Supervisor,
    binary_version,
    check_binary,
    free_port,
    log,
    machine_info,
    new_envoy,
    workdir,
    write_json,
)
from meshctl.demo.controlplane import ControlPlane, Snapshot, bootstrap_yaml, mesh_snapshot
from meshctl.envoy import xds
from meshctl.envoy.admin import AdminClient
from meshctl.manager.state import StateDir
from zeroloss import xds_section
from zeroloss.upstream import HttpServer

RESULTS = xds_section.RESULTS
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


class RssSampler:
    """Sums the RSS of every Envoy under the supervisor every 50 ms; keeps the peak."""

    def __init__(self, supervisor_pid: int) -> None:
        self.pid = supervisor_pid
        self.peak_mb = 0.0
        self.peak_envoys = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> RssSampler:
        self._stop.set()
        self._thread.join()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            total, envoys = 0, 0
            try:
                children = psutil.Process(self.pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                try:
                    if child.name() == "envoy":
                        total += child.memory_info().rss
                        envoys += 1
                except psutil.Error:
                    continue
            if total / 2**20 > self.peak_mb:
                self.peak_mb, self.peak_envoys = total / 2**20, envoys


def view_read_s(admin: AdminClient, repeats: int = 5) -> float:
    """What one gate check costs at this size: `xds.read_view` on the live generation."""
    times = []
    for _ in range(repeats):
        t = time.monotonic()
        xds.read_view(admin)
        times.append(time.monotonic() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listeners", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--endpoints", type=int, default=5, help="per cluster")
    ap.add_argument("--load-s", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3, help="upgrades, alternating versions")
    ap.add_argument("--drain-strategy", default="gradual", choices=["gradual", "immediate"])
    ap.add_argument("--arms", nargs="+", default=["static", "xds"], choices=["static", "xds"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    old, new = check_binary(OLD_ENVOY), new_envoy()
    result: dict[str, Any] = {"machine": machine_info(), "listeners": args.listeners,
                              "drain_strategy": args.drain_strategy,
                              "clusters": args.clusters,
                              "endpoints": args.clusters * args.endpoints}
    for arm in args.arms:
        result[arm] = run_arm(arm, args, old, new)
    write_json(args.out, result)
    if args.out == RESULTS and set(args.arms) == {"static", "xds"}:
        DOCS.write_text(xds_section.splice(DOCS.read_text(), result))
        log(f"xDS section written to {DOCS}")
    for arm in args.arms:
        summarize(arm, result[arm])
    ok = all(r["result"] == "succeeded" and not r["failed_before"] and not r["failed_during"]
             for arm in args.arms for r in result[arm].get("rounds") or [{"result": "-"}])
    return 0 if ok else 1


def static_bootstrap(snapshot: Snapshot, admin_port: int) -> str:
    """The same mesh as a static bootstrap (the baseline arm): each listener's RDS route config
    inline, each EDS cluster STATIC with its load assignment."""
    routes = {r.name: MessageToDict(r, preserving_proto_field_name=True)
              for r in snapshot.routes}
    listeners = []
    for listener in snapshot.listeners:
        data = MessageToDict(listener, preserving_proto_field_name=True)
        for chain in data["filter_chains"]:
            for flt in chain["filters"]:
                hcm = flt["typed_config"]
                hcm["route_config"] = routes[hcm.pop("rds")["route_config_name"]]
        listeners.append(data)
    assignments = {a.cluster_name: MessageToDict(a, preserving_proto_field_name=True)
                   for a in snapshot.endpoints}
    clusters = []
    for cluster in snapshot.clusters:
        data = MessageToDict(cluster, preserving_proto_field_name=True)
        data.pop("eds_cluster_config", None)
        data["type"] = "STATIC"
        data["load_assignment"] = assignments[data["name"]]
        clusters.append(data)
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters}})


def run_arm(arm: str, args: argparse.Namespace, old: Path, new: Path) -> dict[str, Any]:
    """One arm: the mesh from the control plane (`xds`, gated) or from a file (`static`)."""
    result: dict[str, Any] = {}
    with workdir(f"meshctl-scale-{arm}-") as root:
        upstream = HttpServer(host="0.0.0.0").start()  # every 127.0.x.y endpoint reaches it
        ports = [free_port() for _ in range(args.listeners)]
        t = time.monotonic()
        snapshot = mesh_snapshot("1", ports, upstream.port, clusters=args.clusters,
                                 endpoints_per_cluster=args.endpoints)
        plane = ControlPlane(snapshot).start()
        log(f"{arm}: snapshot built in {time.monotonic() - t:.1f}s: {args.listeners} "
            f"listeners, {args.clusters} clusters, {args.clusters * args.endpoints} endpoints")
        admin_port = free_port()
        config = root / "envoy.yaml"
        config.write_text(static_bootstrap(snapshot, admin_port) if arm == "static" else
                          bootstrap_yaml(node_id="scale", xds_port=plane.port,
                                         admin_port=admin_port, initial_fetch_timeout_s=None))
        sup = Supervisor(root, old, config, drain_min_s=1, drain_max_s=30)
        sup.argv += ["--drain-strategy", args.drain_strategy]
        try:
            t = time.monotonic()
            sup.start(timeout_s=180)
            result["first_live_s"] = round(time.monotonic() - t, 2)
            status = sup.status()
            result["live_xds"] = {k: v for k, v in (status.get("xds") or {}).items()
                                  if k != "listeners"}
            live_admin = AdminClient(StateDir(sup.state_dir).admin_address_file(
                int(status["epoch"])))
            result["gate_check_s"] = round(view_read_s(live_admin), 4)
            log(f"{arm}: LIVE after {result['first_live_s']}s; one gate check (read_view) "
                f"would take {result['gate_check_s'] * 1000:.0f} ms")
            url = f"http://127.0.0.1:{ports[0]}/"
            sampler = RssSampler(sup.proc.pid if sup.proc else 0).start()
            spec = LoadSpec(duration_s=args.load_s, wrk_connections=32, hey_workers=4)
            rounds = []
            for n in range(args.rounds):
                binary = new if n % 2 == 0 else old
                sampler.peak_mb = 0.0
                before = Load(url, spec, root).start().wait()
                one_mb = sampler.peak_mb
                sampler.peak_mb = 0.0
                during_load = Load(url, spec, root).start()
                time.sleep(2)
                run = sup.upgrade(binary, config)
                during = during_load.wait()
                record = run.record
                gate = record.get("xds") or {}
                p99b = before.wrk.latency_ms.get("p99")
                p99d = during.wrk.latency_ms.get("p99")
                rounds.append({
                    "to": binary_version(binary), "exit_code": run.exit_code,
                    "result": record.get("result"), "live_after_s": record.get("live_after_s"),
                    "drain_s": record.get("drain_s"), "total_s": record.get("total_s"),
                    "events": record.get("events"), "gate_checks": gate.get("checks"),
                    "gate_state": gate.get("state"),
                    "new": {k: v for k, v in (gate.get("new") or {}).items()
                            if k != "listeners"},
                    "new_listeners": len((gate.get("new") or {}).get("listeners") or {}),
                    "rss_one_generation_mb": round(one_mb, 1),
                    "rss_peak_mb": round(sampler.peak_mb, 1),
                    "rss_peak_envoys": sampler.peak_envoys,
                    "p99_before_ms": p99b, "p99_during_ms": p99d,
                    "p99_ratio": round(p99d / p99b, 2) if p99b and p99d else None,
                    "failed_before": before.failures, "failed_during": during.failures,
                    "requests": before.requests + during.requests,
                    "load": {"before": before.to_json(), "during": during.to_json()},
                })
                log(f"round {n + 1}: {record.get('result')} to {rounds[-1]['to']}, LIVE after "
                    f"{record.get('live_after_s')}s, p99 {p99b} -> {p99d} ms, failed "
                    f"{before.failures}/{during.failures}")
            sampler.stop()
            result["rounds"] = rounds
        finally:
            sup.stop()
            plane.stop()
            upstream.close()
    return result


def summarize(arm: str, result: dict[str, Any]) -> None:
    rounds = result.get("rounds") or []
    ratios = [r["p99_ratio"] for r in rounds if r.get("p99_ratio")]
    print(f"[{arm}] first LIVE {result.get('first_live_s')}s; one view read "
          f"{result.get('gate_check_s')}s")
    for r in rounds:
        print(f"[{arm}] upgrade to {r['to']}: {r['result']}, LIVE after {r['live_after_s']}s "
              f"({r['gate_checks']} gate check(s)), old gone after {r['total_s']}s; RSS "
              f"{r['rss_one_generation_mb']} -> {r['rss_peak_mb']} MB ({r['rss_peak_envoys']} "
              f"Envoys); p99 {r['p99_ratio']}x; failed {r['failed_before']}/{r['failed_during']} "
              f"of {r['requests']}")
    if ratios:
        print(f"[{arm}] p99 during/before, median of {len(ratios)}: "
              f"{statistics.median(ratios)}x")


if __name__ == "__main__":
    sys.exit(main())
