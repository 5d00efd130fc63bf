"""`meshctl rollout` at scale: 500 simulated pods, `--max-parallel 50`, on kmock's API
server over real HTTP, with a fast fake kubelet (no Envoy: containers are entries in a
table, ready 50 ms after they start).

What it measures, for the rollout CLI only (it runs as its own process, `python -m meshctl
rollout ... -o json`; the API server and the kubelet run in this one):
  - pods per minute: pods upgraded / the rollout's own elapsed time (from its summary);
  - API requests per pod: the CLI's requests as the API server saw them (the list, the watch
    connections, each pod's patches and Event), over the pods started; checked against the
    CLI's own count in its JSON summary;
  - the CLI's CPU time per pod: user + system time of the whole CLI process (interpreter start
    and imports included), and of the rollout alone (`cpu_s` in its summary), over the pods.
Targets (issue 6): at most 8 API requests per pod on average; under 10 ms of CPU per pod.

    python bench/rollout_scale.py                                 # 500 pods, ~1-2 min
    python bench/rollout_scale.py --pods 100 --json ''            # a quick look, no file
    python bench/rollout_scale.py --json bench/results/rollout_scale.json

Prints a small Markdown table on stdout (progress on stderr) and writes the figures as JSON;
exits 1 when a target is missed or the rollout did not upgrade every pod. Not a test: the
figures depend on the machine (how many CPUs, how busy), which the report records.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this checkout's meshctl, and its kubesim

import urllib3  # noqa: E402
from kubernetes import client as k8s  # noqa: E402
from kubesim.apiserver import LeanApiServer  # noqa: E402
from kubesim.kubelet import FakeImage, FakeKubelet, FakeRuntime  # noqa: E402

from meshctl.podswap.inject import InjectOptions, inject_object  # noqa: E402

NAMESPACE = "shop"
PROXY_OLD = "registry.example/meshctl/proxy:1.39.3"
PROXY_NEW = "registry.example/meshctl/proxy:1.40.0"
SELECTOR = "app=web"
BENCH_AGENT = "rollout-bench"
KUBELET_AGENT = "fake-kubelet"
TARGET_REQUESTS_PER_POD = 8.0
TARGET_CPU_MS_PER_POD = 10.0
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.2f}s] {message}", file=sys.stderr, flush=True)


class FastKubelet(FakeKubelet):
    """The tests' fake kubelet, reconciling only the pods that changed since it last looked
    (or that still wait for a container to get ready), instead of every pod on every wake: at
    500 pods the full pass would make the kubelet, not meshctl, the bottleneck."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen: dict[str, str] = {}  # pod name -> the resourceVersion last reconciled

    def _reconcile(self, name: str, pod: dict[str, Any]) -> None:
        version = str((pod.get("metadata") or {}).get("resourceVersion"))
        state = self._pods.get(name)
        settled = state is not None and state.settled
        if self._seen.get(name) == version and settled:
            return
        self._seen[name] = version
        super()._reconcile(name, pod)


def client(url: str, agent: str) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    configuration.host = url
    api = k8s.ApiClient(configuration)
    api.user_agent = agent
    return api


def web_pod(index: int) -> dict[str, Any]:
    """A pod `web-NNNN` as `meshctl inject` writes it: slot a on PROXY_OLD, slot b standing by."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"web-{index:04d}", "namespace": NAMESPACE,
                        "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
    injected, _ = inject_object(pod, InjectOptions(image=PROXY_OLD))
    return injected


def wait_all_ready(core: k8s.CoreV1Api, count: int, timeout_s: float) -> None:
    """One list per half second until every pod is Ready (not one read per pod)."""
    deadline = time.monotonic() + timeout_s
    ready = 0
    while time.monotonic() < deadline:
        response = cast(urllib3.HTTPResponse, core.list_namespaced_pod(
            NAMESPACE, label_selector=SELECTOR, _preload_content=False))
        pods = json.loads(response.data)["items"]
        ready = sum(1 for p in pods if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (p.get("status") or {}).get("conditions") or []))
        if ready == count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"only {ready} of {count} pods Ready within {timeout_s:g}s")


@contextlib.contextmanager
def cluster(pods: int, ready_after_s: float) -> Iterator[tuple[LeanApiServer, k8s.CoreV1Api]]:
    """The API server and the kubelet, with `pods` injected pods Ready on it."""
    api = LeanApiServer()
    api.start()
    bench_client = client(api.url, BENCH_AGENT)
    kubelet_client = client(api.url, KUBELET_AGENT)
    kubelet = FastKubelet(kubelet_client, NAMESPACE,
                          FakeRuntime(default=FakeImage(ready_after_s=ready_after_s)))
    try:
        kubelet.start()
        core = k8s.CoreV1Api(bench_client)
        log(f"creating {pods} pods")
        for i in range(pods):
            # The client sends a dict body as it is (its stubs want a V1Pod).
            core.create_namespaced_pod(NAMESPACE, web_pod(i))  # type: ignore[arg-type]
        wait_all_ready(core, pods, timeout_s=60 + pods * 0.2)
        log(f"{pods} pods Ready")
        yield api, core
    finally:
        try:
            kubelet.stop()
        finally:
            bench_client.close()  # type: ignore[no-untyped-call]
            kubelet_client.close()  # type: ignore[no-untyped-call]
            api.stop()


_PROFILED = """import cProfile, sys, time
from meshctl.cli.app import app
out = sys.argv.pop(1)
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(app, prog_name="meshctl")
finally:
    profile.dump_stats(out)
    print(f"main thread CPU {time.thread_time():.2f}s of {time.process_time():.2f}s",
          file=sys.stderr)
