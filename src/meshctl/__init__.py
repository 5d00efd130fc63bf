"""meshctl: upgrade Envoy sidecars in place, through Envoy's hot restart, without losing requests.

Where things live:
  envoy/    the only package that knows Envoy: binary, argv, admin API, hot-restart files,
            the xDS gate
  manager/  the supervisor: generations, lifecycle phases, state dir, control socket
  drain/    the drain window: when an old generation is done
  kube/     the Kubernetes client (the only package importing `kubernetes`)
  podswap/  the in-pod image swap (two proxy slots)
  rollout/  the fleet rollout over many pods
  demo/     `meshctl demo`, and a real ADS control plane
  cli/      the typer command line, thin over the above
"""

__version__ = "0.1.0"
