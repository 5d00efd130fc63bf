"""The Kubernetes client: the only package that imports `kubernetes`.

  client     `Kube`: a pod's get, JSON patch and wait; Events; the fleet's paged list and
             watch; retries and the request count; `connect()` from a kubeconfig
  fleet      the watch over a selector's pods (moving into `client` and `watch`)

Callers import from here (`from meshctl import kube`); objects are plain dicts, as the API
sends them, and every failure is a `KubeError`.
"""

from meshctl.kube.client import (
    ApiUnavailable,
    ConfigError,
    Conflict,
    CoreV1,
    Forbidden,
    Invalid,
    Kube,
    KubeError,
    KubeSettings,
    NotFound,
    _Throttled,
    connect,
)
from meshctl.kube.fleet import FleetKube, PodEvent, PodWatch, WatchExpired

__all__ = [
    "ApiUnavailable", "ConfigError", "Conflict", "CoreV1", "FleetKube", "Forbidden", "Invalid",
    "Kube", "KubeError", "KubeSettings", "NotFound", "PodEvent", "PodWatch", "WatchExpired",
    "_Throttled", "connect",
]
