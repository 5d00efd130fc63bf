"""`meshctl inject`: add the two proxy slots to workload manifests (like `istioctl kube-inject`).

Pure: YAML text in, YAML text out. Pods, Deployments, StatefulSets and DaemonSets (also inside a
`List`) get the layout of `meshctl.podswap.layout`: slot a runs the proxy image and is active,
slot b runs the standby image; both share the `meshctl-state` emptyDir. Every other document
passes through unchanged.

An object that already has a slot container or the state volume is refused, unless
`replace=True`: then its slots are removed and injected anew, so that injecting twice with
`replace` gives the same output as injecting once.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from meshctl import errors
from meshctl.podswap import layout, reference
from meshctl.podswap.layout import Slot

WORKLOAD_KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet")
SLOT_NAMES = tuple(layout.container_name(s) for s in layout.SLOTS)
OWN_VOLUMES = (layout.STATE_VOLUME, layout.CONFIG_VOLUME)
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
"""A ConfigMap's name (Kubernetes: a DNS-1123 subdomain, at most 253 characters)."""

# libyaml when PyYAML was built with it: on a List of 10,000 pods, loading and dumping are
# most of the time, and the C loader and dumper are 3x and 2.6x faster than the pure-Python
# ones, with the same output (measured 2026-12-07, see README "Use").
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True)
class InjectOptions:
    image: str
    """The proxy image of the active slot (a); its ENTRYPOINT must be `meshctl run`."""
    standby_image: str = layout.DEFAULT_STANDBY_IMAGE
    """The standby slot's image; its ENTRYPOINT must be `meshctl standby`."""
    native_sidecars: bool = False
    """Put the slots in initContainers with `restartPolicy: Always` (Kubernetes >= 1.29)."""
    config_map: str | None = None
    """A ConfigMap with `envoy.yaml`, mounted at /etc/meshctl; None: the image's own config."""
    replace: bool = False
    """Re-inject an object that already has the slots, instead of refusing it."""
    probe_period_s: int = 1
    """The slots' readiness probe period: how fast a restarted slot is seen ready. 1 s, the
    API's least: the pod is NotReady from the kubelet's first sight of the restarted slot to
    its first passing probe, and a probe runs at that first sight (the kubelet triggers it)
    and then only on the probe's ticks, so a slot not yet ready then waits up to a period
    (docs/pod-slots.md, "Pod readiness during a swap": 2 s -> 1 s took the NotReady time of
    a swap from 0.55 s to 0.28 s on average, p90 2.10 s -> 1.00 s, bench/pod_readiness.py)."""


@dataclass(frozen=True)
class InjectResult:
    text: str
    """The manifest to apply, multi-document YAML."""
    notes: tuple[str, ...]
    """One line per document: what was done to it."""


def inject_manifest(text: str, options: InjectOptions, source: str = "<stdin>") -> InjectResult:
    """Inject every workload of a multi-document YAML text. Raises BadInput (one line)."""
    check_options(options)
    try:
        documents = _load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise errors.BadInput(f"{source}:{where} not valid YAML: {problem}") from exc
    out: list[Any] = []
    notes: list[str] = []
    for number, document in enumerate(documents, start=1):
        if not isinstance(document, dict):
            raise errors.BadInput(f"{source}: document {number} is not a mapping")
        try:
            injected, doc_notes = _inject_document(document, options)
        except errors.BadInput as exc:
            raise errors.BadInput(f"{source}: document {number}: {exc}") from exc
        out.append(injected)
        notes.extend(doc_notes)
    if not any(n.startswith(("injected", "re-injected")) for n in notes):
        raise errors.BadInput(f"{source}: no {', '.join(WORKLOAD_KINDS)} to inject")
    return InjectResult(yaml.dump_all(out, Dumper=_Dumper, sort_keys=False), tuple(notes))


def _load_all(text: str) -> list[Any]:
    try:
        return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError:
        if _Loader is yaml.SafeLoader:
            raise
    # libyaml places some errors a line off (at the stream's end): the pure-Python loader's
    # message is the one to show, and on bad input its speed does not matter.
    return [d for d in yaml.safe_load_all(text) if d is not None]


def check_options(options: InjectOptions) -> None:
    reference.parse(options.image)
    reference.parse(options.standby_image)
    if reference.same_image(options.image, options.standby_image):
        raise errors.BadInput("the proxy image and the standby image must differ")
    name = options.config_map
    if name is not None and (len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name)):
        raise errors.BadInput(f"--config-map {name!r} is not a ConfigMap name (lowercase "
                              f"letters, digits, '-' and '.', at most 253 characters)")


