"""The hot-restart files Envoy leaves behind, and their cleanup (`meshctl.envoy.hotrestart`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.envoy.hotrestart import SHM_DIR, HotRestartFiles

ROLES = ("parent", "child", "udp_parent", "udp_child")


@pytest.fixture
def files(tmp_path: Path) -> HotRestartFiles:
    (tmp_path / "hr").mkdir()
    (tmp_path / "shm").mkdir()
    return HotRestartFiles(tmp_path / "hr" / "envoy", base_id=7, shm_dir=tmp_path / "shm")


def touch_all(paths: list[Path]) -> None:
    for path in paths:
        path.touch()


@pytest.mark.parametrize(("epoch", "socket_id"), [(0, 70), (1, 71), (2, 72), (3, 70), (4, 71),
                                                   (5, 72), (300, 70)])
def test_socket_ids_are_ten_times_the_base_id_plus_the_epoch_modulo_three(
    files: HotRestartFiles, epoch: int, socket_id: int
) -> None:
    assert files.socket_id(epoch) == socket_id


def test_a_base_id_of_zero_uses_socket_ids_zero_to_two() -> None:
    files = HotRestartFiles(Path("/s/hr/envoy"), base_id=0)
    assert [files.socket_id(e) for e in range(4)] == [0, 1, 2, 0]


def test_socket_names_are_the_prefix_role_and_id_side_by_side(
    files: HotRestartFiles, tmp_path: Path
) -> None:
    assert files.socket("child", 1) == tmp_path / "hr" / "envoy_child_71"
    assert files.socket("udp_parent", 5) == tmp_path / "hr" / "envoy_udp_parent_72"


def test_the_parent_socket_of_an_epoch_is_where_its_child_finds_it(
    files: HotRestartFiles, tmp_path: Path
) -> None:
    assert files.parent_socket(0) == tmp_path / "hr" / "envoy_parent_70"
    assert files.parent_socket(4) == tmp_path / "hr" / "envoy_parent_71"


def test_a_generation_owns_four_sockets_one_per_role(
    files: HotRestartFiles, tmp_path: Path
) -> None:
    assert files.sockets_of(2) == [tmp_path / "hr" / f"envoy_{role}_72" for role in ROLES]


def test_keep_parent_leaves_the_parent_socket_out_of_a_generations_sockets(
    files: HotRestartFiles,
) -> None:
    kept = files.sockets_of(2, keep_parent=True)
    assert files.parent_socket(2) not in kept
    assert len(kept) == 3


def test_all_sockets_covers_the_three_epoch_slots(files: HotRestartFiles) -> None:
    every = files.all_sockets()
    assert len(every) == len(set(every)) == 12
    assert set(every) == {p for e in range(3) for p in files.sockets_of(e)}


def test_the_shared_memory_segment_is_named_after_ten_times_the_base_id(
    files: HotRestartFiles, tmp_path: Path
) -> None:
    assert files.shared_memory == tmp_path / "shm" / "envoy_shared_memory_70"


def test_the_shared_memory_lives_in_dev_shm_by_default() -> None:
    files = HotRestartFiles(Path("/s/hr/envoy"), base_id=12)
    assert Path("/dev/shm") == SHM_DIR
    assert files.shared_memory == Path("/dev/shm/envoy_shared_memory_120")


def test_removing_a_generation_removes_its_four_sockets_and_no_other(
    files: HotRestartFiles,
) -> None:
    touch_all(files.all_sockets())
    files.remove_generation(1)
    assert not any(p.exists() for p in files.sockets_of(1))
    assert all(p.exists() for p in files.sockets_of(0) + files.sockets_of(2))


def test_removing_a_generation_with_keep_parent_leaves_the_stand_ins_socket(
    files: HotRestartFiles,
) -> None:
    touch_all(files.sockets_of(1))
    files.remove_generation(1, keep_parent=True)
    assert files.parent_socket(1).exists()
    assert not any(p.exists() for p in files.sockets_of(1, keep_parent=True))


def test_removing_a_generation_whose_sockets_are_already_gone_is_quiet(
    files: HotRestartFiles,
) -> None:
    files.remove_generation(0)
    files.remove_generation(0, keep_parent=True)


def test_remove_all_removes_every_socket_and_the_shared_memory(files: HotRestartFiles) -> None:
    touch_all([*files.all_sockets(), files.shared_memory])
    files.remove_all()
    assert files.existing() == []


def test_remove_all_leaves_other_supervisors_and_unrelated_files_alone(
    files: HotRestartFiles, tmp_path: Path
) -> None:
    other = HotRestartFiles(tmp_path / "hr" / "envoy", base_id=8, shm_dir=tmp_path / "shm")
    other_prefix = HotRestartFiles(tmp_path / "hr" / "proxy", base_id=7,
                                   shm_dir=tmp_path / "shm")
    bystanders = [
        *other.all_sockets(), other.shared_memory,
        *other_prefix.all_sockets(),
        tmp_path / "hr" / "envoy",
        tmp_path / "hr" / "envoy_parent_73",
        tmp_path / "hr" / "notes.txt",
        tmp_path / "shm" / "envoy_shared_memory_700",
    ]
    touch_all([*bystanders, *files.all_sockets(), files.shared_memory])
    files.remove_all()
    assert files.existing() == []
    assert [p for p in bystanders if not p.exists()] == []


def test_existing_lists_only_the_files_that_are_there(files: HotRestartFiles) -> None:
    touch_all([files.parent_socket(0), files.shared_memory])
    assert files.existing() == [files.parent_socket(0), files.shared_memory]
