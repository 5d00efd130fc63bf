"""The kubelet's readiness rules, pure: what the fake kubelet (`kubesim.kubelet`) reports as a
container's `started` and `ready` and as the pod's `ContainersReady` and `Ready` conditions.
Nothing here sleeps or reads a clock: every function takes `now` (seconds on a monotonic
clock), so the rules are unit-tested on a clock the test moves (tests/unit/).

Each rule is the real kubelet's, read in kubernetes/kubernetes (its main branch, late 2026;
the native-sidecar rules since 1.29); the function named after each rule is where it lives:

  pkg/kubelet/prober/worker.go         `worker.run`, `worker.doProbe`: one worker per container
                                       and probe type, probing at once, then on each tick of a
                                       ticker started with the worker (not with the container),
                                       or when triggered by hand
  pkg/kubelet/prober/prober_manager.go `manager.UpdatePodStatus`, `manager.isContainerStarted`:
                                       `started` and `ready` of each container in the status;
                                       a started container not yet ready triggers its readiness
                                       probe at once
  pkg/kubelet/status/generate.go       `GenerateContainersReadyCondition`,
                                       `GeneratePodReadyCondition`: the pod conditions
  pkg/kubelet/status/status_manager.go `updateLastTransitionTime`: a condition's
                                       lastTransitionTime moves only when its status changes

The rules, as `ProbeWorker`, `container_started`, `container_ready` and `pod_conditions` apply
them:
  - a container that is not running is neither started nor ready;
  - with a startup probe, a container is started only once that probe has passed, and its
    readiness probe does not run before (`doProbe`: "Disable other probes until container has
    started");
  - with a readiness probe, ready only once the probe's result is Success: a new container
    starts at Failure (`newWorker`: `initialValue`), no probe runs within
    `initialDelaySeconds` of its start, a result changes only after `successThreshold`
    (`failureThreshold`) passes (failures) in a row;
  - without a readiness probe, ready once started;
  - a restarted container is a new container id: its readiness starts again at Failure (but
    the run of equal results goes on: `doProbe` does not reset `lastResult` and `resultRun`
    for a new container, so with `successThreshold` > 1 a pass of the old container counts);
  - the pod's ContainersReady: every regular container and every native sidecar (an init
    container with `restartPolicy: Always`) ready; classic init containers and ephemeral
    containers never count; Ready: ContainersReady and every readiness gate's condition True.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CONTAINERS_READY = "ContainersReady"
READY = "Ready"
KUBELET_CONDITIONS = frozenset({"PodScheduled", "Initialized", CONTAINERS_READY, READY,
                                "PodReadyToStartContainers"})
"""Conditions the kubelet owns (`kubetypes.PodConditionsByKubelet`); any other condition (a
readiness gate's) is someone else's, and the kubelet keeps it as it finds it."""


class Result(enum.Enum):
    """`prober/results.Result`."""

    UNKNOWN = "unknown"
    SUCCESS = "success"
    FAILURE = "failure"


class ProbeType(enum.Enum):
    READINESS = "readiness"
    STARTUP = "startup"


@dataclass(frozen=True)
class ProbeSpec:
    """A container's probe, with the API server's defaults for unset fields (core/v1
    `SetDefaults_Probe`)."""

    initial_delay_s: int = 0
    period_s: int = 10
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_spec(cls, probe: Mapping[str, Any] | None) -> ProbeSpec | None:
        """The probe of a container spec (`readinessProbe`, `startupProbe`), None if unset."""
        if not probe:
            return None
        return cls(initial_delay_s=int(probe.get("initialDelaySeconds") or 0),
                   period_s=max(1, int(probe.get("periodSeconds") or 10)),
                   success_threshold=max(1, int(probe.get("successThreshold") or 1)),
                   failure_threshold=max(1, int(probe.get("failureThreshold") or 3)))


@dataclass(frozen=True)
class ContainerView:
    """A container as the kubelet's status manager holds it, which is what a probe worker
    reads (`doProbe` reads `statusManager.GetPodStatus`, not the runtime)."""

    container_id: str | None
    """None until the runtime has created it (image pull, creation)."""
    running: bool
    started_at_s: float | None = None
    """When it began running, on the kubelet's monotonic clock."""
    started: bool = False
    """`containerStatus.started`, as last computed (`isContainerStarted`)."""


@dataclass
class ProbeWorker:
    """`prober/worker.go` for one container and one probe type. The worker lives as long as
    the pod (`manager.AddPod`), across container restarts; its ticker starts when it does."""

    probe_type: ProbeType
    spec: ProbeSpec
    created_at_s: float
    container_id: str | None = None
    result: Result | None = None
    """What the results manager holds for `container_id` (None: nothing yet)."""
    last_result: Result = Result.UNKNOWN
    result_run: int = 0
    triggered: bool = False
    """A manual run is pending (`manualTriggerCh`, a channel of one)."""
    next_tick_s: float = field(init=False)

    def __post_init__(self) -> None:
        # `run()` probes once at once (`for w.doProbe(ctx)`), then on each tick.
        self.next_tick_s = self.created_at_s

    @property
    def initial_value(self) -> Result:
        """`newWorker`: readiness starts at Failure, startup at Unknown."""
        return Result.FAILURE if self.probe_type is ProbeType.READINESS else Result.UNKNOWN

    def trigger(self) -> None:
        """`manager.UpdatePodStatus`: a non-blocking send; a pending trigger absorbs another."""
        self.triggered = True

    def due(self, now: float) -> bool:
        return self.triggered or now >= self.next_tick_s

    def next_due_s(self) -> float:
        """When `due()` turns true without a trigger (for a driver that sleeps until then)."""
        return self.next_tick_s

    def do_probe(self, now: float, container: ContainerView | None,
                 probe: Callable[[], bool]) -> None:
        """One pass of `doProbe`, when `due(now)`. `probe()` runs the probe itself (True: it
        passed); it is called only when the rules say a probe runs now."""
        self.triggered = False
        if now >= self.next_tick_s:
            # A Go ticker drops the ticks a slow receiver missed: the next one is on the grid.
            missed = int((now - self.next_tick_s) // self.spec.period_s) + 1
            self.next_tick_s += missed * self.spec.period_s
        if container is None or container.container_id is None:
            return  # "Probe target container not found": wait for more information
        if container.container_id != self.container_id:
            self.container_id = container.container_id
            self.result = self.initial_value  # a new container: resume at the initial value
        if not container.running:
            self.result = Result.FAILURE  # "Non-running container probed"
            return
        started_at = container.started_at_s if container.started_at_s is not None else now
        if int(now - started_at) < self.spec.initial_delay_s:
            return  # "Probe disabled for InitialDelaySeconds"
        if container.started and self.probe_type is ProbeType.STARTUP:
            return  # a startup probe stops once the container has started
        if not container.started and self.probe_type is not ProbeType.STARTUP:
            return  # other probes wait until the startup probe has passed
        outcome = Result.SUCCESS if probe() else Result.FAILURE
        if outcome is self.last_result:
            self.result_run += 1
        else:
            self.last_result, self.result_run = outcome, 1
        threshold = (self.spec.failure_threshold if outcome is Result.FAILURE
                     else self.spec.success_threshold)
        if self.result_run < threshold:
            return  # below its threshold: the result held stays as it was
        self.result = outcome

    def result_for(self, container_id: str | None) -> Result | None:
        """The results manager's `Get(containerID)`: nothing for another container."""
        return self.result if container_id is not None and container_id == self.container_id \
            else None


def container_started(running: bool, container_id: str | None,
                      startup: ProbeWorker | None) -> bool:
    """`manager.isContainerStarted`: running, and its startup probe (if any) has passed."""
    if not running:
        return False
    if startup is None:
        return True
    return startup.result_for(container_id) is Result.SUCCESS


def container_ready(running: bool, started: bool, container_id: str | None,
                    readiness: ProbeWorker | None, *, sync: bool = False) -> bool:
    """`manager.UpdatePodStatus` for one container (regular or native sidecar): started,
    running, and its readiness probe's result Success, or no readiness probe. On a pod sync
    (`sync`: the kubelet runs `UpdatePodStatus` when it syncs the pod: a spec change, a
    container event seen by PLEG, a probe result that changed), a started container that is
    not ready triggers its readiness probe at once, a side effect of the real function too."""
    if not (started and running):
        return False
    if readiness is None:
        return True
    if readiness.result_for(container_id) is Result.SUCCESS:
        return True
    if sync:
        readiness.trigger()
    return False


def counted_containers(spec: Mapping[str, Any]) -> list[str]:
    """The containers the Ready condition counts (`GenerateContainersReadyCondition`): native
    sidecars (init containers with `restartPolicy: Always`), then the regular containers.
    Classic init containers and ephemeral containers are not among them."""
    sidecars = [str(c["name"]) for c in spec.get("initContainers") or []
                if c.get("restartPolicy") == "Always"]
    return sidecars + [str(c["name"]) for c in spec.get("containers") or []]


def pod_conditions(spec: Mapping[str, Any], ready: Mapping[str, bool],
                   previous: Sequence[Mapping[str, Any]], now_iso: str) -> list[dict[str, Any]]:
    """The pod's conditions after a status change: ContainersReady and Ready computed from
    `ready` ({container name: ready}; a counted container missing from it is of unknown
    status, hence not ready), every condition the kubelet does not own kept as it was, and
    each lastTransitionTime kept unless the status changed (`updateLastTransitionTime`)."""
    names = counted_containers(spec)
    unready = [n for n in names if not ready.get(n, False)]
    containers_ready: dict[str, Any] = {"type": CONTAINERS_READY, "status": str(not unready)}
    if unready:
        containers_ready |= {"reason": "ContainersNotReady",
                             "message": f"containers with unready status: [{' '.join(unready)}]"}
    others = [dict(c) for c in previous if c.get("type") not in KUBELET_CONDITIONS]
    gates = _unready_gates(spec, others)
    pod_ready: dict[str, Any] = {"type": READY, "status": str(not unready and not gates)}
    if unready:
        pod_ready |= {"reason": containers_ready["reason"],
                      "message": containers_ready["message"]}
    elif gates:
        pod_ready |= {"reason": "ReadinessGatesNotReady", "message": ", ".join(gates)}
    before = {str(c.get("type")): c for c in previous}
    for condition in (containers_ready, pod_ready):
        old = before.get(condition["type"])
        condition["lastTransitionTime"] = (
            old.get("lastTransitionTime") or now_iso
            if old is not None and old.get("status") == condition["status"] else now_iso)
    return [containers_ready, pod_ready, *others]


def _unready_gates(spec: Mapping[str, Any], conditions: Sequence[Mapping[str, Any]]) -> list[str]:
    """`GeneratePodReadyCondition`: one message per readiness gate whose condition is missing
    or not True."""
    by_type = {str(c.get("type")): c for c in conditions}
    messages = []
    for gate in spec.get("readinessGates") or []:
        kind = str(gate.get("conditionType"))
        condition = by_type.get(kind)
        if condition is None:
            messages.append(f"corresponding condition of pod readiness gate {kind!r} does not "
                            f"exist.")
        elif condition.get("status") != "True":
            messages.append(f"the status of pod readiness gate {kind!r} is not \"True\", but "
                            f"{condition.get('status')}")
    return messages


def ready_status(conditions: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the pod's Ready condition is True."""
    return any(c.get("type") == READY and c.get("status") == "True" for c in conditions)
