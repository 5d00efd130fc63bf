"""The NotReady window of an in-pod swap, per probe configuration: how long the pod's Ready
condition is False, and how many times it flips, through `meshctl upgrade --pod`, on kubesim
(kmock's API server over real HTTP, and the fake kubelet, which follows the real kubelet's
readiness rules: a PLEG relist every second, probe workers on their own tickers, a probe
triggered when a sync finds a started container not ready; see kubesim/readiness.py).

Two runtimes:
  fake     containers are table entries; the new proxy answers its readiness probe
           `--live-s` after its start (its hot restart to LIVE), the standby `--standby-s`
           after its start, and the new image takes `--pull-s` to pull unless pre-pulled;
  process  real processes: `meshctl run --slot` with Envoy 1.39.3 -> 1.40.0, `meshctl
           standby` (tests/k8s/process_runtime.py); it also times each slot's own readiness
           (its health port polled every 20 ms from its start), the figures the fake runtime
           takes.

Each run: a fresh injected pod (so that the probe tickers start at a random phase), Ready,
then a random pause within the probe period, then the swap to a new image tag (never on the
node unless `--prepull`); the swap's own `not_ready` report gives the windows.

    python bench/pod_readiness.py --runs 20                         # fake, every config
    python bench/pod_readiness.py --runtime process --runs 3 --configs current,period-1
    python bench/pod_readiness.py --pull-s 3 --configs period-1 --prepull no,node,meshctl

Prints a Markdown table on stdout (progress on stderr); `--json FILE` writes the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import http.client
import importlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this checkout's meshctl, kubesim and tests

from kubernetes import client as k8s  # noqa: E402
from kubesim.apiserver import ApiServer  # noqa: E402
from kubesim.kubelet import FakeImage, FakeKubelet, FakeRuntime, Runtime  # noqa: E402

from meshctl import kube  # noqa: E402
from meshctl.podswap import layout  # noqa: E402
from meshctl.podswap.inject import InjectOptions, inject_object  # noqa: E402
from meshctl.podswap.swap import SwapSettings, upgrade_pod  # noqa: E402

NAMESPACE = "shop"
PROXY_OLD = "registry.example/meshctl/proxy:1.39.3"
PROXY_NEW = "registry.example/meshctl/proxy:1.40.0"
STANDBY = layout.DEFAULT_STANDBY_IMAGE
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.2f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Probes:
    """The probes on both slot containers."""

    readiness: Mapping[str, Any]
    startup: Mapping[str, Any] | None = None

    def apply(self, pod: dict[str, Any]) -> None:
        for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
            if c["name"].startswith(layout.CONTAINER_PREFIX):
                c["readinessProbe"] = {**c["readinessProbe"], **self.readiness}
                if self.startup is not None:
                    c["startupProbe"] = {"httpGet": dict(c["readinessProbe"]["httpGet"]),
                                         **self.startup}
                else:
                    c.pop("startupProbe", None)


CONFIGS = {
    "current": Probes({"periodSeconds": 2, "failureThreshold": 2}),
    "period-1": Probes({"periodSeconds": 1, "failureThreshold": 2}),
    "period-10": Probes({"periodSeconds": 10, "failureThreshold": 3}),
    "startup-1": Probes({"periodSeconds": 10, "failureThreshold": 3},
                        startup={"periodSeconds": 1, "failureThreshold": 300}),
    "startup-1-ready-2": Probes({"periodSeconds": 2, "failureThreshold": 2},
                                startup={"periodSeconds": 1, "failureThreshold": 300}),
}
"""`current`: what `meshctl inject` wrote before this measurement (period 2 s)."""


def web_pod(name: str, probes: Probes, native: bool) -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
    injected, _ = inject_object(pod, InjectOptions(image=PROXY_OLD, native_sidecars=native))
    probes.apply(injected)
    return injected


class SlotClock:
    """Times each proxy slot's own readiness in a process runtime: from the container's start
    to the first 200 of its health port (polled every 20 ms)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.live_s: dict[str, list[float]] = {}

    def watch(self, image: str, container_id: str, port: int | None) -> None:
        if port is None:
            return
        started = time.monotonic()

        def poll() -> None:
            while time.monotonic() - started < 60:
                proc = self.runtime.procs.get(container_id)
                if proc is None or proc.popen.poll() is not None:
                    return
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
                try:
                    conn.request("GET", layout.READY_PATH)
                    if conn.getresponse().status == 200:
                        self.live_s.setdefault(image, []).append(time.monotonic() - started)
                        return
                except OSError:
                    pass
                finally:
                    conn.close()
                time.sleep(0.02)

        threading.Thread(target=poll, daemon=True).start()


