"""The chaos run of issue 17, long form: upgrades and restarts of a supervised Envoy under load,
with faults injected at seeded moments and invariants checked after every step (`chaos/`).

    python bench/chaos_run.py --seed 1 --steps 80
    python bench/chaos_run.py --help
"""

from __future__ import annotations

import sys

from chaos.run import main

if __name__ == "__main__":
    sys.exit(main())