def inject_object(obj: Mapping[str, Any], options: InjectOptions) -> tuple[dict[str, Any], str]:
    """One workload object, injected (a copy), and a note saying what was done."""
    kind = obj.get("kind")
    result = copy.deepcopy(dict(obj))
    label = _label(obj)
    template = result if kind == "Pod" else _mapping_at(result, ("spec", "template"), label)
    metadata = template.setdefault("metadata", {})
    spec = _mapping_at(template, ("spec",), label)
    if not isinstance(metadata, dict):
        raise errors.BadInput(f"{label}: metadata is not a mapping")
    containers = spec.get("containers")
    if not isinstance(containers, list):
        raise errors.BadInput(f"{label}: the pod spec has no containers list")
    already = is_injected(spec)
    if already and not options.replace:
        raise errors.BadInput(f"{label} is already injected (give --replace to inject it anew)")
    if already:
        _remove_slots(spec)
    _add_slots(spec, options)
    annotations = metadata.get("annotations")
    if annotations is None:
        annotations = metadata["annotations"] = {}
    if not isinstance(annotations, dict):
        raise errors.BadInput(f"{label}: metadata.annotations is not a mapping")
    annotations.pop(layout.LAST_UPGRADE, None)
    annotations.update({layout.ACTIVE_SLOT: "a", layout.PROXY_IMAGE: options.image,
                        layout.STANDBY_IMAGE: options.standby_image})
    return result, f"{'re-injected' if already else 'injected'} {label}"


def is_injected(pod_spec: Mapping[str, Any]) -> bool:
    for key in ("containers", "initContainers"):
        for container in pod_spec.get(key) or []:
            if isinstance(container, Mapping) and container.get("name") in SLOT_NAMES:
                return True
    return any(isinstance(v, Mapping) and v.get("name") in OWN_VOLUMES
               for v in pod_spec.get("volumes") or [])


def slot_container(slot: Slot, image: str, options: InjectOptions) -> dict[str, Any]:
    """One proxy slot's container spec (no `command`: the image decides run or standby)."""
    mounts: list[dict[str, Any]] = [{"name": layout.STATE_VOLUME, "mountPath": layout.STATE_DIR}]
    if options.config_map:
        mounts.append({"name": layout.CONFIG_VOLUME, "mountPath": layout.CONFIG_DIR,
                       "readOnly": True})
    container: dict[str, Any] = {
        "name": layout.container_name(slot),
        "image": image,
        "args": layout.slot_args(slot),
        "readinessProbe": {
            "httpGet": {"path": layout.READY_PATH, "port": layout.HEALTH_PORTS[slot]},
            "periodSeconds": options.probe_period_s,
            "timeoutSeconds": 1,
            # A slot that stops answering leaves the endpoints within 3 s (was 4 s: 2 x 2 s).
            "failureThreshold": 3,
            # No startupProbe: the kubelet does not trigger one at the first sight of a
            # container, so it adds up to a period to every restart (measured: see above).
        },
        "securityContext": {
            "runAsUser": layout.RUN_AS_USER,
            "runAsGroup": layout.RUN_AS_USER,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
        },
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if options.native_sidecars:
        container["restartPolicy"] = "Always"
    return container


def _inject_document(document: dict[str, Any],
                     options: InjectOptions) -> tuple[dict[str, Any], list[str]]:
    kind = document.get("kind")
    if kind == "List":
        items = document.get("items")
        if not isinstance(items, list):
            raise errors.BadInput("List without an items list")
        result = dict(document)
        result["items"] = []
        notes: list[str] = []
        for item in items:
            if not isinstance(item, dict):
                raise errors.BadInput("a List item is not a mapping")
            injected, item_notes = _inject_document(item, options)
            result["items"].append(injected)
            notes.extend(item_notes)
        return result, notes
    if kind in WORKLOAD_KINDS:
        injected, note = inject_object(document, options)
        return injected, [note]
    return document, [f"left {_label(document)} unchanged (not a workload)"]


def _add_slots(spec: dict[str, Any], options: InjectOptions) -> None:
    slots = [slot_container("a", options.image, options),
             slot_container("b", options.standby_image, options)]
    key = "initContainers" if options.native_sidecars else "containers"
    existing = spec.get(key) or []
    if not isinstance(existing, list):
        raise errors.BadInput(f"spec.{key} is not a list")
    # First, so that the proxy starts before the app (and, as native sidecars, before the
    # app's own init containers, which may need the network).
    spec[key] = slots + existing
    volumes = spec.get("volumes") or []
    if not isinstance(volumes, list):
        raise errors.BadInput("spec.volumes is not a list")
    volumes = [*volumes, {"name": layout.STATE_VOLUME, "emptyDir": {}}]
    if options.config_map:
        volumes.append({"name": layout.CONFIG_VOLUME,
                        "configMap": {"name": options.config_map}})
    spec["volumes"] = volumes


def _remove_slots(spec: dict[str, Any]) -> None:
    for key in ("containers", "initContainers"):
        if key in spec and isinstance(spec[key], list):
            kept = [c for c in spec[key]
                    if not (isinstance(c, Mapping) and c.get("name") in SLOT_NAMES)]
            if kept or key == "containers":
                spec[key] = kept
            else:
                del spec[key]
    if isinstance(spec.get("volumes"), list):
        spec["volumes"] = [v for v in spec["volumes"]
                           if not (isinstance(v, Mapping) and v.get("name") in OWN_VOLUMES)]
        if not spec["volumes"]:
            del spec["volumes"]


def _mapping_at(obj: dict[str, Any], path: tuple[str, ...], label: str) -> dict[str, Any]:
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise errors.BadInput(f"{label}: {'.'.join(path)} is missing or not a mapping")
    return node  # type: ignore[no-any-return]


def _label(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return f"{obj.get('kind') or '(no kind)'}/{name or '(no name)'}"
