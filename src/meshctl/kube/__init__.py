"""The Kubernetes client: the only package that imports `kubernetes`.

  client     `Kube`: a pod's get, JSON patch and wait; Events; the fleet's paged list and
             watch; retries with backoff and the request count
  watch      the one watch implementation: a stream read by a thread, typed events
  errors     the API's failures as meshctl errors (`NotFound`, `Conflict`, `Forbidden`, ...)
  config     `connect()`: the kubeconfig or the in-cluster service account
  corev1     the few core/v1 calls, without the client's costly `CoreV1Api`
  policyv1   PodDisruptionBudgets as typed values (`Kube.list_pod_disruption_budgets`)

Callers import from here (`from meshctl import kube`); objects are plain dicts, as the API
sends them, and every failure is a `KubeError`.
"""

from meshctl.kube.client import Kube, KubeSettings
from meshctl.kube.config import connect
from meshctl.kube.corev1 import CoreV1
from meshctl.kube.errors import (
    ApiUnavailable,
    ConfigError,
    Conflict,
    Forbidden,
    Invalid,
    KubeError,
    NotFound,
    WatchExpired,
)
from meshctl.kube.policyv1 import (
    LabelSelector,
    Operator,
    PodDisruptionBudget,
    Requirement,
)
from meshctl.kube.watch import EventType, PodEvent, PodWatch

__all__ = [
    "ApiUnavailable", "ConfigError", "Conflict", "CoreV1", "EventType", "Forbidden", "Invalid",
    "Kube", "KubeError", "KubeSettings", "LabelSelector", "NotFound", "Operator",
    "PodDisruptionBudget", "PodEvent", "PodWatch", "Requirement", "WatchExpired", "connect",
]
