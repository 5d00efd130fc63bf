"""`meshctl rollout`: each pod's NotReady window through its swap, in the per-pod results,
against what the API server recorded for that pod."""

from __future__ import annotations

import json

from kubernetes import client as k8s
from kubesim.apiserver import ApiServer
from kubesim.kubelet import FakeKubelet

from meshctl.exitcodes import ExitCode
from tests.k8s.conftest import PROXY_NEW, Invoke
from tests.k8s.ready_record import recorded_transitions, server_not_ready_s
from tests.k8s.rollout_fixtures import SELECTOR, create_fleet, web_pod


def test_each_pods_result_reports_the_ready_flips_the_api_server_recorded(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    names = create_fleet(core, kubelet, [web_pod(i) for i in range(3)])
    result = meshctl("rollout", "--selector", SELECTOR, "--image", PROXY_NEW, "--canary", "1",
                     "--max-parallel", "2", "-o", "json")

    assert result.exit_code == ExitCode.OK, result.output
    pods = {p["pod"]: p for p in json.loads(result.stdout)["pods"]}
    for name in names:
        window = pods[name]["not_ready"]
        recorded = recorded_transitions(api, name)
        assert [ready for ready, _ in recorded] == [False, True, False, True], name
        assert window["ready_flips"] == 2
        assert window["ready_at_end"] is True
        assert [(t["ready"], t["recorded"]) for t in window["transitions"]] == recorded
        assert abs(window["not_ready_s"] - server_not_ready_s(recorded)) <= 2 * 1.0
