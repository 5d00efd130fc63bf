"""meshctl: upgrade Envoy sidecars in place, through Envoy's hot restart, without losing requests.

Where things live:
  envoy/    the only package that knows Envoy: binary, argv, admin API, hot-restart files
  manager/  the supervisor: generations, lifecycle phases, state dir, control socket
  drain/    the drain window: when an old generation is done
  images/   the in-pod image swap (two proxy slots)
  cli/      the typer command line, thin over the above
"""

__version__ = "0.1.0"
