"""The crash section of docs/benchmarks.md, from bench/results/crash_under_load.json
(bench/crash_under_load.py).

Written by `python bench/crash_under_load.py` between two markers, and again by
`python bench/proof.py` (report.py) when it writes the file anew, so neither run loses the
other's figures (as `xds_section` does for bench/xds_scale.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

START = "<!-- crash-under-load:start -->"
END = "<!-- crash-under-load:end -->"
RESULTS = Path(__file__).resolve().parents[1] / "results" / "crash_under_load.json"


def section(data: Mapping[str, Any]) -> str:
    machine = data.get("machine") or {}
    when = str(machine.get("date_utc") or "")
    lines = [
        START,
        "## A crash of the live Envoy under load (held sockets)",
        "",
        f"`python bench/crash_under_load.py`{f' ({when})' if when else ''}: hey with 8 "
        f"keep-alive and 4 new-connection workers for {data.get('duration_s')} s, Envoy 1.40.0 "
        f"under `meshctl run`, `kill -9` of the live Envoy at {data.get('kill_at_s')} s, both "
        "arms interleaved in one run; a prober connects every 2 ms. How the sockets are held: "
        "docs/reliability.md, \"Crashes refuse nothing\".",
        "",
        str(data.get("table") or "(no rounds)"),
        "",
        "Target: 0 refused connections and 0 failed requests on new connections; the few "
        "failures of the held arm are requests in flight on the killed process.",
        "",
        END,
    ]
    return "\n".join(lines)


def load() -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        return None
    return data if "rounds" in data else None


def splice(doc: str, data: Mapping[str, Any]) -> str:
    """`doc` with its crash section replaced (or appended)."""
    new = section(data)
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        _, tail = rest.split(END, 1)
        return head + new + tail
    return doc.rstrip() + "\n\n" + new + "\n"
