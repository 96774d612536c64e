"""docs/config.md is the output of ``seqcomm config-reference`` (docs/method.md §9)."""

from __future__ import annotations

import inspect
from pathlib import Path

from seqcomm.config_reference import SECTIONS, keys, load, reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_committed_reference_is_current():
    assert DOC.read_text() == reference(), (
        "docs/config.md is stale: run `seqcomm config-reference > docs/config.md`")


def test_every_init_parameter_is_listed_with_a_meaning():
    text = DOC.read_text()
    for _, _, paths in SECTIONS:
        for path in paths:
            cls = load(path)
            section = text.split(f"### `{path}`", 1)[1].split("\n### ", 1)[0]
            params = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                      if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            assert params, path
            for name in params:
                assert f"| `{name}` |" in section, f"{path}: {name} missing from docs/config.md"
            assert all(key.meaning for key in keys(cls)), f"{path}: a key has no Args: entry"


def test_subcommand_prints_the_reference(capsys):
    from seqcomm.cli import main

    main(["config-reference"])
    assert capsys.readouterr().out == reference()