@contextlib.contextmanager
def process_runtime(root: Path, images: Sequence[str]) -> Iterator[tuple[Runtime, SlotClock]]:
    # The tests' own helpers (their Envoy binaries, config and process runtime), loaded by
    # name: they are not part of what mypy checks here.
    shared = importlib.import_module("tests.conftest")
    integration = importlib.import_module("tests.integration.conftest")
    ProcessRuntime = importlib.import_module("tests.k8s.process_runtime").ProcessRuntime
    Ports, envoy_config = integration.Ports, integration.envoy_config

    from meshctl.envoy.binary import embedded_binary  # noqa: PLC0415

    meshctl = [sys.executable, "-m", "meshctl"]
    old = shared.old_envoy_dir() / "envoy" / "_bin" / "envoy"
    table = {PROXY_OLD: [*meshctl, "run", "--envoy", str(old)], STANDBY: [*meshctl, "standby"]}
    table |= {image: [*meshctl, "run", "--envoy", str(embedded_binary())] for image in images}

    class Timed(ProcessRuntime):  # type: ignore[misc,valid-type]
        def start(self, pod: Mapping[str, Any], container_name: str, image: str,
                  args: Sequence[str]) -> str:
            cid = str(super().start(pod, container_name, image, args))
            timer.watch(image, cid, self.procs[cid].health_port)
            return cid

    runtime = Timed(root, table, config=envoy_config(root / "envoy.yaml", Ports()))
    timer = SlotClock(runtime)
    try:
        yield runtime, timer
    finally:
        runtime.stop_all()


