"""Everything meshctl knows about Envoy, and nothing else does.

- `binary`:     where the Envoy binary comes from, what version it is, pre-flight checks
- `argv`:       the command line and environment of one Envoy generation (pure)
- `admin`:      the admin API (readiness, server info, listeners, drain)
- `hotrestart`: the hot-restart files (domain sockets, shared memory) and their cleanup
- `threads`:    Envoy's thread names: the workers' start is the moment a generation serves
- `standin`:    the stand-in that answers for a parent generation that meshctl ended early

The supervisor (`meshctl.manager`) and the drain window (`meshctl.drain`) use only these
modules' public names, so another proxy could be added beside this package.
"""
