"""The reference tables in the docs are what the code declares, kind by kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator import landscapes, optimizers, reference, schedules
from simulator.detectors import Detection
from simulator.faults.catalogue import FAULTS

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("page", ["config.md", "faults.md", "replay.md"])
def test_the_generated_tables_in_the_docs_are_up_to_date(page: str) -> None:
    text = (REPO / "docs" / page).read_text()
    assert "<!-- generated: " in text
    assert reference.render(text) == text, f"run `make docs` to regenerate docs/{page}"


def test_every_kind_and_key_has_a_row_and_a_help_line() -> None:
    config = (REPO / "docs" / "config.md").read_text()
    for registry in (landscapes.KINDS, optimizers.KINDS, schedules.KINDS):
        for kind in registry:
            assert kind.summary, kind.kind
            assert f"| `{kind.kind}` |" in config
            for p in kind.params():
                assert p.help, (kind.kind, p.key)
                assert f"| `{kind.kind}` | `{p.key}` |" in config
    for p in Detection.params():
        assert p.help and f"| `{p.key}` |" in config
    faults = (REPO / "docs" / "faults.md").read_text()
    for name, fault in FAULTS.items():
        assert fault.summary and fault.alert and f"| `{name}` |" in faults
        assert all(p.help for p in fault.params)
