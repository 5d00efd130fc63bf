"""The chaos run's invariants and its docs section (bench/chaos/), on made-up snapshots, files
and sockets: what each reports, and that it reports nothing when the invariant holds."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any, cast

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from chaos import invariants  # noqa: E402
from chaos.report import END_MARK, START_MARK, replace_section  # noqa: E402
from meshctl.manager.snapshot import StatusSnapshot  # noqa: E402

BASE = 4242


def snap(epoch: int = 4, phase: str = "running", roles: tuple[str, ...] = ("live",),
         pid: int = 1000) -> StatusSnapshot:
    gens: list[dict[str, Any]] = [
        {"epoch": epoch - i, "role": role, "pid": pid - i, "keeper_pid": pid - 100 - i}
        for i, role in enumerate(roles)]
    return cast(StatusSnapshot, {
        "phase": phase, "epoch": epoch, "supervisor_pid": 77, "base_id": BASE,
        "live": gens[0] if gens and gens[0]["role"] == "live" else None,
        "generations": gens})


def test_one_live_generation_alone_holds_and_two_do_not() -> None:
    assert invariants.one_live_generation(snap()) == []
    problems = invariants.one_live_generation(snap(phase="draining", roles=("live", "draining")))
    assert any("phase is draining" in p for p in problems)
    assert any("not one live generation alone" in p for p in problems)


def test_status_and_state_file_must_agree_on_phase_epoch_and_live_pid(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"phase": "running", "epoch": 4, "supervisor_pid": 77,
                                 "live": {"pid": 1000}}))
    assert invariants.status_matches_state_file(snap(), state) == []
    state.write_text(json.dumps({"phase": "upgrading", "epoch": 3, "supervisor_pid": 77,
                                 "live": {"pid": 999}}))
    problems = invariants.status_matches_state_file(snap(), state)
    assert len(problems) == 3 and "live pid: status 1000, state file 999" in problems


def test_the_live_generations_sockets_and_its_parents_are_not_leaks(tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    own, parent = invariants.expected_socket_files(BASE, 4)
    for name in [*own, parent, "gen-4.admin"]:
        (hr / name if name.startswith("envoy") else tmp_path / name).touch()
    shm = tmp_path / "shm"
    shm.mkdir()
    (shm / f"envoy_shared_memory_{10 * BASE}").touch()
    assert invariants.no_leaked_files(snap(), tmp_path, shm) == []
    assert invariants.no_stale_parent_socket(snap(), tmp_path) == []

    (hr / f"envoy_child_{10 * BASE + 0}").touch()  # epoch 3's, which has exited
    (hr / f"envoy_parent_{10 * BASE + 2}").touch()  # epoch 2's stand-in's
    (tmp_path / "gen-3.admin").touch()
    leaks = invariants.no_leaked_files(snap(), tmp_path, shm)
    assert any(f"envoy_child_{10 * BASE}" in p for p in leaks)
    assert any("gen-3.admin" in p for p in leaks)
    assert not any(f"envoy_parent_{10 * BASE + 2}" in p for p in leaks)  # reported apart
    assert invariants.no_stale_parent_socket(snap(), tmp_path) != []


def test_a_parent_socket_nobody_listens_on_is_reported_and_a_bound_one_is_not(
        tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    _, parent = invariants.expected_socket_files(BASE, 4)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bound:
        bound.bind(str(hr / parent))
        assert invariants.live_parent_answered(snap(), tmp_path) == []
    # Closed: the file stays, as a killed supervisor's stand-in leaves it.
    assert "nothing answers" in invariants.live_parent_answered(snap(), tmp_path)[0]
    (hr / parent).unlink()
    assert invariants.live_parent_answered(snap(), tmp_path) == []


def test_the_supervisors_fds_may_grow_by_the_slack_and_no_more() -> None:
    assert invariants.fds_steady(12 + invariants.FD_SLACK, 12) == []
    assert invariants.fds_steady(13 + invariants.FD_SLACK, 12) != []
    assert invariants.fds_steady(None, 12) == []


def test_the_docs_section_replaces_what_lies_between_the_markers_only() -> None:
    page = f"intro\n{START_MARK}\nold figures\n{END_MARK}\n\n## Next\n"
    new = f"{START_MARK}\nnew figures\n{END_MARK}"
    assert replace_section(page, new) == f"intro\n{new}\n\n## Next\n"
    assert replace_section("no markers\n", new) == f"no markers\n\n{new}\n"
