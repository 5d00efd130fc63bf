"""The CLI's pre-flight: the new binary is run; the running side is what the live generation
said at LIVE, and its binary is run only when that is unknown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_envoy_binary import HASH, executable, fake_envoy

from meshctl.errors import PreflightFailed
from meshctl.manager.operations import preflight

NEW_BANNER = f"envoy  version: {HASH}/1.40.0/Clean/RELEASE/BoringSSL"


@pytest.fixture
def new_binary(tmp_path: Path) -> Path:
    return fake_envoy(tmp_path / "new" / "envoy", version_banner=NEW_BANNER)


@pytest.fixture
def running_binary(tmp_path: Path) -> Path:
    """The running generation's binary, replaced on disk since: it leaves a mark when run."""
    mark = tmp_path / "old-binary-was-run"
    return executable(tmp_path / "old" / "envoy", f"#!/bin/sh\ntouch {mark}\nexit 1\n")


def live(binary: Path, **extra: Any) -> dict[str, Any]:
    return {"binary": str(binary), "config": "/etc/envoy.yaml", **extra}


def test_the_running_side_comes_from_the_live_record_without_running_its_binary(
        tmp_path: Path, new_binary: Path, running_binary: Path) -> None:
    checked = preflight(new_binary, tmp_path / "envoy.yaml",
                        live(running_binary, version="1.39.3", hot_restart_version="11.104"))
    assert checked == {"version": "1.40.0", "hot_restart_version": "11.104"}
    assert not (tmp_path / "old-binary-was-run").exists()


def test_a_new_binary_of_another_hot_restart_version_than_the_process_is_refused(
        tmp_path: Path, new_binary: Path, running_binary: Path) -> None:
    with pytest.raises(PreflightFailed, match=r"hot-restart version mismatch: running 1\.39\.3 "
                                              r"speaks 10\.200, new 1\.40\.0 speaks 11\.104"):
        preflight(new_binary, tmp_path / "envoy.yaml",
                  live(running_binary, version="1.39.3", hot_restart_version="10.200"))


@pytest.mark.parametrize("known", [{}, {"version": "1.39.3"}, {"version": None,
                                                               "hot_restart_version": None}])
def test_without_the_live_record_the_running_binary_is_probed(
        tmp_path: Path, new_binary: Path, known: dict[str, Any]) -> None:
    old = fake_envoy(tmp_path / "old" / "envoy", version_banner="envoy  version: "
                     f"{HASH}/1.39.3/Clean/RELEASE/BoringSSL", hot_restart="10.200")
    with pytest.raises(PreflightFailed, match=r"running 1\.39\.3 speaks 10\.200"):
        preflight(new_binary, tmp_path / "envoy.yaml", live(old, **known))
