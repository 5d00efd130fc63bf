"""Where the slow requests of one arm are: per time bin, how many, and of which kind.

The report gives a window's p99; this answers "which 50 ms, which protocol, which generation"
from the attempts `proof.py --attempts DIR` wrote (docs/latency.md was made this way):

    python bench/zeroloss/breakdown.py DIR/one-upgrade-meshctl.json --from 8 --to 12

prints one line per bin with the bin's p50/p99 and the slow requests (slower than
`--slow-ms`) counted by mode, reused connection and serving generation. Pure functions below,
unit-tested; the command only reads the file and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `zeroloss` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zeroloss import analysis, records


@dataclass(frozen=True)
class Bin:
    start_s: float
    """Seconds from the load's start (by intended start, as everywhere in the report)."""
    requests: int
    p50_ms: float | None
    p99_ms: float | None
    slow: Counter[tuple[str, bool, str]]
    """Slow attempts by (mode, reused connection, generation)."""


def bins(attempts: Sequence[records.Attempt], load_start: float, *, from_s: float, to_s: float,
         bin_s: float = 0.05, slow_ms: float = 10.0) -> list[Bin]:
    """The bins of [from_s, to_s) that hold requests; latency from the intended start, over
    every attempt (a retried request shows both)."""
    grouped: dict[int, list[records.Attempt]] = {}
    for a in attempts:
        t = a.intended_s - load_start
        if from_s <= t < to_s:
            grouped.setdefault(int((t - from_s) // bin_s), []).append(a)
    out = []
    for index in sorted(grouped):
        members = grouped[index]
        latency = sorted((a.end_s - a.intended_s) * 1000 for a in members)
        slow = Counter((a.mode, a.reused, a.epoch) for a in members
                       if (a.end_s - a.intended_s) * 1000 > slow_ms)
        out.append(Bin(round(from_s + index * bin_s, 3), len(members),
                       analysis.percentile(latency, 50), analysis.percentile(latency, 99), slow))
    return out


def render(rows: Sequence[Bin]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = []
    for row in rows:
        kinds = ", ".join(f"{mode}{' reused' if reused else ''} gen {gen or '?'}: {n}"
                          for (mode, reused, gen), n in row.slow.most_common())
        lines.append(f"{row.start_s:8.2f}  n={row.requests:<5d} p50 {ms(row.p50_ms):>6} "
                     f"p99 {ms(row.p99_ms):>6}  slow {sum(row.slow.values()):<4d} {kinds}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attempts", type=Path, help="a file written by proof.py --attempts")
    parser.add_argument("--from", dest="from_s", type=float, default=0.0)
    parser.add_argument("--to", dest="to_s", type=float, default=float("inf"))
    parser.add_argument("--bin-ms", type=float, default=50.0)
    parser.add_argument("--slow-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.attempts.read_text())
        attempts = records.from_columns(data["attempts"])
        load_start = float(data["load_start"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"breakdown: cannot read {args.attempts}: {exc}", file=sys.stderr)
        return 2
    print(render(bins(attempts, load_start, from_s=args.from_s, to_s=args.to_s,
                      bin_s=args.bin_ms / 1000, slow_ms=args.slow_ms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
