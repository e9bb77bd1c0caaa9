"""A benchmark's --quick run from a test: this Python, from the repository root, its exit code and output kept."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class QuickRun:
    code: int
    stdout: str
    output: str  # stdout then stderr: what an assertion shows


def quick_run(script: str, timeout: float) -> QuickRun:
    """`bench/<script> --quick`, to its end (TimeoutExpired past `timeout` seconds)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )
    return QuickRun(done.returncode, done.stdout, done.stdout + done.stderr)
