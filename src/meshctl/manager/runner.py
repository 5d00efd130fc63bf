"""`meshctl run`: turn CLI values into settings and run the supervisor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from meshctl import errors
from meshctl.drain.policy import DrainPolicy
from meshctl.envoy.argv import check_extra_args
from meshctl.envoy.binary import resolve_binary
from meshctl.exitcodes import ExitCode
from meshctl.manager.settings import SupervisorSettings, default_base_id
from meshctl.manager.supervisor import Supervisor


def bundled_demo_config() -> Path:
    return Path(str(resources.files("meshctl.envoy").joinpath("configs/demo.yaml")))


def check_config(path: Path) -> Path:
    if not path.exists():
        raise errors.BadInput(f"Envoy config not found: {path}")
    if not path.is_file():
        raise errors.BadInput(f"Envoy config is not a file: {path}")
    try:
        path.read_bytes()
    except OSError as exc:
        raise errors.BadInput(f"Envoy config cannot be read: {path}: {exc.strerror}") from exc
    return path.absolute()


def run_supervisor(*, config: Path | None, envoy: str | None, state_dir: Path,
                   base_id: int | None, concurrency: int, drain: DrainPolicy,
                   ready_timeout_s: float, extra_args: Sequence[str],
                   environ: Mapping[str, str]) -> ExitCode:
    settings = SupervisorSettings(
        state_dir=state_dir,
        binary=resolve_binary(envoy, environ),
        config=check_config(config if config is not None else bundled_demo_config()),
        base_id=base_id if base_id is not None else default_base_id(state_dir),
        drain=drain,
        concurrency=concurrency,
        ready_timeout_s=ready_timeout_s,
        extra_args=check_extra_args(extra_args),
    )
    supervisor = Supervisor(settings)
    code = supervisor.run()
    if supervisor.failure and code != ExitCode.OK:
        raise errors.MeshctlError(supervisor.failure) if code == ExitCode.FAILED else \
            errors.StartFailed(supervisor.failure)
    return code