"""


def run_cli(kubeconfig: Path, max_parallel: int, timeout_s: float,
            profile: str | None = None) -> dict[str, Any]:
    """`meshctl rollout` as its own process; its summary, exit code, events and CPU time."""
    # A CPU-time profile (cProfile's default timer is the wall clock).
    python = [sys.executable, *(["-c", _PROFILED, profile] if profile else ["-m", "meshctl"])]
    argv = [*python, "rollout", "--selector", SELECTOR, "--image",
            PROXY_NEW, "--max-parallel", str(max_parallel), "--max-failures", "5",
            "--timeout", str(timeout_s), "-o", "json", "--kubeconfig", str(kubeconfig)]
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "MESHCTL_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                      env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                              timeout=timeout_s + 120, check=False)
        err.seek(0)
        stderr = err.read()
    wall_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    try:
        summary = json.loads(done.stdout)
    except ValueError as exc:
        raise RuntimeError(f"the rollout printed no summary (exit {done.returncode}): "
                           f"{stderr[-2000:]}") from exc
    return {"exit_code": done.returncode, "summary": summary, "events": events,
            "wall_s": wall_s,
            "cpu_user_s": after.ru_utime - before.ru_utime,
            "cpu_system_s": after.ru_stime - before.ru_stime}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(),
               "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp, \
            cluster(args.pods, args.ready_after_s) as (api, _core):
        kubeconfig = api.kubeconfig(Path(tmp) / "kubeconfig", namespace=NAMESPACE)
        seen_before = len(api.seen())
        log(f"meshctl rollout --max-parallel {args.max_parallel} over {args.pods} pods")
        cli = run_cli(kubeconfig, args.max_parallel, args.timeout, args.profile)
        log(f"done: exit {cli['exit_code']} in {cli['wall_s']:.1f}s")
        seen = [r for r in api.seen()[seen_before:]
                if r.user_agent not in (BENCH_AGENT, KUBELET_AGENT)]
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report(args, cli, seen, machine)


def report(args: argparse.Namespace, cli: Mapping[str, Any], seen: list[Any],
           machine: Mapping[str, Any]) -> dict[str, Any]:
    summary = cli["summary"]
    counts = summary["counts"]
    requests = summary["api_requests"]
    started = requests["pods_started"] or 1
    upgraded = counts["upgraded"]
    elapsed_s = summary["elapsed_s"]
    by_kind: dict[str, int] = {}
    for r in seen:
        kind = ("watch" if r.query.get("watch") == "true"
                else f"{r.method.lower()} {r.resource}")
        by_kind[kind] = by_kind.get(kind, 0) + 1
    cpu_process_s = cli["cpu_user_s"] + cli["cpu_system_s"]
    figures = {
        "pods_per_minute": round(upgraded / elapsed_s * 60, 1) if elapsed_s else None,
        "api_requests_per_pod": round(len(seen) / started, 2),
        "cpu_ms_per_pod": round(cpu_process_s / started * 1000, 2),
        "cpu_ms_per_pod_rollout_only": round(summary["cpu_s"] / started * 1000, 2),
    }
    targets = {
        "api_requests_per_pod_max": TARGET_REQUESTS_PER_POD,
        "cpu_ms_per_pod_max": TARGET_CPU_MS_PER_POD,
    }
    met = {
        "api_requests_per_pod": figures["api_requests_per_pod"] <= TARGET_REQUESTS_PER_POD,
        "cpu_ms_per_pod": figures["cpu_ms_per_pod"] < TARGET_CPU_MS_PER_POD,
        "all_upgraded": cli["exit_code"] == 0 and upgraded == args.pods,
    }
    return {
        "benchmark": "rollout_scale",
        "setup": {"pods": args.pods, "max_parallel": args.max_parallel,
                  "canary": summary["rollout"]["canary"],
                  "batches": len(summary["batches"]),
                  "kubelet": f"fake, in the bench process; containers ready "
                             f"{args.ready_after_s * 1000:g} ms after they start",
                  "api_server": "kmock KubernetesEmulator over HTTP, in the bench process",
                  "cli": "python -m meshctl rollout -o json, its own process"},
        "machine": dict(machine),
        "figures": figures,
        "targets": targets,
        "met": met,
        "rollout": {
            "exit_code": cli["exit_code"], "result": summary["result"], "counts": counts,
            "elapsed_s": elapsed_s, "cli_wall_s": round(cli["wall_s"], 3),
            "cpu_s_process": round(cpu_process_s, 3),
            "cpu_s_user": round(cli["cpu_user_s"], 3),
            "cpu_s_system": round(cli["cpu_system_s"], 3),
            "cpu_s_rollout_only": summary["cpu_s"],
            "api_requests_seen_by_server": len(seen),
            "api_requests_counted_by_cli": requests["total"],
            "api_requests_by_kind": dict(sorted(by_kind.items())),
            "watch_connections": requests["watch_connections"],
            "progress_events": len(cli["events"]),
        },
    }


def markdown(result: Mapping[str, Any]) -> str:
    f, t, m = result["figures"], result["targets"], result["met"]
    r, s = result["rollout"], result["setup"]

    def mark(ok: bool) -> str:
        return "yes" if ok else "**no**"

    rows = [
        "| figure | value | target | met |",
        "|---|---|---|---|",
        f"| pods per minute | {f['pods_per_minute']} | - | - |",
        f"| API requests per pod | {f['api_requests_per_pod']} | <= "
        f"{t['api_requests_per_pod_max']:g} | {mark(m['api_requests_per_pod'])} |",
        f"| CLI CPU per pod, whole process | {f['cpu_ms_per_pod']} ms | < "
        f"{t['cpu_ms_per_pod_max']:g} ms | {mark(m['cpu_ms_per_pod'])} |",
        f"| CLI CPU per pod, the rollout alone | {f['cpu_ms_per_pod_rollout_only']} ms | - | - |",
    ]
    machine = result["machine"]
    return "\n".join([
        f"{s['pods']} pods, --max-parallel {s['max_parallel']} (canary {s['canary']}, "
        f"{s['batches']} batches): exit {r['exit_code']} ({r['result']}), "
        f"{r['counts']['upgraded']} upgraded in {r['elapsed_s']:.1f}s; "
        f"{r['api_requests_seen_by_server']} requests "
        f"({', '.join(f'{k} {v}' for k, v in r['api_requests_by_kind'].items())}); "
        f"CPU {r['cpu_s_process']:.2f}s for the whole CLI process, "
        f"{r['cpu_s_rollout_only']:.2f}s in the rollout",
        "", *rows, "",
        f"{machine['cpus']} CPUs, load average {machine['loadavg_at_start']} at start, "
        f"{machine['loadavg_at_end']} at end; {machine['platform']}, Python {machine['python']}",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--max-parallel", type=int, default=50)
    parser.add_argument("--ready-after-s", type=float, default=0.05,
                        help="how long a fake container takes to get ready")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="the rollout's --timeout, seconds")
    parser.add_argument("--profile", metavar="FILE",
                        help="run the CLI under cProfile, its stats to FILE (slows it down)")
    parser.add_argument("--json", default=str(ROOT / "bench/results/rollout_scale.json"),
                        help="where to write the figures ('' for nowhere)")
    args = parser.parse_args()
    # The server's and the kubelet's threads share this process: keep the GIL switches short.
    sys.setswitchinterval(0.001)
    threading.excepthook = lambda hook: log(f"thread {hook.thread}: {hook.exc_value!r}")
    result = measure(args)
    print(markdown(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        log(f"written to {args.json}")
    return 0 if all(result["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
