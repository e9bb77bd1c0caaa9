"""Smoke run of the IVR speech-recognition benchmark (bench/ivr_recognition.py --quick): 2 prompts, voice rms, both engines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "ivr_recognition.py"


def test_ivr_recognition_quick_reports_every_engine_target_and_line() -> None:
    """Both engines get a row per way of hearing and a PASS/FAIL line per target, end-of-prompt rows follow, exit 0 only when whisper passes."""
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode in (0, 1), output
    for engine in ("whisper", "sphinx"):
        assert re.search(rf"^{engine}\s+rms\s+G\.711\s+15\s+\d+\.\d%\s+\d\.\d\d\s+\d\.\d\d\s+\d/2\s", done.stdout, re.MULTILINE), output
        assert re.search(rf"^{engine}\s+rms\s+G\.711 \+ noise 20 dB SNR\s+15\s", done.stdout, re.MULTILINE), output
        for target in ("right prompts matched", "altered prompts caught", "real-time factor"):
            assert re.search(rf"^{engine}: {target} .*: (PASS|FAIL)$", done.stdout, re.MULTILINE), output
    for line in ("silent", "quiet", "noisy"):
        assert re.search(rf"^\s+{line}\s+2/2\s", done.stdout, re.MULTILINE), output
    whisper_accuracy = float(re.search(r"^whisper\s+rms\s+G\.711\s+15\s+(\d+\.\d)%", done.stdout, re.MULTILINE).group(1))
    assert whisper_accuracy >= 85.0, output
    whisper_failed = re.search(r"^whisper: .*: FAIL$", done.stdout, re.MULTILINE)
    assert (done.returncode == 0) == (whisper_failed is None), output
