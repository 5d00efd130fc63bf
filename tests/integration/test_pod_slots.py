"""Two proxy slots of one pod, each a supervisor (`meshctl run --slot a|b`) sharing the pod's
state dir, as two containers sharing an emptyDir: what the kubelet does when the image of the
standby slot is changed (start it) and when the old slot is set back to standby (SIGTERM)."""

from __future__ import annotations

import http.client
import signal
import socket
import time
from pathlib import Path

import pytest

from meshctl.exitcodes import ExitCode

from .conftest import Meshctl, Ports, envoy_config
from .test_failures import Traffic

pytestmark = pytest.mark.envoy


def ready(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/ready")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def swap(old: Meshctl, new: Meshctl, config: Path, envoy: Path) -> dict[str, object]:
    """The kubelet's part of an image swap: start the standby slot with the new image, then,
    once the old slot is idle, stop it (its container goes back to the standby image)."""
    new.start("--drain-min-s", "0.5", config=config, envoy=envoy)
    old.wait_for(lambda s: s["phase"] == "idle", 30, "the old slot to hand over")
    assert old.status()["pod"]["serving"] is True
    old.signal(signal.SIGTERM)
    assert old.wait_exit(30) == 0
    return new.status()


def test_an_image_swap_across_two_slots_and_back_loses_no_request(
        pod: tuple[Meshctl, Meshctl], ports: Ports, workdir: Path, envoy_old: Path,
        envoy_new: Path) -> None:
    a, b = pod
    config = envoy_config(workdir / "v1.yaml", ports)
    a.start("--drain-min-s", "0.5", config=config, envoy=envoy_old)

    with Traffic(ports.http) as traffic:
        on_b = swap(a, b, config, envoy_new)
        # Envoy asks its (gone) parent for stats every ~5 s: slot b answers for slot a now.
        time.sleep(6)
        assert ready(ports.admin) == (200, "LIVE\n")
        on_a = swap(b, a, config, envoy_new)
        time.sleep(1)

    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert set(traffic.stats.by_epoch) == {"0", "1", "2"}, traffic.stats.to_json()
    assert (on_b["live"]["epoch"], on_b["live"]["version"]) == (1, "1.40.0")
    assert (on_a["live"]["epoch"], on_a["live"]["version"]) == (2, "1.40.0")
    assert ready(ports.admin) == (200, "LIVE\n")


def test_a_bad_image_in_the_standby_slot_leaves_the_old_slot_serving_and_repaired(
        pod: tuple[Meshctl, Meshctl], ports: Ports, workdir: Path) -> None:
    a, b = pod
    config = envoy_config(workdir / "v1.yaml", ports)
    a.start("--drain-min-s", "0.5", config=config)
    taken = socket.create_server(("127.0.0.1", 0))
    bad = envoy_config(workdir / "bad.yaml", ports, extra_listener=int(taken.getsockname()[1]))

    try:
        with Traffic(ports.http) as traffic:
            b.start(config=bad, wait=False)
            assert b.wait_exit(30) == ExitCode.START_FAILED
            snap = a.wait_for(lambda s: s["phase"] == "running" and s["epoch"] == 1, 30,
                              "slot a to repair the hot restart")
            assert "recovery after slot b failed" in snap["last_upgrade"]["reason"]
            assert ready(ports.admin) == (200, "LIVE\n")
            # The next image swap works.
            on_b = swap(a, b, config, a.envoy)
    finally:
        taken.close()

    assert traffic.stats.failed == 0 and traffic.stats.http_error == 0, traffic.stats.to_json()
    assert on_b["live"]["epoch"] == 2
