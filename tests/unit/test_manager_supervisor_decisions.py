"""The supervisor's decisions, driven tick by tick on a fake generation table and a FakeClock.

These reach the branches a real Envoy run reaches only by luck or by a slow fault injection:
a new generation that misses its deadline, one that dies, a drain window that ends idle, a
rollback that needs a recovery generation, a crash loop. They stand beside, never instead of,
the real-Envoy tests in tests/integration/.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from meshctl.clock import FakeClock
from meshctl.drain.policy import DrainPolicy
from meshctl.envoy.admin import ServerInfo
from meshctl.manager.generation import Generation, Role
from meshctl.manager.generations import Generations
from meshctl.manager.phase import Phase
from meshctl.manager.restarts import RestartPolicy
from meshctl.manager.settings import InitPriority, SupervisorSettings
from meshctl.manager.supervisor import Supervisor


class FakeProcess:
    """An Envoy that dies when told to: SIGTERM (exit 0) or SIGKILL."""

    def __init__(self) -> None:
        self.pid = self.envoy_pid = os.getpid()  # a real pid for /proc reads; never signalled
        self.exit_status: int | None = None
        self.signals: list[int] = []

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    def die(self, status: int = 1) -> None:
        self.exit_status = status

    def poll_adopted(self) -> bool:
        return False

    def send(self, sig: int) -> bool:
        self.signals.append(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL) and self.alive:
            self.die(0 if sig == signal.SIGTERM else -signal.SIGKILL)
        return True

    def yield_cpu(self) -> int:
        return 0

    def restore_cpu(self) -> tuple[int, int]:
        return 0, 0

    def describe_exit(self) -> str:
        return "running" if self.alive else f"exited with status {self.exit_status}"

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "create_time": None, "keeper_pid": None,
                "keeper_create_time": None, "adopted": False}


class FakeAdmin:
    def __init__(self, address_file: Path) -> None:
        self.address_file = address_file
        self.ready = False

    def is_ready(self) -> bool:
        return self.ready

    def server_info(self) -> ServerInfo:
        return ServerInfo(version="x/1.40.0/Clean/RELEASE/BoringSSL", state="LIVE", epoch=0,
                          hot_restart_version="11.104")

    def listener_ports(self) -> frozenset[int]:
        return frozenset({1})  # nothing of this test process listens there: 0 connections

    def listen_urls(self) -> frozenset[str]:
        return frozenset()  # nothing to hold (its policy: tests/unit/test_manager_holding.py)


class FakeGenerations(Generations):
    """The real table and its bookkeeping, with fake processes instead of spawned Envoys."""

    def spawn(self, binary: Path, config: Path, policy: DrainPolicy, *,
              no_parent_ok: bool = False, epoch: int | None = None, idle: bool = False,
              config_yaml: str | None = None) -> Generation:
        epoch = self.next_epoch if epoch is None else epoch
        self.next_epoch = epoch + 1
        gen = Generation(epoch=epoch, binary=binary, config=config,
                         process=FakeProcess(),  # type: ignore[arg-type]
                         admin=FakeAdmin(self.state.admin_address_file(epoch)),  # type: ignore[arg-type]
                         log_path=self.state.log_file(epoch),
                         started_mono=self.clock.monotonic(), started_wall=self.clock.wall())
        self.by_epoch[epoch] = gen
        return gen

    def reap(self) -> None:
        for gen in list(self.by_epoch.values()):
            if not gen.alive and gen.role is not Role.EXITED:
                self.exited(gen)


@pytest.fixture
def sup(sock_dir: Path) -> Supervisor:
    clock = FakeClock()
    settings = SupervisorSettings(
        state_dir=sock_dir / "state", binary=Path("/bin/true"), config=sock_dir / "envoy.yaml",
        base_id=4242, drain=DrainPolicy(drain_min_s=1.0, drain_max_s=10.0),
        ready_timeout_s=5.0, init_priority=InitPriority.NORMAL,
        restarts=RestartPolicy(max_restarts=2, window_s=60.0))
    s = Supervisor(settings, clock=clock)
    s.state.prepare()
    s.gens = FakeGenerations(settings, s.state, s.files, None, clock)
    s.live = s.gens.spawn(settings.binary, settings.config, settings.drain)
    s._state_loaded = True
    return s


def tick(s: Supervisor, seconds: float = 0.1) -> None:
    assert isinstance(s.clock, FakeClock)
    s.clock.advance(seconds)
    s.gens.reap()
    s._step()


def ready(gen: Generation | None) -> None:
    assert gen is not None
    gen.admin.ready = True  # type: ignore[attr-defined]


def running(s: Supervisor) -> Generation:
    ready(s.live)
    tick(s)
    assert s.phase is Phase.RUNNING
    assert s.live is not None
    return s.live


def test_the_first_generation_live_makes_the_supervisor_running(sup: Supervisor) -> None:
    tick(sup)
    assert sup.phase is Phase.STARTING
    live = running(sup)
    assert live.role is Role.LIVE and live.version == "1.40.0"


def test_a_new_generation_not_live_by_its_deadline_is_killed_and_the_old_one_serves(
        sup: Supervisor) -> None:
    old = running(sup)
    upgrade = sup._begin_upgrade(Path("/bin/true"), old.config, sup.settings.drain, "test", 5.0)
    new = sup.gens.by_epoch[upgrade.to_epoch]
    tick(sup, 4.9)
    assert sup.phase is Phase.UPGRADING
    ready(old)  # the old one kept its admin: no recovery needed
    tick(sup, 0.2)
    assert sup.phase is Phase.ROLLING_BACK and "not LIVE within 5s" in str(upgrade.error)
    assert new.process.signals == [signal.SIGKILL]  # never SIGTERM (Trap 3)
    tick(sup)
    assert sup.phase is Phase.RUNNING and sup.live is old and old.alive
    assert sup.history[-1]["result"] == "rolled_back"
    assert sup.history[-1]["recovery"] == "not_needed"
    assert sup.gens.next_epoch == new.epoch  # the failed epoch number is reused


def test_a_new_generation_that_dies_initializing_is_rolled_back_with_its_reason(
        sup: Supervisor) -> None:
    old = running(sup)
    upgrade = sup._begin_upgrade(Path("/bin/true"), old.config, sup.settings.drain, "test", 5.0)
    sup.gens.by_epoch[upgrade.to_epoch].process.die(1)  # type: ignore[attr-defined]
    ready(old)
    tick(sup)
    assert sup.phase is Phase.ROLLING_BACK
    assert "exited with status 1 before LIVE" in str(upgrade.error)


def test_a_live_new_generation_takes_over_and_the_old_one_ends_when_idle(
        sup: Supervisor) -> None:
    old = running(sup)
    upgrade = sup._begin_upgrade(Path("/bin/true"), old.config, sup.settings.drain, "test", 5.0)
    new = sup.gens.by_epoch[upgrade.to_epoch]
    ready(new)
    tick(sup)
    assert sup.phase is Phase.DRAINING and sup.live is new and old.role is Role.DRAINING
    for _ in range(30):  # drain_min_s 1 s, then two zero readings 0.25 s apart
        tick(sup, 0.1)
        if sup.phase is Phase.RUNNING:
            break
    assert sup.phase is Phase.RUNNING
    record = sup.history[-1]
    assert (record["result"], record["drain_end"], record["forced_closes"]) == (
        "succeeded", "idle", 0)
    assert old.process.signals == [signal.SIGTERM] and not old.alive


def test_a_rollback_that_cost_the_old_generation_its_admin_api_runs_a_recovery(
        sup: Supervisor) -> None:
    old = running(sup)
    upgrade = sup._begin_upgrade(Path("/bin/true"), old.config, sup.settings.drain, "test", 5.0)
    old.admin.ready = False  # type: ignore[attr-defined]  # closed at the child's start
    tick(sup, 5.1)
    tick(sup)
    assert sup.phase is Phase.RECOVERING and upgrade.recovery == "in_progress"
    recovery = sup.gens.by_epoch[upgrade.to_epoch]
    assert recovery.binary == old.binary and recovery.alive
    ready(recovery)
    tick(sup)
    assert sup.phase is Phase.DRAINING and upgrade.recovery == "recovered"
    for _ in range(30):
        tick(sup, 0.1)
    assert sup.phase is Phase.RUNNING and sup.history[-1]["result"] == "rolled_back"


def test_envoy_dying_on_its_own_is_restarted_then_a_crash_loop_fails_the_supervisor(
        sup: Supervisor) -> None:
    live = running(sup)
    live.process.die(134)  # type: ignore[attr-defined]
    tick(sup)
    assert sup.phase is Phase.RESTARTING
    for _crash in range(2):
        tick(sup, 15.0)  # past the backoff: a fresh generation starts
        assert sup.phase is Phase.STARTING
        running(sup)
        assert sup.live is not None
        sup.live.process.die(134)  # type: ignore[attr-defined]
        tick(sup)
    assert sup.phase in (Phase.FAILED, Phase.STOPPING)
    assert "crash loop" in str(sup.failure)
