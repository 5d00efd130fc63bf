"""The meshctl settings file (YAML), read by the CLI only; flags override what it sets.

    drain:
      drain_min_s: 1        # never end a drain before this
      drain_max_s: 45       # always end it by this; open connections are forced closed
      strategy: immediate   # Envoy's --drain-strategy: immediate or gradual
      stop_grace_s: 5       # SIGTERM, then this long, then SIGKILL
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from meshctl import errors
from meshctl.cli.bounds import check_drain
from meshctl.drain.policy import DrainPolicy

SECTIONS = ("drain",)


def load_drain_policy(path: Path | None, base: DrainPolicy | None = None) -> DrainPolicy:
    """The drain policy of a settings file over `base` (defaults). Every problem is BadInput
    naming the file; values are held to the bounds of the flags (`meshctl.cli.bounds`)."""
    policy = base or DrainPolicy()
    if path is None:
        return policy
    data = _load(path)
    drain = data.get("drain") or {}
    if not isinstance(drain, dict):
        raise errors.BadInput(f"{path}: 'drain' must be a mapping")
    try:
        policy = policy.with_overrides(drain)
    except ValueError as exc:
        raise errors.BadInput(f"{path}: drain: {exc}") from exc
    return check_drain(policy, f"{path}: drain: ")


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise errors.BadInput(f"settings file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.BadInput(f"settings file cannot be read: {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise errors.BadInput(f"settings file is not valid YAML{where}: {path}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise errors.BadInput(f"{path}: a settings file is a mapping of sections")
    unknown = sorted(str(k) for k in set(data) - set(SECTIONS))
    if unknown:
        raise errors.BadInput(f"{path}: unknown section(s) {', '.join(map(str, unknown))}; "
                              f"known: {', '.join(SECTIONS)}")
    return data
