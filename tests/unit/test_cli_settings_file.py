"""The meshctl settings file (`meshctl.cli.settings_file`): every problem is one BadInput line
naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.cli.settings_file import load_drain_policy
from meshctl.drain.policy import DrainPolicy, DrainStrategy
from meshctl.errors import BadInput
from meshctl.exitcodes import ExitCode


def settings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meshctl.yaml"
    path.write_text(text)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(BadInput) as info:
        load_drain_policy(path)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code is ExitCode.BAD_INPUT
    return message


def test_a_full_settings_file_sets_every_drain_field(tmp_path: Path) -> None:
    path = settings(tmp_path, """\
drain:
  drain_min_s: 2
  drain_max_s: 30.5
  strategy: gradual
  stop_grace_s: 3
""")
    assert load_drain_policy(path) == DrainPolicy(
        drain_min_s=2, drain_max_s=30.5, strategy=DrainStrategy.GRADUAL, stop_grace_s=3)


def test_fields_the_file_does_not_set_keep_their_defaults(tmp_path: Path) -> None:
    path = settings(tmp_path, "drain:\n  drain_max_s: 20\n")
    assert load_drain_policy(path) == DrainPolicy(drain_max_s=20)


def test_fields_the_file_does_not_set_keep_the_given_base(tmp_path: Path) -> None:
    base = DrainPolicy(drain_min_s=0, stop_grace_s=1)
    path = settings(tmp_path, "drain:\n  drain_max_s: 20\n")
    assert load_drain_policy(path, base) == DrainPolicy(drain_min_s=0, drain_max_s=20,
                                                        stop_grace_s=1)


def test_no_settings_file_gives_the_defaults() -> None:
    assert load_drain_policy(None) == DrainPolicy()


def test_no_settings_file_gives_the_given_base() -> None:
    base = DrainPolicy(drain_max_s=9)
    assert load_drain_policy(None, base) is base


@pytest.mark.parametrize("text", ["", "\n", "# nothing set yet\n", "---\n", "drain:\n",
                                  "drain: {}\n", "drain: null\n"])
def test_an_empty_settings_file_or_section_gives_the_defaults(tmp_path: Path, text: str) -> None:
    assert load_drain_policy(settings(tmp_path, text)) == DrainPolicy()


def test_a_missing_settings_file_is_bad_input_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert refusal(missing) == f"settings file not found: {missing}"


def test_a_settings_path_that_is_a_directory_is_bad_input(tmp_path: Path) -> None:
    assert refusal(tmp_path).startswith(f"settings file cannot be read: {tmp_path}")


def test_a_settings_file_that_is_not_text_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "meshctl.yaml"
    path.write_bytes(b"\xff\xfe\x00drain")
    assert refusal(path).startswith(f"settings file cannot be read: {path}")


def test_invalid_yaml_is_bad_input_with_the_line(tmp_path: Path) -> None:
    path = settings(tmp_path, "drain:\n  drain_max_s: 5\n  strategy: [gradual\n")
    message = refusal(path)
    assert message.startswith("settings file is not valid YAML (line ")
    assert message.endswith(str(path))


def test_a_settings_file_that_is_not_a_mapping_is_bad_input(tmp_path: Path) -> None:
    path = settings(tmp_path, "- drain\n- other\n")
    assert refusal(path) == f"{path}: a settings file is a mapping of sections"


def test_an_unknown_section_is_bad_input_listing_the_known_ones(tmp_path: Path) -> None:
    path = settings(tmp_path, "drain:\n  drain_max_s: 5\ndrian:\n  drain_max_s: 5\n")
    assert refusal(path) == f"{path}: unknown section(s) drian; known: drain"


def test_a_drain_section_that_is_not_a_mapping_is_bad_input(tmp_path: Path) -> None:
    path = settings(tmp_path, "drain: [1, 2]\n")
    assert refusal(path) == f"{path}: 'drain' must be a mapping"


def test_an_unknown_drain_key_is_bad_input_naming_it_and_the_known_ones(tmp_path: Path) -> None:
    path = settings(tmp_path, "drain:\n  drain_max: 5\n")
    message = refusal(path)
    assert message.startswith(f"{path}: drain: unknown drain setting(s) drain_max; known: ")
    assert "drain_max_s" in message


def test_a_drain_time_given_as_a_string_is_bad_input(tmp_path: Path) -> None:
    path = settings(tmp_path, "drain:\n  drain_max_s: 5s\n")
    assert refusal(path) == f"{path}: drain: drain_max_s must be a number of seconds, not '5s'"


def test_a_drain_time_given_as_yes_is_bad_input(tmp_path: Path) -> None:
    path = settings(tmp_path, "drain:\n  stop_grace_s: yes\n")
    assert "stop_grace_s must be a number of seconds, not True" in refusal(path)


def test_an_unknown_strategy_is_bad_input(tmp_path: Path) -> None:
    path = settings(tmp_path, "drain:\n  strategy: slowly\n")
    assert "strategy must be one of immediate, gradual" in refusal(path)


def test_an_inconsistent_window_is_bad_input(tmp_path: Path) -> None:
    path = settings(tmp_path, "drain:\n  drain_min_s: 10\n  drain_max_s: 5\n")
    assert refusal(path) == f"{path}: drain: drain_min_s (10) is above drain_max_s (5)"


def test_an_unknown_drain_key_that_yaml_reads_as_a_number_is_bad_input(tmp_path: Path) -> None:
    path = settings(tmp_path, "drain:\n  5: 1\n")
    assert "unknown drain setting(s) 5" in refusal(path)
