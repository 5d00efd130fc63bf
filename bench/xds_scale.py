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
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    OLD_ENVOY,
    Load,
    LoadSpec,
    Supervisor,
    check_binary,
    free_port,
    log,
    machine_info,
    new_envoy,
    workdir,
    write_json,
)
from meshctl.demo.controlplane import ControlPlane, bootstrap_yaml, mesh_snapshot
from meshctl.envoy import xds
from meshctl.envoy.admin import AdminClient
from meshctl.manager.state import StateDir
from zeroloss.upstream import HttpServer

RESULTS = Path(__file__).resolve().parent / "results" / "xds_scale.json"


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
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    old, new = check_binary(OLD_ENVOY), new_envoy()
    result: dict[str, Any] = {"machine": machine_info(), "listeners": args.listeners,
                              "clusters": args.clusters,
                              "endpoints": args.clusters * args.endpoints}
    with workdir("meshctl-xds-scale-") as root:
        upstream = HttpServer(host="0.0.0.0").start()  # every 127.0.x.y endpoint reaches it
        ports = [free_port() for _ in range(args.listeners)]
        t = time.monotonic()
        plane = ControlPlane(mesh_snapshot("1", ports, upstream.port, clusters=args.clusters,
                                           endpoints_per_cluster=args.endpoints)).start()
        log(f"snapshot built in {time.monotonic() - t:.1f}s: {args.listeners} listeners, "
            f"{args.clusters} clusters, {args.clusters * args.endpoints} endpoints")
        admin_port = free_port()
        config = root / "ads.yaml"
        config.write_text(bootstrap_yaml(node_id="scale", xds_port=plane.port,
                                         admin_port=admin_port, initial_fetch_timeout_s=None))
        sup = Supervisor(root, old, config, drain_min_s=1, drain_max_s=30)
        try:
            t = time.monotonic()
            sup.start(timeout_s=180)
            result["first_live_s"] = round(time.monotonic() - t, 2)
            status = sup.status()
            result["live_xds"] = {k: v for k, v in (status.get("xds") or {}).items()
                                  if k != "listeners"}
            result["live_listeners"] = len((status.get("xds") or {}).get("listeners") or {})
            live_admin = AdminClient(StateDir(sup.state_dir).admin_address_file(
                int(status["epoch"])))
            result["gate_check_s"] = round(view_read_s(live_admin), 4)
            log(f"LIVE after {result['first_live_s']}s; one gate check (read_view) takes "
                f"{result['gate_check_s'] * 1000:.0f} ms")
            url = f"http://127.0.0.1:{ports[0]}/"
            sampler = RssSampler(sup.proc.pid if sup.proc else 0).start()
            before = Load(url, LoadSpec(duration_s=args.load_s, wrk_connections=32,
                                        hey_workers=4), root).start().wait()
            result["rss_one_generation_mb"] = round(sampler.peak_mb, 1)
            sampler.peak_mb = 0.0
            during_load = Load(url, LoadSpec(duration_s=args.load_s, wrk_connections=32,
                                             hey_workers=4), root).start()
            time.sleep(2)
            run = sup.upgrade(new, config)
            during = during_load.wait()
            sampler.stop()
            result["rss_peak_mb"] = round(sampler.peak_mb, 1)
            result["rss_peak_envoys"] = sampler.peak_envoys
            record = run.record
            result["upgrade"] = {
                "exit_code": run.exit_code, "result": record.get("result"),
                "live_after_s": record.get("live_after_s"), "drain_s": record.get("drain_s"),
                "total_s": record.get("total_s"),
                "events": record.get("events"),
                "gate": {k: v for k, v in (record.get("xds") or {}).items()
                         if k in ("state", "checks", "parity")},
                "new": {k: v for k, v in ((record.get("xds") or {}).get("new") or {}).items()
                        if k != "listeners"},
            }
            result["load"] = {"before": before.to_json(), "during": during.to_json()}
            p99b = before.wrk.latency_ms.get("p99")
            p99d = during.wrk.latency_ms.get("p99")
            result["p99_ratio"] = round(p99d / p99b, 2) if p99b and p99d else None
            result["failed"] = {"before": before.failures, "during": during.failures}
        finally:
            sup.stop()
            plane.stop()
            upstream.close()
    write_json(args.out, result)
    up = result.get("upgrade", {})
    print(f"first LIVE {result.get('first_live_s')}s; upgrade {up.get('result')}: new LIVE "
          f"after {up.get('live_after_s')}s ({up.get('gate', {}).get('checks')} gate "
          f"check(s), one check {result.get('gate_check_s')}s), old gone after "
          f"{up.get('total_s')}s")
    print(f"RSS: one generation {result.get('rss_one_generation_mb')} MB, peak "
          f"{result.get('rss_peak_mb')} MB with {result.get('rss_peak_envoys')} Envoys")
    print(f"p99 during/before: {result.get('p99_ratio')}x; failed: {result.get('failed')}")
    return 0 if up.get("result") == "succeeded" and not any(
        (result.get("failed") or {}).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
