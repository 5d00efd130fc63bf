"""`meshctl rollout`: a fleet of pods upgraded in batches, against kmock's API server over real
HTTP, with the real `kubernetes` client inside meshctl and the fake kubelet playing the node."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubesim.apiserver import ApiServer, Fault, LeanApiServer
from kubesim.kubelet import FakeImage, FakeKubelet
from typer.testing import Result

from meshctl.kube import Kube
from tests.k8s.conftest import (
    IMAGES,
    NAMESPACE,
    PROXY_NEW,
    PROXY_OLD,
    STANDBY,
    Invoke,
    events,
    from_meshctl,
    images,
    read_pod,
)
from tests.k8s.rollout_fixtures import (
    NEVER,
    SELECTOR,
    FleetRuntime,
    create_fleet,
    events_of,
    named,
    record_of,
    wait_ready,
    web_pod,
)

A, B = "meshctl-proxy-a", "meshctl-proxy-b"
OLD = {A: PROXY_OLD, B: STANDBY, "web": "nginx:1.27"}
NEW = {A: STANDBY, B: PROXY_NEW, "web": "nginx:1.27"}


@pytest.fixture
def api() -> Iterator[ApiServer]:
    """The tests' API server, at a constant cost per request (see `LeanApiServer`)."""
    server = LeanApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def runtime() -> FleetRuntime:
    return FleetRuntime(IMAGES)


@pytest.fixture
def fleet(core: k8s.CoreV1Api, kubelet: FakeKubelet) -> list[str]:
    """Twenty injected pods `web-00`..`web-19` (app=web), Ready, slot a serving PROXY_OLD."""
    return create_fleet(core, kubelet, [web_pod(i) for i in range(20)])


def rollout(meshctl: Invoke, *args: str, image: str = PROXY_NEW) -> Result:
    return meshctl("rollout", "--selector", SELECTOR, "--image", image, "-o", "json", *args)


def summary(result: Result) -> dict[str, Any]:
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def results(report: dict[str, Any]) -> dict[str, str]:
    return {p["pod"]: p["result"] for p in report["pods"]}


