"""The supervisor: it launches Envoy generations, upgrades them, and keeps the state dir.

- `phase`:      the supervisor's lifecycle, one enum and one transition table
- `process`:    mechanism for one child process (spawn, signal, reap); no policy
- `generation`: one Envoy generation: its process, admin client, timings
- `initwatch`:  gives a generation born at idle priority its normal one when it starts serving
- `stopper`:    the named escalation that ends a process (ask, wait, kill, report)
- `state`:      the state dir: lock, atomic state file, history
- `control`:    the Unix control socket the CLI talks to
- `supervisor`: the main loop and the policy: start, upgrade, drain, stop
"""
