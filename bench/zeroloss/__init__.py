"""Proof of zero loss: meshctl's benchmark suite with per-request accounting.

Every request the load client sends is recorded (intended start, start, end, outcome, the
generation that served it), so a scenario's result says what happened to each request, not
only how many there were. The layers, from the wire up:

- `records`: the record of one attempt, the outcome names, the accounting (pure).
- `protocols`: HTTP/1.1 and HTTP/2 connections (asyncio protocols), one request -> an outcome.
- `client`: lanes, open-loop and closed-loop scheduling, the worker process, the multi-process
  load run.
- `upstream`: the HTTP server behind Envoy (asyncio, with a delay per request) and a TCP echo.
- `tcpstream`: one long-lived TCP stream through Envoy's tcp_proxy, pinged all along.
- `configs`: the Envoy configs of the scenarios.
- `arms`: the two ways to upgrade, meshctl and the naive stop-and-start, behind one interface.
- `analysis`: windows, percentiles, 100 ms bins, targets (pure).
- `plot`: the PNG timeline of a scenario.
- `report`: docs/benchmarks.md from the scenarios' JSON (pure).
- `scenarios`: the four scenarios, each run against both arms.

`bench/proof.py` runs everything.
"""
