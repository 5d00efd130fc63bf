"""`meshctl run`: turn CLI values into settings and run the supervisor."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from meshctl import errors
from meshctl.drain.policy import DrainPolicy
from meshctl.envoy.argv import check_extra_args
from meshctl.envoy.binary import check_config_file, resolve_binary
from meshctl.exitcodes import ExitCode
from meshctl.manager.pod import SLOT_NAMES, is_slot
from meshctl.manager.process import keeper_binary
from meshctl.manager.restarts import RestartPolicy
from meshctl.manager.settings import InitPriority, SupervisorSettings, default_base_id
from meshctl.manager.state import StateDir
from meshctl.manager.supervisor import Supervisor
from meshctl.trust import check_trusted


def bundled_demo_config() -> Path:
    return Path(str(resources.files("meshctl.envoy").joinpath("configs/demo.yaml")))


def render_demo_config(dest: Path, admin_socket: Path, *, listener_port: int = 10000,
                       body: str = "hello from meshctl demo") -> Path:
    """The bundled demo config, written to `dest` with its admin API on `admin_socket` (0600):
    never on a port any local user can reach."""
    text = (bundled_demo_config().read_text()
            .replace('"@ADMIN_SOCKET@"', json.dumps(str(admin_socket)))
            .replace("port_value: 10000", f"port_value: {listener_port}")
            .replace("hello from meshctl demo", body))
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(dest)
    return dest


def parse_health_address(text: str) -> tuple[str, int] | None:
    """"HOST:PORT" (port 0: any free port), or "off"."""
    if text.strip().lower() == "off":
        return None
    host, sep, port = text.rpartition(":")
    try:
        value = int(port)
    except ValueError:
        value = -1
    if not sep or not host or not 0 <= value <= 65535:
        raise errors.BadInput(f"health address must be HOST:PORT or off, not {text!r}")
    return host.strip("[]"), value


def run_supervisor(*, config: Path | None, envoy: str | None, state_dir: Path,
                   base_id: int | None, concurrency: int, drain: DrainPolicy,
                   ready_timeout_s: float, extra_args: Sequence[str],
                   environ: Mapping[str, str], health: tuple[str, int] | None = None,
                   keeper: bool = True, restarts: RestartPolicy | None = None,
                   slot: str | None = None,
                   init_priority: InitPriority = InitPriority.AUTO,
                   hold_sockets: bool = True) -> ExitCode:
    keeper_path = keeper_binary() if keeper else None
    if keeper and keeper_path is None:
        raise errors.BadInput("dumb-init (the keeper) is not installed; install the "
                              "dumb-init package or run with --no-keeper")
    pod_dir: Path | None = None
    if slot is not None:
        if not is_slot(slot):
            raise errors.BadInput(f"--slot must be one of {SLOT_NAMES}, not {slot!r}")
        # The state dir given is the pod's shared dir; this slot's own state lives inside.
        pod_dir, state_dir = state_dir, state_dir / f"slot-{slot}"
    # Everything that can be refused is, before anything is created.
    binary = check_trusted(resolve_binary(envoy, environ), "Envoy binary")
    extra = check_extra_args(extra_args)
    if config is not None:
        config = check_trusted(check_config_file(config).absolute(), "Envoy config")
    else:
        # The bundled config, with its admin socket in the state dir (checked as ours first).
        sd = StateDir(state_dir, pod_dir / "hr" if pod_dir is not None else None)
        sd.prepare()
        config = check_trusted(render_demo_config(sd.root / "demo-envoy.yaml",
                                                  sd.root / "admin.sock"), "Envoy config")
    settings = SupervisorSettings(
        state_dir=state_dir,
        slot=slot,
        pod_dir=pod_dir,
        binary=binary,
        config=config,
        base_id=base_id if base_id is not None else default_base_id(pod_dir or state_dir),
        drain=drain,
        concurrency=concurrency,
        ready_timeout_s=ready_timeout_s,
        extra_args=extra,
        init_priority=init_priority,
        hold_sockets=hold_sockets,
        keeper=keeper_path,
        health_host=health[0] if health else "127.0.0.1",
        health_port=health[1] if health else None,
        restarts=restarts or RestartPolicy(),
    )
    supervisor = Supervisor(settings)
    code = supervisor.run()
    if supervisor.failure and code != ExitCode.OK:
        raise errors.MeshctlError(supervisor.failure) if code == ExitCode.FAILED else \
            errors.StartFailed(supervisor.failure)
    return code
