"""Every ``where=`` example in the README works when typed in bash: bash's word splitting,
then Hydra's override parser, give the intended SQL."""

from __future__ import annotations

import re
import shlex

from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.conftest import REPO

# a where= override as written in the README (inside `...`), up to the end of the span
EXAMPLE = re.compile(r"`[^`]*?((?<![\w.])where=[^`]*)`")


def test_readme_where_examples_parse_as_typed_in_bash() -> None:
    text = (REPO / "README.md").read_text()
    examples = [
        m.group(1)
        for m in EXAMPLE.finditer(text)
        if m.group(1) != "where=" and "SQL" not in m.group(1)
    ]
    assert examples, "the README shows where= examples"
    parser = OverridesParser.create()
    for example in examples:
        words = [w for w in shlex.split(example) if w.startswith("where=")]
        (override,) = parser.parse_overrides(words)
        value = override.value()
        assert isinstance(value, str) and value.strip(), example
        # what bash left is the SQL Lance receives: quotes around literals survive
        assert value.count("'") % 2 == 0, (example, value)
