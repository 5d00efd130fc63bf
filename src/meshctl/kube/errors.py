"""The Kubernetes API's failures as meshctl's own errors, each with its exit code: what a
caller catches (`NotFound`, `Conflict`, `Forbidden`, ...) instead of the client's
`ApiException`, and the one-line message that names the call and why it failed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s

from meshctl.errors import MeshctlError
from meshctl.exitcodes import ExitCode

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Retried with backoff; after the last attempt, `ApiUnavailable`."""
GONE = 410


class KubeError(MeshctlError):
    """A Kubernetes API call failed; the message is one line naming what and why."""

    exit_code = ExitCode.FAILED


class NotFound(KubeError):
    """The object (or its namespace) does not exist: refused before any change."""

    exit_code = ExitCode.PREFLIGHT


class Forbidden(KubeError):
    """RBAC (403) or authentication (401) refused the request: refused before any change."""

    exit_code = ExitCode.PREFLIGHT


class Conflict(KubeError):
    """The object changed meanwhile (409, or 422 from a failed JSON-patch `test`)."""

    exit_code = ExitCode.BUSY


class Invalid(KubeError):
    """The API server refused the request as invalid (422, 400)."""

    exit_code = ExitCode.FAILED


class ApiUnavailable(KubeError):
    """No answer after the retries: 429, 5xx or connection errors all along."""

    exit_code = ExitCode.FAILED


class ConfigError(KubeError):
    """No usable kubeconfig, context or in-cluster configuration."""

    exit_code = ExitCode.BAD_INPUT


class WatchExpired(KubeError):
    """The watch's resourceVersion is too old (410 Gone): list again, then watch again."""


@dataclass(frozen=True)
class ApiCall:
    """What a request was for, as the error messages name it."""

    verb: str
    resource: str
    namespace: str
    name: str | None = None

    def what(self) -> str:
        singular = self.resource.removesuffix("s")
        if self.name:
            return f"{singular} {self.namespace}/{self.name}"
        return f"{self.resource} in namespace {self.namespace}"


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, k8s.ApiException):
        return exc.status in TRANSIENT_STATUSES
    return isinstance(exc, urllib3.exceptions.HTTPError)


def from_api_exception(exc: k8s.ApiException, call: ApiCall, attempts: int) -> KubeError:
    body: Any = None
    if exc.body:
        try:
            body = json.loads(exc.body)
        except ValueError:
            body = None
    status = body if isinstance(body, dict) else {"code": exc.status, "message": exc.reason}
    status.setdefault("code", exc.status)
    error = from_status(status, call)
    if int(exc.status or 0) in TRANSIENT_STATUSES:
        return ApiUnavailable(f"the API server did not {call.verb} {call.what()} after "
                              f"{attempts} attempts: HTTP {exc.status} {_message(status)}")
    return error


def from_status(status: Mapping[str, Any], call: ApiCall) -> KubeError:
    """The error of a `Status` object: an HTTP error's body, or a watch's ERROR event."""
    code = int(status.get("code") or 0)
    message = _message(status)
    if code == 403:
        return Forbidden(f"forbidden: cannot {call.verb} {call.resource} in namespace "
                         f"{call.namespace} (needs RBAC verb {call.verb} on {call.resource})")
    if code == 401:
        return Forbidden(f"unauthorized: the API server refused the credentials to "
                         f"{call.verb} {call.what()} ({message})")
    if code == 404:
        return NotFound(f"{call.what()} not found")
    if code == 409:
        return Conflict(f"{call.what()} changed meanwhile: {message}")
    if code == 422 and call.verb == "patch":
        # A failed JSON-patch `test` is a 422: the object is no longer what we planned from.
        return Conflict(f"{call.what()} is not as planned (a patch test failed): {message}")
    if code in (400, 422):
        return Invalid(f"the API server refused to {call.verb} {call.what()}: {message}")
    if code in TRANSIENT_STATUSES:
        return ApiUnavailable(f"the API server failed to {call.verb} {call.what()}: HTTP "
                              f"{code} {message}")
    return KubeError(f"cannot {call.verb} {call.what()}: HTTP {code} {message}")


def short(exc: BaseException | None) -> str:
    """An exception in a few words, for one log line."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, k8s.ApiException):
        return f"HTTP {exc.status}"
    reason = getattr(exc, "reason", None)
    return " ".join(str(reason or exc).split())[:200]


def _message(status: Mapping[str, Any]) -> str:
    text = str(status.get("message") or status.get("reason") or "").strip()
    return " ".join(text.split())[:300]

