"""`meshctl inject` (`meshctl.podswap.inject`): manifests in, the two proxy slots added."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from meshctl import errors
from meshctl.cli.app import app
from meshctl.exitcodes import ExitCode
from meshctl.podswap.inject import InjectOptions, inject_manifest, inject_object

PROXY = "registry.example/meshctl/proxy:1.40.0"
STANDBY = "ghcr.io/meshctl/standby:0.1.0"
OPTIONS = InjectOptions(image=PROXY)

POD_SPEC: dict[str, Any] = {"containers": [{"name": "web", "image": "nginx:1.27"}]}


def workload(kind: str) -> dict[str, Any]:
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                "spec": dict(POD_SPEC)}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": dict(POD_SPEC)}}}


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    return obj if obj["kind"] == "Pod" else obj["spec"]["template"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["Pod", "Deployment", "StatefulSet", "DaemonSet"])
def test_each_workload_kind_gets_an_active_slot_a_and_a_standby_slot_b(kind: str) -> None:
    injected, note = inject_object(workload(kind), OPTIONS)

    assert note == f"injected {kind}/web"
    template = pod_template(injected)
    a, b, app_container = template["spec"]["containers"]
    assert (a["name"], a["image"]) == ("meshctl-proxy-a", PROXY)
    assert (b["name"], b["image"]) == ("meshctl-proxy-b", STANDBY)
    assert app_container == {"name": "web", "image": "nginx:1.27"}
    assert template["metadata"]["annotations"] == {
        "meshctl.io/active-slot": "a", "meshctl.io/proxy-image": PROXY,
        "meshctl.io/standby-image": STANDBY}
    assert template["spec"]["volumes"] == [{"name": "meshctl-state", "emptyDir": {}}]


def test_the_slots_follow_the_pod_layout_contract() -> None:
    injected, _ = inject_object(workload("Pod"), OPTIONS)
    a, b, _app = injected["spec"]["containers"]
    for slot, container, port in (("a", a, 15021), ("b", b, 15022)):
        assert "command" not in container  # the image's ENTRYPOINT decides: run or standby
        assert container["args"] == ["--slot", slot, "--state-dir", "/var/run/meshctl",
                                     "--config", "/etc/meshctl/envoy.yaml",
                                     "--health-address", f"0.0.0.0:{port}"]
        assert container["volumeMounts"] == [{"name": "meshctl-state",
                                              "mountPath": "/var/run/meshctl"}]
        assert container["securityContext"]["runAsUser"] == 1337
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready",
                                                          "port": port}
        # The least period the API allows: the pod's NotReady window of a swap is ~a period
        # at worst (docs/pod-slots.md, "Pod readiness during a swap"); no startup probe.
        assert {k: v for k, v in container["readinessProbe"].items() if k != "httpGet"} == {
            "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 3}
        assert "startupProbe" not in container


def test_native_sidecars_are_init_containers_that_restart_always() -> None:
    injected, _ = inject_object(workload("Deployment"),
                                InjectOptions(image=PROXY, native_sidecars=True))
    spec = injected["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["web"]
    assert [c["name"] for c in spec["initContainers"]] == ["meshctl-proxy-a", "meshctl-proxy-b"]
    assert all(c["restartPolicy"] == "Always" for c in spec["initContainers"])


def test_a_config_map_is_mounted_read_only_at_etc_meshctl() -> None:
    injected, _ = inject_object(workload("Pod"),
                                InjectOptions(image=PROXY, config_map="envoy-config"))
    spec = injected["spec"]
    assert {"name": "meshctl-config", "configMap": {"name": "envoy-config"}} in spec["volumes"]
    for container in spec["containers"][:2]:
        assert {"name": "meshctl-config", "mountPath": "/etc/meshctl",
                "readOnly": True} in container["volumeMounts"]


def test_the_input_object_is_not_changed() -> None:
    original = workload("Deployment")
    copy = yaml.safe_load(yaml.safe_dump(original))
    inject_object(original, OPTIONS)
    assert original == copy


def test_an_injected_object_is_refused_unless_replace_is_given() -> None:
    once, _ = inject_object(workload("Deployment"), OPTIONS)
    with pytest.raises(errors.BadInput, match=r"Deployment/web is already injected "
                                              r"\(give --replace to inject it anew\)"):
        inject_object(once, OPTIONS)


def test_injecting_again_with_replace_gives_the_same_manifest() -> None:
    once, _ = inject_object(workload("StatefulSet"), OPTIONS)
    twice, note = inject_object(once, InjectOptions(image=PROXY, replace=True))
    assert twice == once
    assert note == "re-injected StatefulSet/web"


def test_replace_can_switch_to_native_sidecars() -> None:
    once, _ = inject_object(workload("Pod"), OPTIONS)
    again, _ = inject_object(once, InjectOptions(image=PROXY, native_sidecars=True,
                                                 replace=True))
    assert [c["name"] for c in again["spec"]["containers"]] == ["web"]
    assert len(again["spec"]["initContainers"]) == 2


def test_a_multi_document_manifest_keeps_other_documents_as_they_are() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"ports": [{"port": 80}]}}
    text = yaml.safe_dump_all([service, workload("Deployment")])
    result = inject_manifest(text, OPTIONS)
    out = list(yaml.safe_load_all(result.text))
    assert out[0] == service
    assert len(out[1]["spec"]["template"]["spec"]["containers"]) == 3
    assert result.notes == ("left Service/web unchanged (not a workload)",
                            "injected Deployment/web")


def test_a_list_of_workloads_is_injected_item_by_item() -> None:
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List",
                           "items": [workload("Pod"), workload("DaemonSet")]})
    result = inject_manifest(text, OPTIONS)
    (out,) = yaml.safe_load_all(result.text)
    assert [len(pod_template(i)["spec"]["containers"]) for i in out["items"]] == [3, 3]


@pytest.mark.parametrize(("text", "message"), [
    ("kind: [", "<stdin>: line 1 not valid YAML"),
    ("- a\n- b\n", "<stdin>: document 1 is not a mapping"),
    ("kind: Service\nmetadata: {name: x}\n", "<stdin>: no Pod, Deployment, StatefulSet, "
                                             "DaemonSet to inject"),
    ("kind: Deployment\nmetadata: {name: x}\nspec: {}\n",
     "<stdin>: document 1: Deployment/x: spec.template is missing or not a mapping"),
    ("kind: Pod\nmetadata: {name: x}\nspec: {containers: 3}\n",
     "<stdin>: document 1: Pod/x: the pod spec has no containers list"),
])
def test_bad_manifests_are_refused_with_one_line(text: str, message: str) -> None:
    with pytest.raises(errors.BadInput) as caught:
        inject_manifest(text, OPTIONS)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_the_same_image_for_proxy_and_standby_is_refused() -> None:
    with pytest.raises(errors.BadInput, match="must differ"):
        inject_manifest(yaml.safe_dump(workload("Pod")),
                        InjectOptions(image=STANDBY, standby_image="ghcr.io/meshctl/standby:0.1.0"))


def test_the_cli_prints_the_manifest_on_stdout_and_the_notes_on_stderr(tmp_path: Path) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(yaml.safe_dump(workload("Deployment")))
    result = CliRunner().invoke(app, ["inject", "-f", str(manifest), "--image", PROXY,
                                      "--standby-image", "ghcr.io/meshctl/standby:0.2.0"])
    assert result.exit_code == ExitCode.OK, result.output
    out = yaml.safe_load(result.stdout)
    assert out["spec"]["template"]["spec"]["containers"][1]["image"] == (
        "ghcr.io/meshctl/standby:0.2.0")
    assert result.stderr == "meshctl inject: injected Deployment/web\n"


def test_the_cli_reads_stdin_with_dash() -> None:
    result = CliRunner().invoke(app, ["inject", "-f", "-", "--image", PROXY],
                                input=yaml.safe_dump(workload("Pod")))
    assert result.exit_code == ExitCode.OK, result.output
    assert yaml.safe_load(result.stdout)["spec"]["containers"][0]["image"] == PROXY


@pytest.mark.parametrize("args", [
    ["--image", "Not A Ref"],
    ["--image", PROXY, "--standby-image", "bad@sha256:123"],
])
def test_the_cli_gives_one_line_and_exit_5_for_bad_input(tmp_path: Path,
                                                        args: list[str]) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(yaml.safe_dump(workload("Pod")))
    result = CliRunner().invoke(app, ["inject", "-f", str(manifest), *args])
    assert result.exit_code == ExitCode.BAD_INPUT == 5
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("meshctl: error: bad image reference")
    assert result.stdout == ""


def test_the_cli_gives_one_line_for_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inject", "-f", str(tmp_path / "nope.yaml"),
                                      "--image", PROXY])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert result.stderr == (f"meshctl: error: cannot read {tmp_path / 'nope.yaml'}: "
                             f"No such file or directory\n")
