"""Smoke run of the IVR speech-recognition benchmark (bench/ivr_recognition.py --quick): 2 prompts, voice rms, both engines."""

from __future__ import annotations

import re

from bench_smoke import quick_run


def test_ivr_recognition_quick_reports_every_engine_target_and_line() -> None:
    """Both engines get a row per way of hearing and a PASS/FAIL line per target, end-of-prompt rows follow, exit 0 only when whisper passes."""
    run = quick_run("ivr_recognition.py", timeout=120)
    assert run.code in (0, 1), run.output
    for engine in ("whisper", "sphinx"):
        assert re.search(rf"^{engine}\s+rms\s+G\.711\s+15\s+\d+\.\d%\s+\d\.\d\d\s+\d\.\d\d\s+\d/2\s", run.stdout, re.MULTILINE), run.output
        assert re.search(rf"^{engine}\s+rms\s+G\.711 \+ noise 20 dB SNR\s+15\s", run.stdout, re.MULTILINE), run.output
        for target in ("right prompts matched", "altered prompts caught", "real-time factor"):
            assert re.search(rf"^{engine}: {target} .*: (PASS|FAIL)$", run.stdout, re.MULTILINE), run.output
    for line in ("silent", "quiet", "noisy"):
        assert re.search(rf"^\s+{line}\s+2/2\s", run.stdout, re.MULTILINE), run.output
    whisper_accuracy = float(re.search(r"^whisper\s+rms\s+G\.711\s+15\s+(\d+\.\d)%", run.stdout, re.MULTILINE).group(1))
    assert whisper_accuracy >= 85.0, run.output
    whisper_failed = re.search(r"^whisper: .*: FAIL$", run.stdout, re.MULTILINE)
    assert (run.code == 0) == (whisper_failed is None), run.output
