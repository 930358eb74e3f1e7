"""`prvr serve` over real HTTP: results equal ``Retriever.search`` in process; bad requests get 4xx + the
CLI's message; limits hold; /info and /healthz describe what is served."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prvr_sdk.index import store
from prvr_sdk.text import missing_frontend_message


def hits_of(found) -> list[tuple]:
    return [(h.video_id, h.score, h.start, h.end, h.clip_index, h.metadata) for h in found]


def served(result) -> list[tuple]:
    return [
        (h["video_id"], h["score"], h["start"], h["end"], h["clip_index"], h["metadata"])
        for h in result["hits"]
    ]


def assert_same(got: list[tuple], want: list[tuple]) -> None:
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=0, atol=1e-6)
    assert [g[2:] for g in got] == [w[2:] for w in want]  # moments (seconds), clip index, metadata


def test_search_batch_equals_the_retriever_in_process(client, oracle, queries):
    features = queries
    response = client.post("/search", json={"features": features.tolist(), "top_k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "amdnet" and body["index_version"] == store.read_current(oracle.index.path)
    want = oracle.search(oracle.encode_text(list(features)), top_k=5)
    assert len(body["results"]) == len(features) == len(want)
    for i, (result, expected) in enumerate(zip(body["results"], want, strict=True)):
        assert result["query_index"] == i and result["query"] is None
        assert len(expected) == 5 and expected[0].start is not None  # real moments to compare
        assert_same(served(result), hits_of(expected))


def test_search_by_embedding_and_group_by_clip_filter_min_score(client, oracle, queries):
    emb = oracle.encode_text(list(queries))
    cases = [
        {"top_k": 4},
        {"top_k": 6, "group_by": "clip"},
        {"top_k": 10, "filter": {"split": "test"}},
        {"top_k": 10, "filter": {"n": {"$gte": 3, "$lt": 9}, "video_id": {"$nin": ["v04"]}}},
        {"top_k": 10, "min_score": 0.2},
    ]
    for case in cases:
        one = client.post("/search", json={"embedding": emb[1].tolist(), **case})  # a single [D] vector
        assert one.status_code == 200, one.text
        want = oracle.search(emb[1], **case)
        assert_same(served(one.json()["results"][0]), hits_of(want))
        assert len(one.json()["results"]) == 1
    filtered = client.post(
        "/search", json={"embedding": emb.tolist(), "top_k": 10, "filter": {"split": "test"}}
    )
    ids = {h["video_id"] for r in filtered.json()["results"] for h in r["hits"]}
    assert ids == {"v00", "v03", "v06", "v09"}  # n % 3 == 0, by construction


def test_encode_text_equals_the_retriever(client, oracle, queries):
    features = queries[:3]
    body = client.post("/encode_text", json={"features": features.tolist()}).json()
    assert body["dim"] == oracle.dim == 32
    np.testing.assert_allclose(body["embeddings"], oracle.encode_text(list(features)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(body["embeddings"], axis=1), 1.0, atol=1e-4)  # eps in the norm


def test_info_and_healthz(client, oracle, index_dir):
    info = client.get("/info").json()
    bundle = oracle.bundle.path
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert info["bundle"]["path"] == str(bundle.resolve())
    assert info["bundle"]["manifest_sha256"] == manifest["manifest_sha256"]
    assert info["bundle"]["embedding_space"] == oracle.bundle_sha256
    assert info["bundle"]["model"] == "amdnet"
    assert info["index"]["path"] == str(index_dir.absolute())
    assert info["index"]["version"] == store.read_current(index_dir) == "v000001"
    assert (info["index"]["videos"], info["index"]["clips"]) == (12, 12 * 8)
    assert (
        info["backend"]["backend"] == "onnxruntime" and info["backend"]["provider"] == "CPUExecutionProvider"
    )
    assert info["dim"] == 32 and info["text"] == {
        "accepts_strings": False,
        "kind": "sentence",
        "feature_dim": 32,
    }
    assert info["limits"] == {"max_batch": 8, "max_query_chars": 50, "max_top_k": 20, "max_body_bytes": 65536}
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["index_version"] == "v000001"
    docs = client.get("/openapi.json").json()
    assert {"/search", "/encode_text", "/healthz", "/info"} <= set(docs["paths"])
    assert client.get("/docs").status_code == 200


def _bad_requests(dim: int):
    unit = np.eye(dim)[0].tolist()
    return [
        # (body, status, error class, a fragment of the message)
        ({"query": "a man opens a door"}, 400, "InvalidInputError", None),  # the CLI's exact message, below
        (
            {"embedding": unit, "filter": {"n": {"$foo": 1}}},
            400,
            "InvalidInputError",
            "unknown operator '$foo'",
        ),
        ({"embedding": unit, "filter": {"n": {}}}, 400, "InvalidInputError", "filter 'n'"),
        ({"embedding": [0.5] * dim}, 400, "InvalidInputError", "unit"),
        ({"embedding": unit[:-1]}, 400, "ShapeMismatchError", f"expected [{dim}] or [N, {dim}]"),
        ({"embedding": unit, "features": [unit]}, 400, "InvalidInputError", "give exactly one of"),
        ({}, 400, "InvalidInputError", "give exactly one of"),
        ({"features": [[1.0] * (dim + 1)]}, 400, "ShapeMismatchError", f"Dq = {dim}"),
        ({"query": []}, 400, "InvalidInputError", "no queries given"),
        ({"embedding": unit, "top_k": 21}, 422, "LimitError", "top_k: 21 is above this server's limit of 20"),
        (
            {"embedding": [unit] * 9},
            413,
            "LimitError",
            "9 queries in one request; this server takes at most 8",
        ),
        ({"query": ["x" * 51]}, 413, "LimitError", "query 0: 51 characters; this server takes at most 50"),
        ({"embedding": unit, "top_k": 0}, 422, "RequestValidationError", "top_k"),
        ({"embedding": unit, "top_k": "ten"}, 422, "RequestValidationError", "top_k"),
        (
            {"embedding": unit, "topk": 3},
            422,
            "RequestValidationError",
            "topk: Extra inputs are not permitted",
        ),
        ({"embedding": unit, "group_by": "frame"}, 422, "RequestValidationError", "group_by"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_requests(32))))
def test_bad_requests_get_4xx_with_the_cli_message(client, oracle, case):
    body, status, error, fragment = _bad_requests(oracle.dim)[case]
    response = client.post("/search", json=body)
    assert response.status_code == status, response.text
    got = response.json()
    assert got["error"] == error
    if fragment is None:  # strings for a bundle without a text front end: what `prvr search` prints
        assert got["detail"] == missing_frontend_message(oracle.manifest)
    else:
        assert fragment in got["detail"]


def test_transport_level_refusals(client, oracle):
    too_big = client.post("/search", json={"embedding": [[0.01] * oracle.dim] * 700})  # > 64 KiB body
    assert too_big.status_code == 413 and "at most 65536" in too_big.json()["detail"]
    broken = client.post(
        "/search", content=b'{"embedding": [1,', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422 and broken.json()["error"] == "RequestValidationError"
    assert client.get("/search").status_code == 405
    assert client.post("/encode_text", json={"embedding": [1.0]}).status_code == 422  # not a field there
    ok = client.post("/search", json={"embedding": np.eye(oracle.dim)[0].tolist(), "top_k": 20})
    assert (
        ok.status_code == 200 and len(ok.json()["results"][0]["hits"]) == 12
    )  # all videos, top_k capped by N
