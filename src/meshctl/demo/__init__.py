"""`meshctl demo`: the whole product in one command, on loopback, with the embedded Envoy.

- `loadgen`: a small HTTP load client on real sockets that accounts for every request
- `run`:     starts a supervisor, sends traffic, hot-upgrades it, reports served and failed
"""