def one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("meshctl: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ----------------------------------------------------------------- the rollout


def test_twenty_pods_with_two_failing_end_with_those_two_rolled_back_the_rest_upgraded_exit_1(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, runtime: FleetRuntime,
    fleet: list[str]
) -> None:
    failing = {"web-06", "web-13"}
    runtime.misbehave(failing, PROXY_NEW, NEVER)
    result = rollout(meshctl, "--canary", "2", "--max-parallel", "6", "--max-failures", "3",
                     "--pod-timeout", "1.5")

    assert result.exit_code == 1, result.output
    report = summary(result)
    assert report["result"] == "failed"
    assert report["counts"] | {"selected": 20} == {
        "selected": 20, "upgraded": 18, "already_upgraded": 0, "rolled_back": 2,
        "incomplete": 0, "failed": 0, "interrupted": 0, "skipped": 0, "gone": 0, "pending": 0}
    assert {p for p, r in results(report).items() if r == "rolled_back"} == failing
    for name in fleet:
        pod = read_pod(core, name)
        record = record_of(pod)
        assert record is not None
        if name in failing:
            assert images(pod) == OLD, name
            assert pod["metadata"]["annotations"]["meshctl.io/active-slot"] == "a"
            assert record["state"] == "rolled_back"
            assert "not ready within 1.5s" in record["reason"]
        else:
            assert images(pod) == NEW, name
            assert pod["metadata"]["annotations"]["meshctl.io/active-slot"] == "b"
            assert record["state"] == "upgraded"
            assert runtime.running(name) == NEW
    # The canary, then the rest six at a time, each batch reported.
    assert [(b["kind"], len(b["pods"])) for b in report["batches"]] == [
        ("canary", 2), ("batch", 6), ("batch", 6), ("batch", 6)]
    progress = events_of(result)
    assert [e["batch"] for e in named(progress, "batch_done")] == [1, 2, 3, 4]
    assert {e["pod"] for e in named(progress, "pod_rolled_back")} == failing
    assert len(named(progress, "pod_upgraded")) == 18
    assert len(named(progress, "pod_started")) == 20
    assert progress[-1]["event"] == "rollout_done" and progress[-1]["exit_code"] == 1
    # An Event on each pod that did not end upgraded (--events failures, the default).
    assert sorted((e["involvedObject"]["name"], e["reason"], e["type"]) for e in events(core)) \
        == [(name, "MeshctlRolloutRolledBack", "Warning") for name in sorted(failing)]


def test_a_rollout_follows_the_pods_with_one_watch_and_few_requests_per_pod(
    meshctl: Invoke, api: ApiServer, fleet: list[str]
) -> None:
    result = rollout(meshctl, "--max-parallel", "10")

    assert result.exit_code == 0, result.output
    requests = summary(result)["api_requests"]
    seen = from_meshctl(api)
    assert requests["total"] == len(seen)
    assert requests["per_pod"] <= 8
    watches = [r for r in seen if r.query.get("watch") == "true"]
    lists = [r for r in seen if r.method == "GET" and r.query.get("watch") != "true"
             and r.resource == "pods"]
    assert len(watches) == 1 and watches[0].name is None  # the selector, not a pod
    assert watches[0].query.get("labelSelector") == SELECTOR
    assert len(lists) == 1 and lists[0].name is None  # no per-pod reads, no polling
    # The disruption budgets, read again before each batch starts (none here, and the pods
    # have no controller: no list of the namespace's pods).
    budget_lists = [r for r in seen if r.resource == "poddisruptionbudgets"]
    assert len(budget_lists) == len(summary(result)["batches"])
    per_pod = [p["api_requests"] for p in summary(result)["pods"]]
    assert per_pod == [2] * 20  # start, retire


def test_with_events_all_every_pod_outcome_is_an_event_on_the_pod(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet, runtime: FleetRuntime
) -> None:
    create_fleet(core, kubelet, [web_pod(i) for i in range(3)])
    runtime.misbehave({"web-02"}, PROXY_NEW, NEVER)
    result = rollout(meshctl, "--events", "all", "--canary", "0", "--max-failures", "2",
                     "--pod-timeout", "1")
    assert result.exit_code == 1, result.output
    assert sorted((e["involvedObject"]["name"], e["reason"]) for e in events(core)) == [
        ("web-00", "MeshctlRolloutUpgraded"), ("web-01", "MeshctlRolloutUpgraded"),
        ("web-02", "MeshctlRolloutRolledBack")]
    assert [p["api_requests"] for p in summary(result)["pods"]] == [3, 3, 3]

    none = meshctl("rollout", "--selector", SELECTOR, "--image", PROXY_OLD, "--events", "none",
                   "--canary", "0", "-o", "json")
    assert none.exit_code == 0, none.output
    assert len(events(core)) == 3  # none added


def test_the_watch_reader_threads_are_stopped_when_the_rollout_ends(
    meshctl: Invoke, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    create_fleet(core, kubelet, [web_pod(i) for i in range(3)])
    assert rollout(meshctl).exit_code == 0
    assert [t.name for t in threading.enumerate() if t.name == "rollout-watch"] == []


def test_a_watch_closed_while_events_stream_in_stops_its_reader_without_an_error(
    api: ApiServer, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    # kmock never ends a watch by itself, so each watch here ends by close(), while another
    # client keeps changing the pod: the reader is mid-read when close() comes. Closing the
    # response under that read raised in the reader thread (pytest fails the test on it).
    create_fleet(core, kubelet, [web_pod(0)])
    stop = threading.Event()

    def churn() -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            core.patch_namespaced_pod("web-00", NAMESPACE,
                                      {"metadata": {"annotations": {"churn": str(n)}}})

    writer = threading.Thread(target=churn, name="churn")
    writer.start()
    configuration = k8s.Configuration()
    configuration.host = api.url
    try:
        with Kube(k8s.ApiClient(configuration)) as fleet_kube:
            for _ in range(40):
                watch = fleet_kube.watch_pods(NAMESPACE, SELECTOR, None, timeout_s=60)
                assert watch.next(5.0) is not None  # the stream is live
                started = time.monotonic()
                watch.close()
                assert time.monotonic() - started < 1.0
    finally:
        stop.set()
        writer.join(10)
    assert [t.name for t in threading.enumerate() if t.name == "rollout-watch"] == []


def test_the_retire_patch_checks_the_handover_in_the_same_request(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    create_fleet(core, kubelet, [web_pod(0)])
    assert rollout(meshctl).exit_code == 0
    start, retire = [r.data for r in from_meshctl(api) if r.method == "PATCH"]
    assert {"op": "replace", "path": "/spec/containers/1/image", "value": PROXY_NEW} in start
    assert {"op": "replace", "path": "/spec/containers/0/image", "value": STANDBY} in retire
    guards = [op for op in retire if op["path"].startswith("/status/")]
    assert [op["path"].rsplit("/", 1)[1] for op in guards] == ["name", "containerID", "ready"]
    assert {"op": "test", "path": guards[2]["path"], "value": True} in retire
    assert json.loads(next(op["value"] for op in retire if op["path"].endswith(
        "meshctl.io~1rollout")))["state"] == "upgraded"


def test_no_pod_is_started_after_max_failures(
    meshctl: Invoke, core: k8s.CoreV1Api, runtime: FleetRuntime, fleet: list[str]
) -> None:
    runtime.misbehave({"web-02"}, PROXY_NEW, NEVER)
    result = rollout(meshctl, "--canary", "1", "--max-parallel", "4", "--max-failures", "1",
                     "--pod-timeout", "1")

    assert result.exit_code == 1, result.output
    report = summary(result)
    assert "stopped after 1 failure(s)" in report["message"]
    assert report["counts"]["upgraded"] == 4  # the canary and the rest of batch 2
    assert report["counts"]["pending"] == 15
    for name in fleet[5:]:
        pod = read_pod(core, name)
        assert images(pod) == OLD and record_of(pod) is None


def test_a_failed_canary_stops_the_rollout(
    meshctl: Invoke, core: k8s.CoreV1Api, runtime: FleetRuntime, fleet: list[str]
) -> None:
    runtime.misbehave({"web-00"}, PROXY_NEW, NEVER)
    result = rollout(meshctl, "--max-failures", "5", "--pod-timeout", "1")

    assert result.exit_code == 1, result.output
    report = summary(result)
    assert report["message"].endswith("the canary failed; no further pod was started")
    assert results(report)["web-00"] == "rolled_back"
    assert report["counts"]["pending"] == 19
    assert images(read_pod(core, "web-01")) == OLD


# ----------------------------------------------------------------- canary pause, resume


def test_a_rollout_paused_after_the_canary_is_continued_by_the_same_command(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, fleet: list[str]
) -> None:
    command = ("--canary", "3", "--pause-after-canary", "--max-parallel", "10")
    paused = rollout(meshctl, *command)

    assert paused.exit_code == 0, paused.output
    report = summary(paused)
    assert report["result"] == "paused"
    assert "paused after the canary; run the same command again to continue" in report[
        "message"]
    assert [p for p, r in results(report).items() if r == "upgraded"] == fleet[:3]
    assert all(images(read_pod(core, name)) == OLD for name in fleet[3:])

    status = meshctl("rollout", "status", "--selector", SELECTOR, "-o", "json")
    assert status.exit_code == 0, status.output
    (recorded,) = json.loads(status.stdout)["rollouts"]
    assert recorded["id"] == report["rollout"]["id"]
    assert recorded["states"] == {"upgraded": 3}
    assert recorded["pods_not_on_image"] == 17
    assert "the canary is done" in recorded["summary"]
    text = meshctl("rollout", "status", "--selector", SELECTOR)
    assert text.exit_code == 0, text.output
    assert f"rollout {recorded['id']} -> {PROXY_NEW}: upgraded 3; 3 on the image, 17 not" \
        in text.stdout

    before = len(from_meshctl(api))
    resumed = rollout(meshctl, *command)
    assert resumed.exit_code == 0, resumed.output
    again = summary(resumed)
    assert again["result"] == "succeeded"
    assert again["counts"]["upgraded"] == 17 and again["counts"]["already_upgraded"] == 3
    assert [b["kind"] for b in again["batches"]] == ["batch", "batch"]
    touched = {r.name for r in from_meshctl(api)[before:] if r.method == "PATCH"}
    assert touched.isdisjoint(fleet[:3])  # the canary is not redone
    assert all(images(read_pod(core, name)) == NEW for name in fleet)


def test_a_rollout_stopped_by_its_deadline_is_completed_by_the_same_command(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, kubelet: FakeKubelet,
    runtime: FleetRuntime, fleet: list[str]
) -> None:
    slow = fleet[8:12]
    runtime.misbehave(slow, PROXY_NEW, FakeImage(ready_after_s=60))
    stopped = rollout(meshctl, "--canary", "0", "--max-parallel", "4", "--timeout", "2.5",
                      "--pod-timeout", "30")

    assert stopped.exit_code == 2, stopped.output
    report = summary(stopped)
    assert report["result"] == "deadline_exceeded"
    assert "run the same command again to continue" in report["message"]
    assert report["counts"]["upgraded"] == 8
    assert report["counts"]["interrupted"] == 4
    assert report["counts"]["pending"] == 8
    for name in slow:  # set back, the old slot serving, marked to be started again
        pod = read_pod(core, name)
        assert images(pod) == OLD
        assert record_of(pod)["state"] == "interrupted"  # type: ignore[index]

    runtime.behave()
    wait_ready(kubelet, fleet)
    before = len(from_meshctl(api))
    finished = rollout(meshctl, "--canary", "0", "--max-parallel", "4", "--timeout", "60",
                       "--pod-timeout", "30")
    assert finished.exit_code == 0, finished.output
    again = summary(finished)
    assert again["counts"]["upgraded"] == 12 and again["counts"]["already_upgraded"] == 8
    assert again["rollout"]["id"] == report["rollout"]["id"]
    touched = {r.name for r in from_meshctl(api)[before:] if r.method == "PATCH"}
    assert touched == set(fleet[8:])
    assert all(images(read_pod(core, name)) == NEW for name in fleet)


def test_a_rollout_whose_cli_died_mid_swap_is_finished_by_the_same_command(
    meshctl: Invoke, core: k8s.CoreV1Api, runtime: FleetRuntime, kubeconfig: Path,
    kubelet: FakeKubelet
) -> None:
    names = create_fleet(core, kubelet, [web_pod(i) for i in range(6)])
    runtime.misbehave(names, PROXY_NEW, FakeImage(ready_after_s=2.0))
    command = ["rollout", "--selector", SELECTOR, "--image", PROXY_NEW, "--canary", "0",
               "--max-parallel", "3", "-o", "json", "--kubeconfig", str(kubeconfig)]
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "MESHCTL_DEBUG")}
    started = 0
    with subprocess.Popen([sys.executable, "-m", "meshctl", *command], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as cli:
        try:
            assert cli.stderr is not None
            for line in cli.stderr:
                started += json.loads(line)["event"] == "pod_started"
                if started == 3:
                    break
            cli.send_signal(signal.SIGKILL)  # the CLI dies: no rollback, no cleanup
        finally:
            cli.kill()
    assert started == 3
    mid_swap = [n for n in names if (record_of(read_pod(core, n)) or {}).get("state")
                == "upgrading"]
    assert mid_swap == names[:3]

    runtime.behave()  # the pods' new containers keep the behaviour they started with
    result = meshctl(*command[:-2])
    assert result.exit_code == 0, result.output
    report = summary(result)
    assert [b["kind"] for b in report["batches"]] == ["resume", "batch"]
    assert [p["pod"] for p in report["pods"] if p.get("resumed")] == names[:3]
    assert report["counts"]["upgraded"] == 6
    # The resumed pods were followed, not restarted: one container of the new image each.
    for name in names[:3]:
        assert runtime.starts.count((name, B, PROXY_NEW)) == 1
        assert images(read_pod(core, name)) == NEW


def test_a_rollout_stopped_by_sigterm_sets_back_the_pods_in_flight_and_exits_130(
    meshctl: Invoke, core: k8s.CoreV1Api, runtime: FleetRuntime, kubeconfig: Path,
    kubelet: FakeKubelet
) -> None:
    names = create_fleet(core, kubelet, [web_pod(i) for i in range(6)])
    runtime.misbehave(names, PROXY_NEW, FakeImage(ready_after_s=60))
    command = ["rollout", "--selector", SELECTOR, "--image", PROXY_NEW, "--canary", "0",
               "--max-parallel", "3", "-o", "json", "--kubeconfig", str(kubeconfig)]
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "MESHCTL_DEBUG")}
    progress: list[dict[str, Any]] = []
    with subprocess.Popen([sys.executable, "-m", "meshctl", *command], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as cli:
        try:
            assert cli.stderr is not None
            for line in cli.stderr:
                progress.append(json.loads(line))
                if len(named(progress, "pod_started")) == 3:
                    cli.send_signal(signal.SIGTERM)  # recorded; the loop sets back and ends
                    break
            progress += [json.loads(line) for line in cli.stderr]
            assert cli.wait(timeout=30) == 130
        finally:
            cli.kill()
    assert {e["pod"] for e in named(progress, "pod_rolled_back")
            if e["interrupted"]} == set(names[:3])
    assert progress[-1]["event"] == "rollout_done" and progress[-1]["exit_code"] == 130
    for name in names[:3]:
        pod = read_pod(core, name)
        assert images(pod) == OLD
        assert record_of(pod)["state"] == "interrupted"  # type: ignore[index]
    assert all(record_of(read_pod(core, name)) is None for name in names[3:])

    runtime.behave()
    wait_ready(kubelet, names)
    result = meshctl(*command[:-2])
    assert result.exit_code == 0, result.output
    assert summary(result)["counts"]["upgraded"] == 6
    assert all(images(read_pod(core, name)) == NEW for name in names)


def test_pods_already_failed_stay_failed_unless_retried(
    meshctl: Invoke, runtime: FleetRuntime, core: k8s.CoreV1Api, kubelet: FakeKubelet
) -> None:
    names = create_fleet(core, kubelet, [web_pod(i) for i in range(3)])
    runtime.misbehave({"web-02"}, PROXY_NEW, NEVER)
    assert rollout(meshctl, "--canary", "0", "--max-failures", "2",
                   "--pod-timeout", "1").exit_code == 1
    wait_ready(kubelet, names)
    runtime.behave()

    again = rollout(meshctl, "--canary", "0", "--max-failures", "2")
    assert again.exit_code == 1, again.output
    assert summary(again)["pods"][2]["reason_code"] == "failed_earlier"
    assert images(read_pod(core, "web-02")) == OLD

    retried = rollout(meshctl, "--canary", "0", "--max-failures", "2", "--retry-failed")
    assert retried.exit_code == 0, retried.output
    assert results(summary(retried)) == {"web-00": "already_upgraded",
                                         "web-01": "already_upgraded", "web-02": "upgraded"}


# ----------------------------------------------------------------- skipped, dry run


def test_pods_not_ready_or_without_the_proxy_slots_are_skipped_and_reported(
    meshctl: Invoke, core: k8s.CoreV1Api, runtime: FleetRuntime, kubelet: FakeKubelet
) -> None:
    runtime.misbehave({"web-02"}, PROXY_OLD, NEVER)  # its proxy never gets ready
    create_fleet(core, kubelet, [web_pod(0), web_pod(1, injected=False), web_pod(2),
                                 web_pod(3, labels={"app": "shop"})], ready=False)
    wait_ready(kubelet, ["web-00", "web-01", "web-03"])
    result = meshctl("rollout", "--selector", SELECTOR, "--image", PROXY_NEW)  # text

    assert result.exit_code == 0, result.output
    skipped = {e["pod"]: e["reason_code"] for e in named(events_of(result), "pod_skipped")}
    assert skipped == {"web-01": "no_layout", "web-02": "not_ready"}
    table = result.stdout.splitlines()
    assert table[2].split() == ["POD", "RESULT", "BATCH", "SLOTS", "TIME", "REQUESTS", "DETAIL"]
    rows = {line.split()[0]: line for line in table[3:6]}
    assert rows[f"{NAMESPACE}/web-00"].split()[1] == "upgraded"
    assert "no meshctl proxy slots" in rows[f"{NAMESPACE}/web-01"]
    assert "not Ready" in rows[f"{NAMESPACE}/web-02"]
    assert "web-03" not in result.stdout  # not selected
    assert images(read_pod(core, "web-00")) == NEW
    assert images(read_pod(core, "web-02")) == OLD


def test_a_dry_run_prints_the_batches_pods_and_patches_and_changes_nothing(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, fleet: list[str]
) -> None:
    before = {name: read_pod(core, name) for name in fleet}
    result = rollout(meshctl, "--dry-run", "--canary", "2", "--max-parallel", "8")

    assert result.exit_code == 0, result.output
    report = summary(result)
    assert report["result"] == "dry_run"
    plan = report["plan"]
    assert [(b["kind"], len(b["pods"])) for b in plan["batches"]] == [
        ("canary", 2), ("batch", 8), ("batch", 8), ("batch", 2)]
    assert plan["batches"][0]["pods"] == [f"{NAMESPACE}/web-00", f"{NAMESPACE}/web-01"]
    first = plan["pods"][0]
    assert set(first["patches"]) == {"start", "retire", "rollback"}
    assert {"op": "replace", "path": "/spec/containers/1/image",
            "value": PROXY_NEW} in first["patches"]["start"]
    assert [r.method for r in from_meshctl(api)] == ["GET"]  # the list, nothing else
    assert {name: read_pod(core, name) for name in fleet} == before
    assert events(core) == []

    text = meshctl("rollout", "--selector", SELECTOR, "--image", PROXY_NEW, "--dry-run")
    assert text.exit_code == 0, text.output
    assert "batch 1 (canary): 1 pod(s)" in text.stdout
    assert f"{NAMESPACE}/web-00: slot a ({PROXY_OLD}) -> slot b ({PROXY_NEW})" in text.stdout
    assert '    start: [{"op":"test"' in text.stdout


# ----------------------------------------------------------------- refused before starting


@pytest.mark.parametrize(("args", "message"), [
    (("--selector", "app in (web", "--image", PROXY_NEW), "bad label selector 'app in (web'"),
    (("--selector", SELECTOR, "--image", "Proxy:1"), "bad image reference 'Proxy:1'"),
    (("--selector", "", "--image", PROXY_NEW), "the label selector is empty"),
    (("--image", PROXY_NEW), "needs --selector LABELS and --image REF"),
])
def test_a_bad_selector_or_image_is_refused_with_exit_3_before_any_request(
    meshctl: Invoke, api: ApiServer, args: tuple[str, ...], message: str
) -> None:
    result = meshctl("rollout", *args)
    assert result.exit_code == 3, result.output
    assert message in one_error_line(result)
    assert from_meshctl(api) == []


@pytest.mark.parametrize(("args", "message"), [
    (("--max-parallel", "0"), "Invalid value for '--max-parallel'"),
    (("--timeout", "soon"), "Invalid value for '--timeout'"),
    (("--no-such-option",), "No such option: --no-such-option"),
])
def test_usage_errors_exit_3_not_2_which_means_deadline_in_one_line(
    meshctl: Invoke, api: ApiServer, args: tuple[str, ...], message: str
) -> None:
    result = meshctl("rollout", "--selector", SELECTOR, "--image", PROXY_NEW, *args)
    assert result.exit_code == 3, result.output
    assert message in one_error_line(result)
    assert result.stderr.count("\n") == 1  # no usage block, no box
    assert from_meshctl(api) == []


def test_no_permission_to_list_pods_is_refused_with_exit_3(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, fleet: list[str]
) -> None:
    api.add_fault(Fault("GET", "pods", 403, watch=False, times=-1))
    result = rollout(meshctl)
    assert result.exit_code == 3, result.output
    assert one_error_line(result) == (f"meshctl: error: forbidden: cannot list pods in "
                                      f"namespace {NAMESPACE} (needs RBAC verb list on pods)")


def test_no_permission_to_patch_pods_is_refused_with_exit_3_and_nothing_changed(
    meshctl: Invoke, api: ApiServer, core: k8s.CoreV1Api, fleet: list[str]
) -> None:
    api.add_fault(Fault("PATCH", "pods", 403, times=-1))
    result = rollout(meshctl)
    assert result.exit_code == 3, result.output
    assert "cannot patch pods" in one_error_line(result)
    assert all(images(read_pod(core, name)) == OLD for name in fleet)


def test_a_selector_that_matches_no_pod_is_refused_with_exit_3(
    meshctl: Invoke, fleet: list[str]
) -> None:
    result = meshctl("rollout", "--selector", "app=nothing", "--image", PROXY_NEW)
    assert result.exit_code == 3
    assert "no pod matches the selector app=nothing" in one_error_line(result)


def test_the_help_documents_the_exit_codes(meshctl: Invoke) -> None:
    result = meshctl("rollout", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for fragment in ("0 every selected pod runs the image", "1 some pods failed",
                     "2 --timeout passed", "3 refused before starting"):
        assert fragment in text, fragment

