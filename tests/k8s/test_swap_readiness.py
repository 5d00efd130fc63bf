"""The NotReady window of an in-pod swap, as `meshctl upgrade --pod -o json` reports it,
against what the API server recorded: the kubelet's own status writes (the Ready condition
and its lastTransitionTime), read back from the server's request log."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubesim.apiserver import ApiServer
from kubesim.kubelet import FakeImage, FakeRuntime

from meshctl.exitcodes import ExitCode
from tests.k8s.conftest import APP_IMAGE, IMAGES, POD, PROXY_NEW, Invoke
from tests.k8s.ready_record import recorded_transitions, server_not_ready_s

NEW_READY_AFTER_S = 1.2
"""The new proxy answers its readiness probe this long after its start (its hot restart)."""


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime({**IMAGES, PROXY_NEW: FakeImage(ready_after_s=NEW_READY_AFTER_S)},
                       default=APP_IMAGE)


def test_the_swap_reports_each_ready_flip_the_api_server_recorded(
    meshctl: Invoke, api: ApiServer, running_pod: dict[str, Any]
) -> None:
    result = meshctl("upgrade", "--pod", POD, "--image", PROXY_NEW, "--timeout", "10",
                     "-o", "json")

    assert result.exit_code == ExitCode.OK, result.output
    window = json.loads(result.stdout)["not_ready"]
    recorded = recorded_transitions(api, POD)
    # Two restarts, two windows: the new slot until its first passing probe, then the old
    # slot until its standby passes one.
    assert [ready for ready, _ in recorded] == [False, True, False, True]
    assert window["ready_flips"] == 2
    assert window["ready_at_start"] is True and window["ready_at_end"] is True
    assert [(t["ready"], t["recorded"]) for t in window["transitions"]] == recorded
    # What meshctl measured (to the millisecond) against the server's times (to the second).
    assert abs(window["not_ready_s"] - server_not_ready_s(recorded)) <= 2 * 1.0
    assert window["not_ready_s"] >= NEW_READY_AFTER_S  # the new slot's window, at least
    seen = [t["seen_s"] for t in window["transitions"]]
    assert seen == sorted(seen)


def test_a_swap_that_changes_nothing_reports_no_window(
    meshctl: Invoke, running_pod: dict[str, Any]
) -> None:
    result = meshctl("upgrade", "--pod", POD, "--image", PROXY_NEW, "--dry-run", "-o", "json")
    assert result.exit_code == ExitCode.OK, result.output
    assert "not_ready" not in json.loads(result.stdout)


def test_the_text_output_says_how_long_the_pod_was_not_ready(
    meshctl: Invoke, running_pod: dict[str, Any]
) -> None:
    result = meshctl("upgrade", "--pod", POD, "--image", PROXY_NEW, "--timeout", "10")
    assert result.exit_code == ExitCode.OK, result.output
    assert "pod NotReady " in result.stdout and " in 2 flip(s)" in result.stdout
