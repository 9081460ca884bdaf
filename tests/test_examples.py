"""The examples run as shown in the README (small settings here), through the public API only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, args", [
    ("diabetes_mlp", ["--steps", "20", "--grid", "5"]),
    ("tiny_lm", ["--steps", "20", "--grid", "3"]),
    ("notebook_style", []),
])
def test_example_runs(tmp_path, name, args):
    out = ["--out", str(tmp_path / "figures")] if args else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), *args, *out], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "surface" in done.stdout and list(tmp_path.rglob("*.png")), done.stdout
