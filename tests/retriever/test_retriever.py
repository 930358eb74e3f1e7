"""Retriever: bundles served without torch give the torch model's embeddings, scores, moments and rankings.

Oracles: the torch model itself (``encode_video`` / ``encode_text`` / ``score`` on the inputs that
``prvr_sdk.inputs`` prepares, the path training takes), ``features.clip_bounds`` with hand-checked times,
and brute-force ``Retriever.score`` for the index search. Torch is used here only to make the bundles and
the expected values; the Retriever itself never imports it (tests/sdk/test_import_without_torch.py).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from prvr_export.models.registry import create_model, list_models  # noqa: E402
from prvr_export.onnx_export.bundle import export_bundle  # noqa: E402
from prvr_sdk import Hit, Retriever, VideoEmbeddings  # noqa: E402
from prvr_sdk.errors import (  # noqa: E402
    BackendUnavailableError,
    BundleError,
    IndexMismatchError,
    InvalidInputError,
    ShapeMismatchError,
)
from prvr_sdk.inputs import TextSpec, VideoSpec, pad_queries, pad_videos, prepare_query, prepare_video  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)

def _export(name: str, out, overrides: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(name, "demo", overrides).eval()
    export_bundle(model, model.config, out, model_name=name, dataset="demo", text_frontend=None, fps=1.0)
    return model


@pytest.fixture(scope="module", params=list_models())  # a registered model gets these tests for free
def served(request, tmp_path_factory, tiny):
    name = request.param
    out = tmp_path_factory.mktemp("bundles") / name
    model = _export(name, out, tiny(name))
    return name, model, Retriever.from_bundle(out, backend="onnxruntime", device="cpu")


def _videos(retriever: Retriever, lengths, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    spec = retriever.video_spec
    shape = (spec.feature_dim,) if spec.patches is None else (spec.patches, spec.feature_dim)
    return {f"v{i}": rng.standard_normal((n, *shape)).astype(np.float32) for i, n in enumerate(lengths)}


def _queries(retriever: Retriever, n: int, seed: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    spec = retriever.text_spec
    if spec.kind == "sentence":
        return [rng.standard_normal(spec.dim).astype(np.float32) for _ in range(n)]
    return [rng.standard_normal((int(rng.integers(1, 9)), spec.dim)).astype(np.float32) for _ in range(n)]


def _torch_video(model, raw: dict[str, np.ndarray], spec: VideoSpec) -> dict[str, torch.Tensor]:
    batch = pad_videos([prepare_video(v, spec) for v in raw.values()])
    with torch.no_grad():
        return model.encode_video(**{k: torch.from_numpy(batch[k]) for k in model.video_inputs})


def _torch_text(model, queries: list[np.ndarray], spec: TextSpec) -> torch.Tensor:
    batch = pad_queries([prepare_query(q, spec) for q in queries])
    with torch.no_grad():
        return model.encode_text(*(torch.from_numpy(batch[k]) for k in ("query", "query_mask") if k in batch))


def test_embeddings_and_scores_equal_the_torch_model(served):
    name, model, r = served
    raw = _videos(r, [3, 40, 17, 1, 64])  # shorter and longer than num_clips / max_frames, one frame
    emb = r.encode_video(raw, batch_size=2)  # batches mix lengths: padding must not leak
    assert emb.ids == list(raw) and len(emb) == 5 and emb.dim == r.dim
    queries = _queries(r, 4)
    text = r.encode_text(queries)
    assert text.shape == (4, r.dim)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)

    video = _torch_video(model, raw, r.video_spec)
    q = _torch_text(model, queries, r.text_spec)
    expected, expected_best = model.score(q, video)
    got, best = r.score(text, emb)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    if expected_best is None:
        assert best is None
    else:
        assert (best == expected_best.numpy()).mean() > 0.99  # argmax may flip only on near-ties
    if r.spec.clip_output is not None:
        ref = torch.nn.functional.normalize(video[r.spec.clip_output], dim=-1, eps=0).numpy()
        np.testing.assert_allclose(emb.clips("v2"), ref[2], atol=1e-5)


def test_single_inputs_give_single_outputs(served):
    _, _, r = served
    raw = _videos(r, [9])["v0"]
    emb = r.encode_video(raw, video_ids=["only"])
    assert emb.ids == ["only"]
    (q,) = _queries(r, 1)
    one = r.encode_text(q)
    assert one.shape == (r.dim,)
    np.testing.assert_allclose(one, r.encode_text([q])[0], atol=1e-6)
    scores, _ = r.score(one, emb)
    assert scores.shape == (1,)


def test_clip_spans_follow_the_pooling_boundaries(served):
    name, _, r = served
    if r.spec.clip_output is None:  # one vector per video: no clip spans, the hit spans the video
        emb = r.encode_video(_videos(r, [10]), fps=2.0)
        assert emb.spans is None and emb.durations[0] == pytest.approx(5.0)
        return
    # 64 frames at 2 fps into 32 clips: clip i averages frames 2i, 2i+1 -> [i, i + 1) seconds, except the
    # last, whose boundary is clamped to frame 63 (the upstream rule): frame 62 alone, [31, 31.5).
    emb = r.encode_video(_videos(r, [64]), fps=2.0)
    spans = emb.clip_spans(0)
    np.testing.assert_allclose(spans[5], [5.0, 6.0])
    np.testing.assert_allclose(spans[31], [31.0, 31.5])
    assert emb.durations[0] == pytest.approx(32.0)
    # Timestamps instead of a frame rate: frame k starts at 10 + 3k seconds.
    ts = 10.0 + 3.0 * np.arange(64)
    spans = r.encode_video(_videos(r, [64]), timestamps=[ts]).clip_spans(0)
    np.testing.assert_allclose(spans[5], [40.0, 46.0])
    # 3 frames into 32 clips repeat frames: every span is one frame long.
    spans = r.encode_video(_videos(r, [3]), fps=1.0).clip_spans(0)
    assert set(np.round(spans[:, 1] - spans[:, 0], 6)) == {1.0}


def test_search_equals_brute_force_score(served, tmp_path):
    name, _, r = served
    r.index = None
    raw = _videos(r, [5, 33, 12, 70, 8, 40, 2, 19], seed=5)
    emb = r.encode_video(raw, fps=1.0)
    r.add(emb, metadata=[{"group": i % 2} for i in range(len(emb))])
    text = r.encode_text(_queries(r, 3, seed=6))
    scores, best = r.score(text, emb)
    hits = r.search(text, top_k=4)
    for k, row in enumerate(hits):
        order = np.argsort(-scores[k], kind="stable")[:4]
        assert [h.video_id for h in row] == [emb.ids[j] for j in order]
        np.testing.assert_allclose([h.score for h in row], scores[k][order], atol=2e-3)  # fp16 index
        for h, j in zip(row, order, strict=True):
            assert isinstance(h, Hit) and h.metadata["duration"] == pytest.approx(emb.durations[j])
            if best is not None:
                assert h.clip_index == best[k][j]
                assert (h.start, h.end) == tuple(emb.clip_spans(int(j))[best[k][j]])
    only_odd = r.search(text[0], top_k=10, filter={"group": 1})
    assert {h.video_id for h in only_odd} == {emb.ids[j] for j in range(1, 8, 2)}
    # save, reload into a fresh retriever: same hits
    r.index.save(tmp_path / "idx")
    again = Retriever.from_bundle(r.bundle.path, device="cpu", index=tmp_path / "idx")
    assert [h.video_id for h in again.search(text[1], top_k=4)] == [h.video_id for h in hits[1]]


def test_index_of_another_bundle_is_refused(served, tmp_path, tiny):
    name, _, r = served
    other = Retriever.from_bundle(_export_other(name, tmp_path, tiny(name)), device="cpu")
    other.add(other.encode_video(_videos(other, [4, 6]), fps=1.0))
    other.index.save(tmp_path / "other-idx")
    with pytest.raises(IndexMismatchError, match="bundle"):
        r.load_index(tmp_path / "other-idx")
    foreign = other.encode_video(_videos(other, [4])["v0"], fps=1.0, video_ids=["x"])
    with pytest.raises(IndexMismatchError, match="encode them again"):
        r.add(foreign)
    with pytest.raises(IndexMismatchError, match="encode them again"):
        r.score(r.encode_text(_queries(r, 1)[0]), foreign)


def _export_other(name: str, tmp_path, overrides: dict):
    out = tmp_path / f"{name}-other"
    _export(name, out, overrides, seed=1)
    return out


def test_bad_inputs_raise_typed_errors(served):
    name, _, r = served
    spec = r.video_spec
    good = _videos(r, [6])["v0"]
    with pytest.raises(ShapeMismatchError, match="expected"):
        r.encode_video(good[..., :-1])  # wrong feature dim
    bad = good.copy()
    bad[2] = np.nan
    with pytest.raises(InvalidInputError, match="NaN in row 2"):
        r.encode_video({"broken": bad})
    with pytest.raises(InvalidInputError, match="at least one frame"):
        r.encode_video({"empty": good[:0]})
    with pytest.raises(InvalidInputError, match="given twice"):
        r.encode_video([("a", good), ("a", good)])
    with pytest.raises(InvalidInputError, match="fps"):
        r.encode_video(good, fps=0)
    with pytest.raises(InvalidInputError, match="no text front end|precomputed"):
        r.encode_text("a man opens a door")  # exported with text_frontend=None
    with pytest.raises(ShapeMismatchError, match="Dq"):
        r.encode_text(np.zeros((2, 3, 5), dtype=np.float32))
    (q,) = _queries(r, 1)
    q = q.copy()
    q.reshape(-1)[0] = np.inf
    with pytest.raises(InvalidInputError, match="Inf"):
        r.encode_text(q)
    with pytest.raises(InvalidInputError, match="no index"):
        Retriever.from_bundle(r.bundle.path, device="cpu").search(np.ones(r.dim) / np.sqrt(r.dim))
    del spec


def test_long_token_queries_are_cut_with_a_warning(served, caplog):
    name, _, r = served
    if r.text_spec.kind != "tokens":
        pytest.skip("sentence-level text encoder: no token limit")
    rng = np.random.default_rng(0)
    long = rng.standard_normal((r.text_spec.max_tokens + 7, r.text_spec.dim)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="prvr_sdk"):
        cut = r.encode_text(long)
    assert "exceed" in caplog.text
    np.testing.assert_allclose(cut, r.encode_text(long[: r.text_spec.max_tokens]), atol=1e-6)


def test_backend_and_precision_choices(served):
    _, _, r = served
    assert "onnxruntime" in repr(r) and "cpu" in repr(r)
    with pytest.raises(BundleError, match="int8"):
        Retriever.from_bundle(r.bundle.path, precision="int8")
    with pytest.raises(InvalidInputError, match="precision"):
        Retriever.from_bundle(r.bundle.path, precision="bf16")
    with pytest.raises(InvalidInputError, match="device"):
        Retriever.from_bundle(r.bundle.path, device="gpu0")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailableError, match="tensorrt"):
            Retriever.from_bundle(r.bundle.path, backend="tensorrt")


def test_embeddings_round_trip_through_npz(served, tmp_path):
    _, _, r = served
    emb = r.encode_video(_videos(r, [7, 30, 2]), fps=1.5)
    back = VideoEmbeddings.load(emb.save(tmp_path / "emb.npz"))
    assert back.ids == emb.ids and back.bundle_sha256 == r.bundle_sha256 and back.model == r.model_name
    for field in ("clip_emb", "spans", "video_emb", "offsets", "durations", "num_frames"):
        a, b = getattr(emb, field), getattr(back, field)
        assert (a is None and b is None) or np.array_equal(a, b)
    assert emb.save(str(tmp_path / "emb-dir") + "/") == tmp_path / "emb-dir" / "embeddings.npz"
    assert VideoEmbeddings.load(tmp_path / "emb-dir").ids == emb.ids
    sub = emb.select(["v2", "v0"])
    assert sub.ids == ["v2", "v0"] and np.array_equal(sub.durations, emb.durations[[2, 0]])
