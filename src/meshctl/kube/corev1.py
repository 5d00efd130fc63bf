"""The core/v1 calls meshctl makes, over the official client's `ApiClient` (see `CoreV1`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client as k8s

JSON_PATCH = "application/json-patch+json"

_QUERY_NAMES = {
    "label_selector": "labelSelector", "field_selector": "fieldSelector", "limit": "limit",
    "_continue": "continue", "watch": "watch", "timeout_seconds": "timeoutSeconds",
    "allow_watch_bookmarks": "allowWatchBookmarks", "resource_version": "resourceVersion",
    "field_manager": "fieldManager",
}
_ACCEPT_JSON = {"Accept": "application/json"}


class CoreV1:
    """The core/v1 calls meshctl makes (a pod: read, patch, list, watch, add an ephemeral
    container; an Event: create),
    with the official client's `ApiClient` doing the work: authentication (the kubeconfig's
    credential refresh included), TLS, the connection pool and `ApiException` for non-2xx.

    Why not the client's own `CoreV1Api`: since kubernetes 37 its class body builds a pydantic
    validator for each of its ~400 methods, and importing it costs 1.5 CPU-s here, more than
    the rest of a `meshctl upgrade --pod` and a third of a 500-pod rollout's CPU. The
    arguments keep `CoreV1Api`'s names (`_preload_content` is accepted and ignored: a call
    always returns the raw urllib3 response, which the callers read as JSON or as a stream).
    """

    def __init__(self, api: k8s.ApiClient) -> None:
        self._api = api

    def read_namespaced_pod(self, name: str, namespace: str, **options: Any) -> Any:
        return self._request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}", options)

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, *,
                             _content_type: str = JSON_PATCH, **options: Any) -> Any:
        return self._request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", options,
                             body=body, content_type=_content_type)

    def patch_namespaced_pod_ephemeralcontainers(self, name: str, namespace: str, body: Any, *,
                                                 _content_type: str = JSON_PATCH,
                                                 **options: Any) -> Any:
        return self._request(
            "PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/ephemeralcontainers", options,
            body=body, content_type=_content_type)

    def create_namespaced_event(self, namespace: str, body: Any, **options: Any) -> Any:
        return self._request("POST", f"/api/v1/namespaces/{namespace}/events", options,
                             body=body, content_type="application/json")

    def list_namespaced_pod(self, namespace: str, **options: Any) -> Any:
        return self._request("GET", f"/api/v1/namespaces/{namespace}/pods", options)

    def list_pod_for_all_namespaces(self, **options: Any) -> Any:
        return self._request("GET", "/api/v1/pods", options)

    def _request(self, method: str, path: str, options: Mapping[str, Any], *,
                 body: Any = None, content_type: str | None = None) -> Any:
        timeout = options.get("_request_timeout")
        query = [(_QUERY_NAMES[key], value) for key, value in options.items()
                 if not key.startswith("_preload") and key != "_request_timeout"
                 and value is not None]
        headers = dict(_ACCEPT_JSON)
        if content_type:
            headers["Content-Type"] = content_type
        request = self._api.param_serialize(
            method=method, resource_path=path, query_params=query, header_params=headers,
            body=body, auth_settings=["BearerToken"])
        response = self._api.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()  # type: ignore[no-untyped-call]
            # from_response raises the status's subclass (403: ForbiddenException, ...).
            raise k8s.ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response
