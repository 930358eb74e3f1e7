"""How often exact ties occur on float16-stored embeddings, and what counting them against the GT costs.

The metrics (``prvr_sdk.metrics.ranks``) count a video that ties with the ground truth as ranked above it
(pessimistic). Upstream PRVR code sorts with ``argsort``, whose order among equal scores depends on the sort
algorithm and on where the ground truth sits. This script scores a split the way the index does -- unit
embeddings stored as float16, products in float32 -- and reports:

* ``tied queries``: share of queries where at least one other video has exactly the ground truth's score;
* ``tied pairs``: share of all (query, other video) pairs scoring exactly the ground truth's score;
* R@1 / SumR / mAP with pessimistic ties, with optimistic ties (ground truth first among equals, the most a
  tie-breaking order could give), and with numpy's stable ``argsort`` of ``-scores`` (ties by column order).

    python bench/ties.py --bundle runs/demo/bundle-amdnet --data-root runs/demo/data   (after make demo)
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from prvr_sdk import Retriever
from prvr_sdk.data import open_collection
from prvr_sdk.metrics import PRVR_KS


def _scores_fp16(retriever: Retriever, data, split: str) -> tuple[np.ndarray, np.ndarray]:
    video_ids, captions = data.video_ids(split), data.captions(split)
    rates = {(data.timing(v) or (None, None))[1] for v in video_ids} - {None}
    fps = rates.pop() if rates else None
    videos = retriever.encode_video(((v, data.raw_video(v)) for v in video_ids), fps=fps)
    queries = retriever.encode_text([data.raw_query(c.cap_id) for c in captions])

    def f16(x):
        return None if x is None else x.astype(np.float16).astype(np.float32)

    stored = dataclasses.replace(videos, clip_emb=f16(videos.clip_emb), video_emb=f16(videos.video_emb))
    scores, _ = retriever.score(queries, stored)
    position = {v: i for i, v in enumerate(video_ids)}
    return scores.astype(np.float32), np.array([position[c.video_id] for c in captions])


def _report(rank: np.ndarray) -> dict[str, float]:
    recall = {f"R@{k}": 100.0 * float(np.mean(rank <= k)) for k in PRVR_KS}
    return {"R@1": recall["R@1"], "SumR": sum(recall.values()), "mAP": 100.0 * float(np.mean(1.0 / rank))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="runs/demo/bundle-amdnet")
    parser.add_argument("--data-root", default="runs/demo/data")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    r = Retriever.from_bundle(args.bundle, device="cpu")
    data = open_collection(r.manifest["model"]["dataset"], args.data_root, _config(r))
    scores, gt = _scores_fp16(r, data, args.split)
    rows = np.arange(len(gt))
    s_gt = scores[rows, gt][:, None]
    equal = scores == s_gt
    equal[rows, gt] = False
    above = (scores > s_gt).sum(1)
    pessimistic = above + equal.sum(1) + 1
    optimistic = above + 1
    order = np.argsort(-scores, axis=1, kind="stable")
    by_argsort = np.argmax(order == gt[:, None], axis=1) + 1
    print(f"{r.model_name} on {args.split}: {len(gt)} queries x {scores.shape[1]} videos (fp16-stored)")
    print(f"tied queries: {100 * equal.any(1).mean():.2f} %   tied pairs: {100 * equal.mean():.4f} %")
    rules = (("pessimistic", pessimistic), ("optimistic", optimistic), ("stable argsort", by_argsort))
    for name, rank in rules:
        m = _report(rank)
        print(f"{name:>15}: R@1 {m['R@1']:.2f}  SumR {m['SumR']:.2f}  mAP {m['mAP']:.2f}")


def _config(r: Retriever):
    from types import SimpleNamespace

    return SimpleNamespace(**r.manifest["model"]["config"])


if __name__ == "__main__":
    main()
