"""The pod-slot steps: a slot's supervisor starting from another slot's Envoy, and handing
its own over (HANDING_OVER, then IDLE; an ephemeral slot then exits).

Proxy slots share a pod (`meshctl.manager.pod`): the standby slot's supervisor (or an
ephemeral slot's) starts the next generation, which hot-restarts from the live slot's; the
live slot sees it in the pod ledger (`handover.read_news`, a pure decision) and drains.
Mixed into `Supervisor` like the upgrade steps it builds on (`meshctl.manager.upgrading`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from meshctl import errors
from meshctl.drain.window import DrainWindow
from meshctl.exitcodes import ExitCode
from meshctl.manager import handover, repair
from meshctl.manager.generation import Generation, Role
from meshctl.manager.phase import Phase, transition
from meshctl.manager.pod import GenState, is_ephemeral
from meshctl.manager.upgrading import UpgradeSteps

log = logging.getLogger("meshctl.manager.supervisor")

_POD_CHECK_S = 0.25  # as the supervisor's ledger reads
_HANDOFF_MAX_S = 5.0
"""How long an idle ephemeral slot waits for the new slot to answer on its ended generation's
hot-restart socket before it exits anyway (half of Envoy's ten one-second retries)."""


class PodSlotSteps(UpgradeSteps):
    _handled_failures: set[int]
    _idle_since: float = 0.0

    _orphan_checked: float = 0.0

    def _begin_stop(self, graceful: bool) -> None:
        raise NotImplementedError  # the supervisor's

    def _start_generation(self, *, no_parent_ok: bool) -> None:
        raise NotImplementedError  # the supervisor's

    def _fail(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        raise NotImplementedError  # the supervisor's

    def _start_in_pod(self, binary: Path, config: Path) -> None:
        """The other slot's generation is live: hot-restart from it (the image swap). Nothing
        is live: a cold start, on the next epoch of the pod's ledger."""
        assert self.ledger is not None
        other = self.ledger.other_live()
        if other is not None:
            epoch = other[0] + 1
            log.info("slot %s: hot restart from slot %s's epoch %d", self.settings.slot,
                     other[1].get("slot"), other[0])
            self.live = self.gens.spawn(binary, config, self.settings.drain, epoch=epoch)
            return
        known = [int(k) for k in self.ledger.read()["generations"]]
        epoch = max(known) + 1 if known else 0
        if epoch == 0:
            self.files.remove_all()
        else:
            repair.clear_before_start(self.files, binary)
            self._parent_for_restart(epoch - 1)
        self.live = self.gens.spawn(binary, config, self.settings.drain, epoch=epoch,
                                no_parent_ok=epoch > 0)

    def _check_pod(self, live: Generation) -> None:
        """What the other slot did: took over from us, failed and wedged us, or ended our
        parent (whose socket we then answer on); decided in `meshctl.manager.handover`."""
        assert self.ledger is not None
        news = handover.read_news(
            live.epoch, self.ledger.newer(live.epoch), self.ledger.state_of(live.epoch - 1),
            ours=self.gens.by_epoch, answered=self.gens.stand_ins,
            handled_failures=self._handled_failures)
        if news.answer_parent:
            self.gens.bind_stand_in_for(live.epoch - 1)
        if news.epoch is None:
            return
        slot = news.entry.get("slot")
        if news.action is handover.PodAction.DRAIN:
            self._begin_handover(live, news.epoch, dict(news.entry))
        elif news.action is handover.PodAction.CHECK_REPAIR:
            self._handled_failures.add(news.epoch)
            reason = repair.needs_recovery(self.files, live)
            if reason is not None:
                log.warning("slot %s's epoch %d failed: %s; recovering", slot, news.epoch,
                            reason)
                self.metrics.envoy_restarted("recovery")
                self.gens.next_epoch = news.epoch
                self._begin_upgrade(live.binary, live.config, self.settings.drain,
                                    f"recovery after slot {slot} failed",
                                    self.settings.ready_timeout_s)

    def _begin_handover(self, live: Generation, epoch: int, entry: dict[str, Any]) -> None:
        upgrade = self._new_upgrade(live, epoch, Path(str(entry.get("binary", "?"))),
                                    live.config, self.settings.drain,
                                    f"slot {entry.get('slot')} took over",
                                    self.settings.ready_timeout_s)
        upgrade.to_pid = entry.get("pid")
        upgrade.to_version = entry.get("version")
        now = self.clock.monotonic()
        upgrade.window = DrainWindow(upgrade.drain, started_at=now)
        upgrade.event(now, "drain_start")
        live.role = Role.DRAINING
        # The other slot holds them now; ours, kept, would join a cold start's reuse_port
        # group there after a crash, taking connections nobody accepts.
        self.holding.drop(f"slot {entry.get('slot')} took over")
        assert self.ledger is not None
        self.ledger.record(live.epoch, GenState.DRAINING)
        log.info("slot %s took over with epoch %d: epoch %d drains", entry.get("slot"), epoch,
                 live.epoch)
        self.phase = transition(self.phase, Phase.HANDING_OVER)
        self._save()

    def _step_handing_over(self) -> None:
        upgrade, old = self.upgrade, self.live
        assert upgrade is not None and upgrade.window is not None and old is not None
        now = self.clock.monotonic()
        if not old.alive:
            upgrade.drain_s = round(upgrade.window.elapsed(now), 3)
            upgrade.drain_end = upgrade.drain_end or "exited"
            upgrade.event(now, "old_exited")
            self.live = None
            self._finish_upgrade("succeeded", then=Phase.IDLE)
            self._idle_since = now
            log.info("handed over: %s", "an ephemeral slot's supervisor exits once the new "
                     "slot answers on the ended generation's socket" if self._ephemeral else
                     "idle until this container is switched to standby")
            return
        self._drain_old(upgrade, old, now)

    @property
    def _ephemeral(self) -> bool:
        return self.settings.slot is not None and is_ephemeral(self.settings.slot)

    def _step_idle(self) -> None:
        """A regular slot stays idle (an exit would make the kubelet restart its container).
        An ephemeral slot's supervisor exits: nothing restarts it, and idle it only holds
        memory in the pod's cgroup. Not before the new slot's stand-in has replaced ours on
        the ended generation's socket (it does within a ledger read, 0.25 s), or
        _HANDOFF_MAX_S: until one answers there, the live Envoy's Terminate is refused and
        retried (Trap 2: ten tries a second apart, then it aborts)."""
        self.gens.tick_stoppers()
        if not self._ephemeral:
            self._take_back()
            return
        ours = any(s.at_path() for s in self.gens.stand_ins.values())
        if ours and self.clock.monotonic() - self._idle_since < _HANDOFF_MAX_S:
            return
        log.info("ephemeral slot %s: idle, exiting%s", self.settings.slot,
                 " (our stand-in was not replaced in time)" if ours else "")
        self._begin_stop(graceful=True)

    def _take_back(self) -> None:
        """An idle regular slot serves again when the ephemeral slot that took over is gone
        for good (`PodLedger.orphaned_by`): its Envoy died with its container, its held
        sockets too, so this is a cold start on this slot's own (older) image, and
        connections are refused until it is LIVE. Better than a pod that serves nothing."""
        assert self.ledger is not None
        now = self.clock.monotonic()
        if now - self._orphan_checked < _POD_CHECK_S:
            return
        self._orphan_checked = now
        gone = self.ledger.orphaned_by()
        if gone is None:
            return
        log.warning("slot %s: ephemeral slot %s is gone and nothing serves; starting again",
                    self.settings.slot, gone)
        self.metrics.envoy_restarted("crash")
        self.phase = transition(self.phase, Phase.STARTING)
        try:
            self._start_generation(no_parent_ok=True)
        except errors.StartFailed as exc:
            self._fail(str(exc), ExitCode.START_FAILED)
