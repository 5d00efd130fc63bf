"""Which files meshctl lets Envoy run from: none another user could change.

meshctl runs as root on hosts. A binary or config that another user can replace (the file
itself, or any directory above it) would let that user run code as root, now or at the next
crash restart, which runs the same path again. So every Envoy binary and config is checked
when it is accepted (`meshctl run`, `meshctl upgrade`, the upgrade request the supervisor
receives) and again by the supervisor just before it starts a generation from it.

Trusted: owned by us or by root, not writable by group or others; every directory above it
likewise, except that a sticky directory writable by all (/tmp) is fine, since nobody but a
file's owner may rename or remove it there. The check follows symlinks to the real file and
checks that file's path (a link another user owns is no weaker than its target's directory).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from meshctl.errors import BadInput


def untrusted_reason(path: Path) -> str | None:
    """Why another user could change `path` (resolved), or None when nobody can."""
    me = os.getuid()
    try:
        real = path.resolve(strict=True)
        st = real.stat()
    except OSError as exc:
        return f"cannot be checked ({exc.strerror})"
    if st.st_uid not in (0, me):
        return f"belongs to uid {st.st_uid}"
    if st.st_mode & 0o022:
        return f"can be written by other users (mode {stat.S_IMODE(st.st_mode):o})"
    for parent in real.parents:
        try:
            pst = parent.stat()
        except OSError as exc:
            return f"its directory {parent} cannot be checked ({exc.strerror})"
        if pst.st_uid not in (0, me):
            return f"its directory {parent} belongs to uid {pst.st_uid}"
        if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
            return (f"its directory {parent} can be written by other users (mode "
                    f"{stat.S_IMODE(pst.st_mode):o})")
    return None


def check_trusted(path: Path, what: str) -> Path:
    """`path`, or BadInput (exit 5) naming why another user could change it."""
    reason = untrusted_reason(path)
    if reason is not None:
        raise BadInput(f"{what} {path} {reason}: another user could change what meshctl runs "
                       f"as uid {os.getuid()}; use a file only its owner (you or root) can write")
    return path
