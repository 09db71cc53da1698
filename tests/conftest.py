"""Shared fixtures and the one rule for optional components.

A test that needs something this machine may lack (the shared data, sshd,
Elasticsearch, Chromium, ...) calls ``require(NAME, available, reason)``.
On a user's machine it skips with the reason; where ``WATCHTOWER_REQUIRE_<NAME>=1``
is set (``.ci/run`` sets them all) the same test fails instead, so CI cannot
go green by skipping.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WATCHTOWER_SHARED_DATA", ROOT.parent / "shared" / "data"))
TEST_DATA = Path(__file__).resolve().parent / "data"

# Hermetic settings: a WATCHTOWER_* setting in the shell (or the node URL .ci/run exports) must not
# reach the notebook kernels the pipeline tests start, which load their settings from the
# environment too. The node URL is kept here for the tests that want a node (``ES_URL``).
ES_URL = os.environ.get("WATCHTOWER_ES_URL")
for _name in [n for n in os.environ if n.startswith("WATCHTOWER_")]:
    if not _name.startswith("WATCHTOWER_REQUIRE_") and _name not in ("WATCHTOWER_SHARED_DATA", "WATCHTOWER_CHROMIUM"):
        del os.environ[_name]

# name -> how a user gets it (shown in skip reasons)
COMPONENTS = {
    "DATA": "the shared Zeek corpus at ../shared/data (or set WATCHTOWER_SHARED_DATA)",
    "SSHD": "Debian's openssh-server (/usr/sbin/sshd): apt-get install openssh-server",
    "ES": "an Elasticsearch node: scripts/es-node start, or set WATCHTOWER_ES_URL",
    "CHROMIUM": "headless Chromium: apt-get install chromium",
    "POPPLER": "pdftoppm: apt-get install poppler-utils",
    "SFTP": "the sftp client: apt-get install openssh-client",
    "SYSTEMD": "systemd-analyze, to check printed systemd units: apt-get install systemd",
}


def require(name: str, available: bool, detail: str = "") -> None:
    """Skip (or, under WATCHTOWER_REQUIRE_<name>=1, fail) when a component is missing."""
    if available:
        return
    how = COMPONENTS.get(name, name)
    reason = f"needs {how}" + (f" ({detail})" if detail else "")
    if os.environ.get(f"WATCHTOWER_REQUIRE_{name}", "") not in ("", "0"):
        pytest.fail(f"WATCHTOWER_REQUIRE_{name} is set but this test {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data corpus; skips (or fails in CI) where it is absent."""
    require("DATA", SHARED_DATA.is_dir(), f"looked in {SHARED_DATA}")
    return SHARED_DATA


def pytest_report_header(config: pytest.Config) -> list[str]:
    present = {
        "DATA": SHARED_DATA.is_dir(),
        "SSHD": Path("/usr/sbin/sshd").exists(),
        "ES": bool(ES_URL),
        "CHROMIUM": bool(shutil.which("chromium") or shutil.which("chromium-browser")),
        "POPPLER": bool(shutil.which("pdftoppm")),
        "SFTP": bool(shutil.which("sftp")),
        "SYSTEMD": bool(shutil.which("systemd-analyze")),
    }
    missing = [f"  - {name}: {COMPONENTS[name]}" for name, ok in present.items() if not ok]
    if not missing:
        return ["watchtower: all optional test components present"]
    return ["watchtower: tests needing these components will be skipped:", *missing]