def wait_stopped(runtime: Any, pod: str, timeout_s: float = 90.0) -> None:
    """Until every process of `pod` has ended (the kubelet stops them once it sees the pod
    deleted)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in runtime.procs.values()
                 if p.log.name.startswith(f"{pod}-") and p.popen.poll() is None]
        if not alive:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the processes of {pod} did not end within {timeout_s:g}s")


def fake_runtime(args: argparse.Namespace, images: Sequence[str]) -> FakeRuntime:
    live = FakeImage(ready_after_s=args.live_s, pull_s=args.pull_s)
    runtime = FakeRuntime({PROXY_OLD: FakeImage(ready_after_s=args.live_s),
                           STANDBY: FakeImage(ready_after_s=args.standby_s),
                           **dict.fromkeys(images, live)},
                          default=FakeImage(ready_after_s=0.0))
    runtime.pull(PROXY_OLD)
    runtime.pull(STANDBY)
    return runtime


def windows(not_ready: Mapping[str, Any]) -> list[float]:
    """The NotReady windows of one swap, in order (seconds)."""
    out, down = [], None
    for t in not_ready["transitions"]:
        if not t["ready"]:
            down = t["seen_s"]
        elif down is not None:
            out.append(t["seen_s"] - down)
            down = None
    return out


def measure(args: argparse.Namespace, name: str, prepull: str) -> dict[str, Any]:
    """`prepull`: "no"; "node": the image put on the node beforehand (as a DaemonSet would);
    "meshctl": `upgrade --pod --prepull` (an ephemeral container, inside the swap)."""
    probes = CONFIGS[name]
    period = float(probes.readiness.get("periodSeconds", 10))
    images = [f"{PROXY_NEW}-r{i}" for i in range(args.runs)]
    api = ApiServer()
    api.start()
    with tempfile.TemporaryDirectory(prefix="mcr-") as tmp, contextlib.ExitStack() as stack:
        timer: SlotClock | None = None
        runtime: Runtime
        if args.runtime == "process":
            runtime, timer = stack.enter_context(process_runtime(Path(tmp), images))
        else:
            runtime = fake_runtime(args, images)
        configuration = k8s.Configuration()
        configuration.host = api.url
        node_client = k8s.ApiClient(configuration)
        node_client.user_agent = "fake-kubelet"
        kubelet = FakeKubelet(node_client, NAMESPACE, runtime, relist_s=args.relist_s)
        kubelet.start()
        stack.callback(api.stop)
        stack.callback(node_client.close)
        stack.callback(kubelet.stop)
        core = k8s.CoreV1Api(node_client)
        meshctl = kube.connect(api.kubeconfig(Path(tmp) / "kubeconfig", NAMESPACE))
        stack.callback(meshctl.close)
        runs = []
        for i, image in enumerate(images):
            pod = web_pod(f"web-{i:02d}", probes, args.native_sidecars)
            core.create_namespaced_pod(NAMESPACE, copy.deepcopy(pod))  # type: ignore[arg-type]
            kubelet.wait_ready(pod["metadata"]["name"], timeout_s=120)
            if prepull == "node" and isinstance(runtime, FakeRuntime):
                time.sleep(max(0.0, runtime.pull(image) - time.monotonic()))
            time.sleep(random.uniform(0, period))  # the tickers' phase at the swap: any
            result = upgrade_pod(meshctl, NAMESPACE, pod["metadata"]["name"], image,
                                 settings=SwapSettings(timeout_s=120, retire_timeout_s=120,
                                                       prepull=prepull == "meshctl"))
            if result.result != "succeeded" or result.not_ready is None:
                raise RuntimeError(f"run {i}: {result.result}: {result.error}")
            runs.append({"not_ready_s": result.not_ready["not_ready_s"],
                         "flips": result.not_ready["ready_flips"],
                         "windows": [round(w, 3) for w in windows(result.not_ready)],
                         "swap_s": result.steps[-1].elapsed_s})
            log(f"{name} prepull {prepull} run {i}: {runs[-1]}")
            core.delete_namespaced_pod(pod["metadata"]["name"], NAMESPACE)
            if timer is not None:  # the next pod's Envoy binds the same ports: wait for these
                wait_stopped(runtime, pod["metadata"]["name"])
        live = ({k: v for k, v in timer.live_s.items()} if timer is not None else None)
    return {"config": name, "prepull": prepull, "probes": {"readiness": dict(probes.readiness),
            "startup": dict(probes.startup) if probes.startup else None},
            "runs": runs, "summary": summarize(runs), "slot_ready_s": live}


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def stats(values: Sequence[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"mean": round(statistics.fmean(ordered), 3),
                "median": round(statistics.median(ordered), 3),
                "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
                "max": round(ordered[-1], 3)}

    return {"not_ready_s": stats([r["not_ready_s"] for r in runs]),
            "new_slot_s": stats([r["windows"][0] for r in runs if r["windows"]]),
            "old_slot_s": stats([r["windows"][1] for r in runs if len(r["windows"]) > 1]),
            "flips": stats([r["flips"] for r in runs]),
            "swap_s": stats([r["swap_s"] for r in runs])}


def table(results: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| probes | pre-pull | NotReady total: mean / p90 / max (s) | new slot mean (s) | "
             "old slot mean (s) | flips | swap (s) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        lines.append(
            f"| {r['config']} | {r['prepull']} | "
            f"{s['not_ready_s']['mean']:.2f} / {s['not_ready_s']['p90']:.2f} / "
            f"{s['not_ready_s']['max']:.2f} | {s['new_slot_s']['mean']:.2f} | "
            f"{s['old_slot_s']['mean']:.2f} | {s['flips']['mean']:.1f} | "
            f"{s['swap_s']['mean']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=("fake", "process"), default="fake")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--live-s", type=float, default=1.0,
                        help="fake: the new proxy's start to its /healthz/ready 200")
    parser.add_argument("--standby-s", type=float, default=0.4,
                        help="fake: the standby's start to its /healthz/ready 200")
    parser.add_argument("--pull-s", type=float, default=0.0,
                        help="fake: the new image's pull, when not on the node")
    parser.add_argument("--prepull", default="no",
                        help="comma-separated: no, node (beforehand, as a DaemonSet would), "
                             "meshctl (upgrade --pod --prepull)")
    parser.add_argument("--native-sidecars", action="store_true")
    parser.add_argument("--relist-s", type=float, default=1.0,
                        help="the kubelet's PLEG relist period (0: Evented PLEG, KEP-3386)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    prepulls = args.prepull.split(",")
    results = []
    for name in args.configs.split(","):
        for prepull in prepulls:
            results.append(measure(args, name, prepull))
            if args.json:  # after each configuration: a later failure keeps the figures
                Path(args.json).write_text(json.dumps({
                    "args": vars(args), "machine": {"cpus": os.cpu_count(),
                                                    "platform": platform.platform(),
                                                    "loadavg": os.getloadavg()},
                    "results": results}, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
