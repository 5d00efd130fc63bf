"""The supervisor's settings (`meshctl.manager.settings`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from meshctl.drain.policy import DrainPolicy
from meshctl.manager.settings import BASE_ID_RANGE, SupervisorSettings, default_base_id


def test_the_base_id_of_a_state_dir_is_the_same_every_time(tmp_path: Path) -> None:
    assert default_base_id(tmp_path / "a") == default_base_id(tmp_path / "a")


def test_two_spellings_of_one_state_dir_get_one_base_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "state")
    monkeypatch.chdir(tmp_path)
    expected = default_base_id(tmp_path / "state")
    assert default_base_id(Path("state")) == expected
    assert default_base_id(tmp_path / "other" / ".." / "state") == expected
    assert default_base_id(tmp_path / "link") == expected


def test_different_state_dirs_usually_get_different_base_ids() -> None:
    dirs = [Path(f"/run/meshctl-{i}") for i in range(200)]
    ids = {default_base_id(d) for d in dirs}
    assert len(ids) >= 198  # a collision is possible, but rare


def test_base_ids_are_between_one_and_the_range() -> None:
    for i in range(500):
        assert 1 <= default_base_id(Path(f"/var/lib/pods/{i}/meshctl")) <= BASE_ID_RANGE


def test_settings_have_documented_defaults(tmp_path: Path) -> None:
    settings = SupervisorSettings(state_dir=tmp_path, binary=Path("/bin/envoy"),
                                  config=Path("/etc/envoy.yaml"), base_id=1)
    assert settings.drain == DrainPolicy()
    assert settings.concurrency == 2
    assert settings.extra_args == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.base_id = 2  # type: ignore[misc]
