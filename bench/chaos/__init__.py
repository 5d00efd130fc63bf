"""The chaos run of issue 17: upgrades and restarts under load, with faults injected at seeded
moments, and invariants checked after every step.

The layers, from the pure parts up:

- `schedule`: the seeded list of steps (target binary, fault, moment, variant): pure.
- `causes`: why a request failed, from what the client saw and which processes were killed:
  pure.
- `load`: the per-request load client (zeroloss's HTTP/1.1 connections), every failure kept
  with its connection's serving generation.
- `site`: what one run needs on the machine: ports, configs (a static listener beside
  listeners from a real ADS control plane), bad binaries and configs, the state dir on a small
  tmpfs that can be filled.
- `watch`: the longest time without a LIVE generation, from status polled every 50 ms.
- `invariants`: one function per invariant checked after each step.
- `faults`: each fault kind, injected against a running supervisor through the CLI.
- `report`: the JSON and the printed table.
- `run`: the run itself (`bench/chaos_run.py`, and `tests/integration/test_chaos.py` in short).
"""
