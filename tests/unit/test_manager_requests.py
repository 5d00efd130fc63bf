"""The upgrade request as the supervisor reads it off its control socket (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshctl.drain.policy import DrainPolicy
from meshctl.errors import BadInput
from meshctl.manager.requests import parse_upgrade


def parse(tmp_path: Path, **args: Any) -> Any:
    live = tmp_path / "envoy"
    live.write_text("")
    return parse_upgrade(args, binary=live, config=live, drain=DrainPolicy(),
                         ready_timeout_s=60.0)


def test_an_empty_request_keeps_the_live_binary_config_policy_and_timeout(
        tmp_path: Path) -> None:
    req = parse(tmp_path)
    assert req.binary == tmp_path / "envoy" and req.ready_timeout_s == 60.0
    assert req.policy == DrainPolicy() and req.listener_change_ok is False


def test_given_fields_override_the_supervisors_own(tmp_path: Path) -> None:
    req = parse(tmp_path, drain_max_s=10, strategy="gradual", ready_timeout_s=3.5,
                listener_change_ok=True)
    assert (req.policy.drain_max_s, str(req.policy.strategy)) == (10, "gradual")
    assert req.ready_timeout_s == 3.5 and req.listener_change_ok


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 0, 1e9, "5", True, None])
def test_a_ready_timeout_that_is_not_a_sane_duration_is_bad_input(
        tmp_path: Path, value: Any) -> None:
    if value is None:
        assert parse(tmp_path, ready_timeout_s=value).ready_timeout_s == 60.0
        return
    with pytest.raises(BadInput, match="ready timeout"):
        parse(tmp_path, ready_timeout_s=value)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("binary", str(Path("/nonexistent/envoy")), "not found"),
    ("binary", 5, "must be a path"),
    ("config", "", "must be a path"),
    ("drain_max_s", -3, "drain"),
    ("frobnicate", 1, None),
    ("listener_change_ok", "yes", "true or false"),
])
def test_a_bad_field_is_one_line_of_bad_input(tmp_path: Path, field: str, value: Any,
                                               match: str | None) -> None:
    if match is None:  # unknown fields are not drain settings: ignored, as JSON readers do
        parse(tmp_path, **{field: value})
        return
    with pytest.raises(BadInput, match=match) as info:
        parse(tmp_path, **{field: value})
    assert "\n" not in str(info.value) and info.value.exit_code == 5
