"""The command line and environment of one Envoy generation (`meshctl.envoy.argv`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from meshctl.envoy.argv import MANAGED_FLAGS, LaunchSpec, build_argv, build_env, check_extra_args
from meshctl.errors import BadInput


@pytest.fixture
def spec(tmp_path: Path) -> LaunchSpec:
    state = tmp_path / "state"
    return LaunchSpec(
        binary=Path("/opt/envoy/bin/envoy"),
        config=Path("/etc/envoy/envoy.yaml"),
        base_id=4242,
        epoch=3,
        socket_prefix=state / "hr" / "envoy",
        admin_address_path=state / "gen-3.admin",
        drain_time_s=45,
        parent_shutdown_time_s=55,
        drain_strategy="gradual",
        concurrency=4,
    )


def value_of(argv: list[str], flag: str) -> str:
    """The value that follows `flag`; the flag must appear exactly once."""
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


def test_the_command_starts_with_the_binary_and_names_the_config(spec: LaunchSpec) -> None:
    argv = build_argv(spec)
    assert argv[0] == "/opt/envoy/bin/envoy"
    assert value_of(argv, "--config-path") == "/etc/envoy/envoy.yaml"


def test_the_base_id_and_restart_epoch_are_passed_from_the_spec(spec: LaunchSpec) -> None:
    argv = build_argv(spec)
    assert value_of(argv, "--base-id") == "4242"
    assert value_of(argv, "--restart-epoch") == "3"


def test_hot_restart_sockets_live_inside_the_state_dir_with_mode_600(
    spec: LaunchSpec, tmp_path: Path
) -> None:
    argv = build_argv(spec)
    socket_path = Path(value_of(argv, "--socket-path"))
    assert socket_path == tmp_path / "state" / "hr" / "envoy"
    assert socket_path.is_relative_to(tmp_path / "state")
    assert not socket_path.name.startswith("@")  # never the abstract namespace
    assert value_of(argv, "--socket-mode") == "600"


def test_the_admin_address_is_published_to_the_generations_file(spec: LaunchSpec) -> None:
    argv = build_argv(spec)
    assert value_of(argv, "--admin-address-path") == str(spec.admin_address_path)


def test_drain_flags_come_from_the_spec(spec: LaunchSpec) -> None:
    argv = build_argv(spec)
    assert value_of(argv, "--drain-time-s") == "45"
    assert value_of(argv, "--parent-shutdown-time-s") == "55"
    assert value_of(argv, "--drain-strategy") == "gradual"


def test_concurrency_is_passed_so_it_stays_constant_across_generations(
    spec: LaunchSpec,
) -> None:
    assert value_of(build_argv(spec), "--concurrency") == "4"
    assert value_of(build_argv(replace(spec, epoch=4)), "--concurrency") == "4"


def test_two_epochs_of_one_supervisor_differ_only_in_epoch_and_admin_file(
    spec: LaunchSpec,
) -> None:
    older = build_argv(spec)
    newer = build_argv(replace(spec, epoch=4, admin_address_path=Path("/s/gen-4.admin")))
    differing = {i for i, (a, b) in enumerate(zip(older, newer, strict=True)) if a != b}
    assert {older[i - 1] for i in differing} == {"--restart-epoch", "--admin-address-path"}


def test_extra_args_come_last_in_their_given_order(spec: LaunchSpec) -> None:
    extra = ("--log-level", "debug", "--service-cluster", "edge")
    argv = build_argv(replace(spec, extra_args=extra))
    assert tuple(argv[-4:]) == extra


def test_without_extra_args_every_managed_value_is_a_flag_value_pair(spec: LaunchSpec) -> None:
    argv = build_argv(spec)
    flags = argv[1::2]
    assert all(flag.startswith("--") for flag in flags)
    assert set(flags) <= MANAGED_FLAGS
    assert len(argv) == 1 + 2 * len(flags)


@pytest.mark.parametrize(
    "extra",
    [
        ["--base-id", "3"],
        ["--base-id=3"],
        ["--restart-epoch", "0"],
        ["-c", "/other.yaml"],
        ["--config-path=/other.yaml"],
        ["--socket-path", "/tmp/x"],
        ["--use-dynamic-base-id"],
        ["--disable-hot-restart"],
        ["--concurrency", "8"],
        ["--log-level", "info", "--drain-strategy", "gradual"],
    ],
)
def test_extra_args_that_override_a_managed_flag_are_refused(extra: list[str]) -> None:
    with pytest.raises(BadInput, match="managed by meshctl"):
        check_extra_args(extra)


def test_the_refusal_names_the_offending_flag() -> None:
    with pytest.raises(BadInput) as info:
        check_extra_args(["--log-level", "info", "--parent-shutdown-time-s=9"])
    assert "--parent-shutdown-time-s" in str(info.value)
    assert "=9" not in str(info.value)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--log-level", "debug"],
        ["--component-log-level", "upstream:debug,connection:trace"],
        ["--service-node", "n1", "--service-cluster", "c1"],
        ["-l", "warning"],
    ],
)
def test_extra_args_that_meshctl_does_not_manage_are_accepted_as_given(
    extra: list[str],
) -> None:
    assert check_extra_args(extra) == tuple(extra)


def test_the_environment_says_which_generation_and_base_id_it_is(spec: LaunchSpec) -> None:
    env = build_env(spec, {"PATH": "/usr/bin", "HOME": "/root"})
    assert env == {"PATH": "/usr/bin", "HOME": "/root",
                   "MESHCTL_EPOCH": "3", "MESHCTL_BASE_ID": "4242"}


def test_building_the_environment_leaves_the_supervisors_environment_unchanged(
    spec: LaunchSpec,
) -> None:
    base = {"PATH": "/usr/bin", "MESHCTL_EPOCH": "stale"}
    env = build_env(spec, base)
    assert base == {"PATH": "/usr/bin", "MESHCTL_EPOCH": "stale"}
    assert env["MESHCTL_EPOCH"] == "3"
    assert env is not base
