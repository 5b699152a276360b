"""Real use (issue 21): config values checked early, odd images, predict on real folders,
file modes, messages, logs and speed. CLI-level where the user meets the behaviour."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main

from .conftest import SMOKE


def run(capsys, *argv: object) -> tuple[int, str, str]:
    """`wsss <argv>` in this process: exit code, stdout and stderr."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one error line; fails on a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("wsss: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Item 9: output files honour the umask
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_honour_the_umask(umask: int, tmp_path: Path, capsys) -> None:
    old = os.umask(umask)
    try:
        code, _, err = run(capsys, "synth", "--out", tmp_path / "d", "--num-train", 2,
                           "--num-val", 1, "--image-size", 32)
    finally:
        os.umask(old)
    assert code == 0, err
    files = [p for p in (tmp_path / "d").rglob("*") if p.is_file()]
    assert files
    modes = {stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes == {0o666 & ~umask}, {oct(m) for m in modes}
