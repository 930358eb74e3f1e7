"""``Retriever`` with a Qdrant index attached (``from_bundle(index=...)``, ``load_index(obj)``), against the
same Retriever with its exact index: ``add`` / ``search`` give the same hits (videos, order, winning clip,
moment, metadata; scores within float32 summation order) for every golden model, filter, grouping,
``min_score`` and upsert; another bundle, embedding size or scoring rule is refused like a directory is.
No torch: the committed golden bundles, random frame features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("qdrant_edge")
pytest.importorskip("qdrant_client")

from prvr_sdk import Retriever  # noqa: E402
from prvr_sdk.backends.lazy import LazySession  # noqa: E402
from prvr_sdk.errors import IndexMismatchError, InvalidInputError  # noqa: E402
from prvr_sdk.index import ExactIndex, ScoringRule  # noqa: E402
from prvr_sdk.index.qdrant import QdrantEdgeIndex, QdrantRemoteIndex  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MODELS = ["amdnet", "mamfusion", "muse"]  # max_clip, weighted, video


def frames(model: str, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tail = (5, 32) if model == "muse" else (32,)
    return {f"v{seed}-{i:02d}": rng.standard_normal((int(rng.integers(1, 25)), *tail)).astype(np.float32)
            for i in range(n)}


def new_qdrant(flavour: str, r: Retriever, tmp_path: Path, **kw):
    bound = {"bundle_sha256": r.bundle_sha256, "model": r.model_name, **kw}
    if flavour == "edge":
        return QdrantEdgeIndex(tmp_path / "edge", r.dim, r.scoring, **bound)
    return QdrantRemoteIndex(r.dim, r.scoring, url=":memory:", collection="c", **bound)


def assert_same(got, want):
    assert [h.video_id for h in got] == [h.video_id for h in want] and want
    assert [(h.clip_index, h.start, h.end) for h in got] == [(h.clip_index, h.start, h.end) for h in want]
    assert [h.metadata for h in got] == [h.metadata for h in want]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5, rtol=0)


@pytest.mark.parametrize("flavour", ["edge", "remote"])
@pytest.mark.parametrize("model", MODELS)
def test_retriever_on_qdrant_equals_the_exact_index(tmp_path, model, flavour):
    bundle = GOLDEN / model / "bundle"
    exact = Retriever.from_bundle(bundle, device="cpu")
    index = new_qdrant(flavour, exact, tmp_path)
    r = Retriever.from_bundle(bundle, device="cpu", index=index)
    assert r.index is index
    for session in (r._video, r._text):  # attaching an index opens no graph
        assert isinstance(session, LazySession) and not session.opened
    emb = exact.encode_video(frames(model, 30, seed=1), fps=2.0)
    meta = [{"group": i % 3, "tag": ["a", "b"][i % 2]} for i in range(30)]
    exact.add(emb, meta)
    r.add(emb, meta)
    queries = np.random.default_rng(5).standard_normal((4, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert not r._text.opened  # embeddings in, no text graph needed
    cases = [{}, {"filter": {"group": 2}}, {"filter": {"tag": "b", "duration": {"$gte": 5}}}, {"top_k": 3}]
    if model != "muse":
        cases.append({"group_by": "clip", "top_k": 12})
    for kw in cases:
        for got, want in zip(r.search(queries, **kw), exact.search(queries, **kw), strict=True):
            assert_same(got, want)
    cut = exact.search(queries[0], top_k=6)[3].score - 1e-4
    kept = r.search(queries[0], top_k=6, min_score=cut)
    assert_same(kept, exact.search(queries[0], top_k=6, min_score=cut))
    assert len(kept) == 4

    # upsert: ids present are replaced, new ones added, on both
    more = exact.encode_video(frames(model, 6, seed=1) | frames(model, 4, seed=2), fps=2.0)
    exact.add(more, upsert=True)
    r.add(more, upsert=True)
    assert len(r.index) == len(exact.index) == 34
    with pytest.raises(InvalidInputError, match="already in the index"):
        r.add(more)
    for got, want in zip(r.search(queries, top_k=8), exact.search(queries, top_k=8), strict=True):
        assert_same(got, want)
    if flavour == "edge":  # reopened from its folder and attached by load_index
        r.index.close()
        again = Retriever.from_bundle(bundle, device="cpu")
        again.load_index(QdrantEdgeIndex.load(tmp_path / "edge"))
        for got, want in zip(again.search(queries, top_k=8), exact.search(queries, top_k=8), strict=True):
            assert_same(got, want)
        again.index.close()
    else:
        r.index.close()


def test_an_index_of_another_bundle_size_or_rule_is_refused(tmp_path):
    bundle = GOLDEN / "amdnet" / "bundle"
    r = Retriever.from_bundle(bundle, device="cpu")
    other = Retriever.from_bundle(GOLDEN / "muse" / "bundle", device="cpu")
    made = [
        QdrantEdgeIndex(tmp_path / "a", r.dim, r.scoring, bundle_sha256=other.bundle_sha256),
        QdrantEdgeIndex(tmp_path / "b", r.dim, r.scoring),  # no bundle hash at all
        QdrantEdgeIndex(tmp_path / "c", 16, r.scoring, bundle_sha256=r.bundle_sha256),
        QdrantEdgeIndex(tmp_path / "d", r.dim, ScoringRule("max_clip", clip_weight=0.5),
                        bundle_sha256=r.bundle_sha256),
        ExactIndex(r.dim, other.scoring, bundle_sha256=r.bundle_sha256),  # an open exact index is checked too
    ]
    said = ["built for bundle sha256", r"none \(built without a bundle hash\)", "16-dimensional", "scores by",
            "the given ExactIndex scores by"]
    try:
        for index, text in zip(made, said, strict=True):
            with pytest.raises(IndexMismatchError, match=text):
                r.load_index(index)
            assert r.index is None
            with pytest.raises(IndexMismatchError, match=text):
                Retriever.from_bundle(bundle, device="cpu", index=index)
        ok = ExactIndex(r.dim, r.scoring, bundle_sha256=r.bundle_sha256)
        assert r.load_index(ok) is ok and r.index is ok
        with pytest.raises(InvalidInputError, match="are for opening a directory"):
            r.load_index(ok, mmap=False)
        with pytest.raises(InvalidInputError, match="expected an index directory or an open Index"):
            r.load_index(42)
    finally:
        for index in made:
            index.close()
