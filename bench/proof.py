"""Proof of zero loss: meshctl against the naive stop-and-start, every request accounted for.

Runs the four scenarios of `zeroloss.scenarios` (one upgrade at the highest sustainable rate, an
upgrade storm, slow requests with a long-lived TCP stream, failed upgrades), each against both
arms in this run, and writes a JSON result and a PNG timeline per scenario, then
docs/benchmarks.md with the tables and pictures.

    python bench/proof.py                  # the full run, about 8 minutes
    python bench/proof.py --smoke          # < 60 s, writes to /tmp/meshctl-proof-smoke/
    python bench/proof.py --scenarios storm,slow
    python bench/proof.py --report-only    # rebuild the PNGs and the page from the JSON

Exit status 1 when meshctl failed a request in scenario 1, 2 or 4 (the zero-loss targets);
the other targets (p99 ratio, supervisor CPU and RSS) are reported, met or not, in the page.
Bad input (an unknown scenario, --rounds, --rate-fraction or --cpus out of range) is one line on
stderr and exit status 1, before any supervisor, Envoy or load is started.
Run it in the foreground, as one command: Envoy dies with the process that started it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import (
    OLD_ENVOY,
    binary_version,
    check_binary,
    compile_meshctl,
    finish_machine_info,
    log,
    machine_info,
    new_envoy,
    workdir,
    write_json,
)
from zeroloss import analysis, cpus, report
from zeroloss.plot import plot_scenario
from zeroloss.scenarios import SCENARIOS, Settings, Suite, calibrate
from zeroloss.upstream import Upstream

REPO = Path(__file__).resolve().parents[1]
SMOKE_DIR = Path("/tmp/meshctl-proof-smoke")


def _paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    if args.smoke:
        results, images, docs = SMOKE_DIR / "results", SMOKE_DIR / "img", \
            SMOKE_DIR / "benchmarks.md"
    else:
        results, images, docs = (REPO / "bench" / "results" / "proof", REPO / "docs" / "img",
                                 REPO / "docs" / "benchmarks.md")
    return (args.results or results).absolute(), (args.images or images).absolute(), \
        (args.docs or docs).absolute()


OUTSIDE = "<outside the repository>"


def portable(path: str | Path) -> str:
    """A path as a result committed to the repository names it: relative to the repository
    when inside it, else only its last part (a home directory or a scratch folder of the
    machine that ran it says nothing to a reader of the results)."""
    absolute = Path(path).absolute()
    if absolute.is_relative_to(REPO):
        return absolute.relative_to(REPO).as_posix()
    return f"{OUTSIDE}/{absolute.name}"


def _command(argv: list[str]) -> str:
    """The command line as run, its absolute paths made `portable`."""
    args = [portable(a) if a.startswith("/") else a for a in argv]
    return "python bench/proof.py" + (" " + shlex.join(args) if args else "")


def portable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """`Settings.to_json()` with its paths (the binaries, the attempts folder) `portable`."""
    return {k: portable(v) if k in ("old_envoy", "new_envoy", "attempts_dir") and v else v
            for k, v in settings.items()}


def portable_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary as written to summary.json: every path `portable`."""
    out = dict(summary)
    for key in ("results", "images"):
        if isinstance(out.get(key), dict):
            out[key] = {k: portable(v) for k, v in out[key].items()}
    if isinstance(out.get("settings"), dict):
        out["settings"] = portable_settings(out["settings"])
    return out


def render(summary: dict[str, Any], scenarios: dict[str, dict[str, Any]], images: Path,
           docs: Path) -> None:
    """The PNGs and the page, from the results."""
    summary["images"] = {}
    for key, scen in scenarios.items():
        png = images / f"proof-{key}.png"
        plot_scenario(scen["title"], scen["arms"], png, subtitle=scen["what"])
        summary["images"][key] = str(png)
        log(f"picture written to {png}")
    page = report.build_markdown({**summary, "scenarios": scenarios}, docs)
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(page)
    log(f"page written to {docs}")


