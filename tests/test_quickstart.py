"""docs/quickstart.md is what its commands print today: the generator runs every command again
(an installed trainsim, a real daemon, a drill against Debian's Prometheus and Alertmanager)
and compares the output with the page, digits masked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need_binary

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.realstack
def test_the_quickstart_page_is_what_its_commands_print() -> None:
    need_binary("prometheus")
    need_binary("prometheus-alertmanager", "alertmanager")
    res = subprocess.run([sys.executable, str(REPO / "docs" / "quickstart.py"), "--check"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "docs/quickstart.md matches what the commands print"
