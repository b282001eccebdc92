"""External programs the suite runs for real (promtool, chromium, systemd-analyze)."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_TOOLS_VARIABLE = "AKEEBA_TESTS_REQUIRE_TOOLS"
"""Set by scripts/test (which installs every tool) and honoured like CI: a missing tool fails."""


def require_tool(name: str, install_hint: str) -> str:
    """Return the path of program ``name``.

    Without it the test is skipped on a developer's machine, but fails under ``scripts/test``
    or CI, where a skip would let the check silently vanish.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed: {install_hint}"
    if os.environ.get(REQUIRE_TOOLS_VARIABLE) or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def promtool() -> str:
    """Return promtool's path (see :func:`require_tool`)."""
    return require_tool("promtool", "./scripts/test installs Debian's prometheus package")