def run(args: argparse.Namespace, results: Path, images: Path, docs: Path) -> int:
    try:  # before anything runs: a bad --cpus is one line, nothing started
        partition = cpus.parse(args.cpus, cpus.available_cpus())
    except ValueError as exc:
        sys.exit(str(exc))
    old = check_binary(args.old_envoy)
    new = check_binary(args.new_envoy or new_envoy())
    versions = {"old": binary_version(old), "new": binary_version(new)}
    preset = Settings.smoke_run(old, new) if args.smoke else Settings.full_run(old, new)
    settings = dataclasses.replace(preset, old_version=versions["old"],
                                   new_version=versions["new"],
                                   workers=args.workers or preset.workers,
                                   rate_fraction=args.rate_fraction or preset.rate_fraction,
                                   rounds=args.rounds or preset.rounds,
                                   drain_strategy=args.drain_strategy or preset.drain_strategy,
                                   cpus=partition,
                                   attempts_dir=args.attempts and args.attempts.absolute())
    keys = list(SCENARIOS) if not args.scenarios else args.scenarios.split(",")
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    if settings.rounds < 1:
        sys.exit(f"--rounds must be at least 1, got {settings.rounds}")
    if not 0 < settings.rate_fraction <= 1:
        sys.exit(f"--rate-fraction must be in (0, 1], got {settings.rate_fraction:g}")
    started = time.monotonic()
    cpus.pin_self(partition)  # before any thread or child: they inherit it
    compile_meshctl()
    machine = machine_info()
    log(f"Envoy {versions['old']} -> {versions['new']}; scenarios {keys}; load average "
        f"{machine['loadavg_at_start']}; CPUs: {partition.describe()}")
    scenarios: dict[str, dict[str, Any]] = {}
    with workdir("mp-", args.keep) as work, \
            Upstream(processes=settings.upstream_processes,
                     prefix=partition.load_prefix()) as upstream:
        suite = Suite(settings, work, upstream)
        calibration = None
        if "one-upgrade" not in keys:
            calibration = calibrate(suite)
        for key in keys:
            scen = SCENARIOS[key](suite)
            scen["settings"] = portable_settings(settings.to_json())
            scen["envoy"] = versions
            scenarios[key] = scen
            write_json(results / f"{key}.json", scen)
        supervisor = suite.supervisor_summary()
    finish_machine_info(machine)
    summary: dict[str, Any] = {
        "command": _command(sys.argv[1:]),
        "generated_utc": machine["date_utc"], "duration_s": round(time.monotonic() - started, 1),
        "smoke": settings.smoke, "machine": machine, "envoy": versions,
        "settings": portable_settings(settings.to_json()), "supervisor": supervisor,
        "targets": analysis.targets(scenarios, supervisor),
        "results": {key: str(results / f"{key}.json") for key in scenarios},
        "calibration": calibration,
    }
    render(summary, scenarios, images, docs)
    write_json(results / "summary.json", portable_summary(summary))
    return _verdict(summary)


def _verdict(summary: dict[str, Any]) -> int:
    bad = 0
    for t in summary["targets"]:
        print(f"{'met    ' if t['met'] else 'NOT MET'}  {t['target']}: {t['value']}")
        if not t["met"] and "0 failed requests" in t["target"]:
            bad += 1
    return 1 if bad else 0


def report_only(results: Path, images: Path, docs: Path) -> int:
    summary = json.loads((results / "summary.json").read_text())
    # The scenarios' files beside the summary (the paths it records are `portable`).
    summary["results"] = {key: str(results / f"{key}.json") for key in summary["results"]}
    scenarios = {key: json.loads(Path(path).read_text())
                 for key, path in summary["results"].items()}
    summary["targets"] = analysis.targets(scenarios, summary.get("supervisor"))
    render(summary, scenarios, images, docs)
    write_json(results / "summary.json", portable_summary(summary))
    return _verdict(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help=f"short run (< 60 s); outputs under {SMOKE_DIR} by default")
    parser.add_argument("--scenarios", help=f"comma-separated subset of {list(SCENARIOS)}")
    parser.add_argument("--workers", type=int, default=0,
                        help="load client processes (default 2)")
    parser.add_argument("--rate-fraction", type=float, default=0.0,
                        help="scenario 1's rate as a fraction of the closed-loop maximum "
                             "(default 0.3)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="scenario 1's rounds, each a fresh pair of arms, pooled for the "
                             "latency target (default 5; 1 with --smoke)")
    parser.add_argument("--drain-strategy", choices=["immediate", "gradual"], default=None,
                        help="meshctl's drain strategy in the meshctl arms (default gradual: "
                             "see docs/drain.md)")
    parser.add_argument("--cpus", default=cpus.AUTO,
                        help="which CPUs the proxy (this process, meshctl, Envoy, the upgrade "
                             "command) and the load (client, upstream, wrk) run on: auto (the "
                             "first half for the proxy, the rest for the load), none (shared), "
                             "or PROXY/LOAD as taskset lists, e.g. 0/1 (default auto)")
    parser.add_argument("--old-envoy", type=Path, default=OLD_ENVOY,
                        help=f"Envoy to upgrade from ({OLD_ENVOY})")
    parser.add_argument("--new-envoy", type=Path, default=None,
                        help="Envoy to upgrade to (default: the embedded 1.40.0)")
    parser.add_argument("--results", type=Path, help="folder of the JSON results "
                        "(default bench/results/proof)")
    parser.add_argument("--images", type=Path, help="folder of the PNGs (default docs/img)")
    parser.add_argument("--docs", type=Path, help="the page (default docs/benchmarks.md)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the PNGs and the page from the JSON results")
    parser.add_argument("--attempts", type=Path,
                        help="also write every arm's attempts (JSON, column-wise) to this folder")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (debugging)")
    args = parser.parse_args(argv)
    results, images, docs = _paths(args)
    if args.report_only:
        return report_only(results, images, docs)
    return run(args, results, images, docs)


if __name__ == "__main__":
    sys.exit(main())
