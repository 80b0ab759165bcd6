"""The real app in a pseudo-terminal, driven the way an SSH user would: plain xterm, no
graphics protocol, no mouse; keys in, screen bytes out, a clean exit with status 0."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.conftest import REPO
from tests.tui.pilot import RUNS

TIMEOUT = 60
# pexpect forks and at once execs a fresh Python: Lance's fork warning does not apply
pytestmark = pytest.mark.filterwarnings("ignore:lance is not fork-safe")


def plain_env() -> dict[str, str]:
    """The environment of an SSH session into a plain xterm."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TMUX", "KITTY", "TEXTUAL"))}
    env.update(TERM="xterm-256color", COLUMNS="120", LINES="36", TZ="UTC")
    env.pop("LAKELOOM_CONFIG_DIR", None)
    return env


def spawn_tui(lake: Path, rows: int) -> pexpect.spawn:
    """``python -m tui`` on ``lake`` in a pseudo-terminal of ``rows`` x 120."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "tui", f"lake.uri={lake}", f"runs_dir={RUNS}"],
        cwd=str(REPO),
        env=plain_env(),
        dimensions=(rows, 120),
        timeout=TIMEOUT,
        encoding="utf-8",
        codec_errors="replace",
    )


def test_browse_filter_open_review_and_quit_in_a_pty(tui_lake: Path) -> None:
    child = spawn_tui(tui_lake, rows=36)
    try:
        child.expect("60 samples")  # the first page is on screen
        child.expect("pets")
        child.send("/")
        # a person's pause: Textual forwards keys to the focused widget before the previous
        # key's action ran, so a burst "/label…" would send "l" to the table
        time.sleep(0.5)
        child.send("label = 'cat'\r")
        child.expect("18 samples")
        child.send("\r")  # open the sample under the cursor
        child.expect("Open related")  # the detail screen's footer
        child.send("\x1b")  # back
        child.expect(re.escape("where label = 'cat'"))
        child.send("v")  # review
        child.expect(r"caption_mismatch: 6 flagged")
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_missing_lake_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    child = spawn_tui(tmp_path / "missing", rows=30)
    try:
        child.expect("no lake at")
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0 and "Traceback" not in (child.before or "")
