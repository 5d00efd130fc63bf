"""A client from the kubeconfig or the in-cluster service account, and the throttle on its
credential refresh."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from meshctl.kube.client import Kube, KubeSettings
from meshctl.kube.errors import ConfigError

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REFRESH_CREDENTIALS_EVERY_S = 10.0
"""How often the kubeconfig's credentials are checked for renewal (the client would check
before every request)."""


def connect(kubeconfig: Path | None = None, context: str | None = None,
            settings: KubeSettings | None = None) -> Kube:
    """A client from the kubeconfig (`--kubeconfig`, else $KUBECONFIG or ~/.kube/config) and
    context; with neither given and inside a pod, the in-cluster service account."""
    in_cluster = (kubeconfig is None and context is None and not os.environ.get("KUBECONFIG")
                  and bool(os.environ.get("KUBERNETES_SERVICE_HOST")))
    configuration = k8s.Configuration()
    namespace = "default"
    try:
        if in_cluster:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
            if _SA_NAMESPACE.exists():
                namespace = _SA_NAMESPACE.read_text().strip() or namespace
        else:
            path = str(kubeconfig) if kubeconfig else None
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context, client_configuration=configuration)
            namespace = _context_namespace(path, context) or namespace
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        source = "in-cluster config" if in_cluster else f"kubeconfig {kubeconfig or '(default)'}"
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(f"cannot load the {source}"
                          + (f" (context {context})" if context else "") + f": {detail}") from exc
    # Retries are ours (tenacity, with backoff); urllib3's own would multiply them.
    configuration.retries = False
    hook = getattr(configuration, "refresh_api_key_hook", None)
    if hook is not None:
        # The client's stub types the hook as None (it is an untyped callable).
        throttled: Any = ThrottledRefresh(hook, REFRESH_CREDENTIALS_EVERY_S)
        configuration.refresh_api_key_hook = throttled
    return Kube(k8s.ApiClient(configuration), default_namespace=namespace, settings=settings)


class ThrottledRefresh:
    """The kubeconfig loader's credential refresh hook, run at most once per `every_s`.

    The client runs the hook before every request; it renews a token that expires within 5
    minutes (exec plugins, OIDC) and then sets the host, certificates and proxy again, which
    re-reads the whole environment for proxy variables: a quarter of the client's CPU per
    request, for nothing in between renewals. Once per `every_s` (far below those 5 minutes)
    still renews every token in time."""

    def __init__(self, hook: Callable[[Any], None], every_s: float) -> None:
        self._hook = hook
        self._every_s = every_s
        self._last = -math.inf
        self._lock = threading.Lock()

    def __call__(self, configuration: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._every_s:
                return
            self._last = now
            self._hook(configuration)
            # The loader's hook installs a fresh hook of its own each time it runs.
            fresh = getattr(configuration, "refresh_api_key_hook", None)
            if fresh is not None and fresh is not self:
                self._hook = fresh
                configuration.refresh_api_key_hook = self


def _context_namespace(path: str | None, context: str | None) -> str | None:
    contexts, current = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=path)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return ((chosen or {}).get("context") or {}).get("namespace")
