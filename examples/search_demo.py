"""Search the demo index with natural-language queries and compare each hit with the ground truth.

Runs on the runtime package alone (numpy + onnxruntime + tokenizers, no torch): the sentences go through
the bundle's own text front end. For a few test queries -- paraphrases of one event in one video -- it
prints the top hit with its moment next to the video and span the sentence really describes.

    python examples/search_demo.py --bundle runs/demo/bundle-amdnet --index runs/demo/index-amdnet \
        --data-root runs/demo/data [--num-queries 8] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from prvr_sdk import Retriever
from prvr_sdk.metrics import temporal_iou


def read_queries(data_root: Path, split: str = "test") -> list[dict]:
    """Test captions with their video and true span (files written by `prvr data demo`)."""
    text = data_root / "demo" / "TextData"
    meta = json.loads((text / "demo_meta.json").read_text())["captions"]
    queries = []
    for line in (text / f"demo{split}.caption.txt").read_text().splitlines():
        cap_id, caption = line.split(" ", 1)
        entry = meta[cap_id]
        queries.append({"query": caption, "video_id": entry["video_id"], "span": entry["span"]})
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--num-queries", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per query on stdout")
    args = parser.parse_args()

    retriever = Retriever.from_bundle(args.bundle, index=args.index)
    queries = random.Random(args.seed).sample(read_queries(args.data_root), args.num_queries)
    hits = retriever.search([q["query"] for q in queries], top_k=5, filter={"split": "test"})

    console = Console(highlight=False)
    if not args.json:
        console.print(f"{retriever.model_name} ({retriever.choice.backend}, {retriever.choice.device}): "
                      f"{len(queries)} test queries; top hit vs the true video and moment")
    found = 0
    for q, top in zip(queries, hits, strict=True):
        best = top[0]
        rank = next((i + 1 for i, h in enumerate(top) if h.video_id == q["video_id"]), None)
        iou = (
            float(temporal_iou([[best.start, best.end]], [q["span"]])[0])
            if best.video_id == q["video_id"] and best.start is not None
            else None
        )
        found += rank == 1
        if args.json:
            print(json.dumps({**q, "rank": rank, "iou": iou, "hit": best.to_dict()}))
            continue
        verdict = (
            f"[green]right video[/green], IoU {iou:.2f}" if rank == 1
            else f"[red]wrong video[/red] (true one at rank {rank or '>5'})"
        )
        console.print(f"\n  [bold]{escape(q['query'])}[/bold]")
        moment = f"{best.start:6.1f} – {best.end:6.1f} s"
        console.print(f"    hit   {best.video_id}  {moment}   score {best.score:.3f}")
        console.print(f"    truth {q['video_id']}  {q['span'][0]:6.1f} – {q['span'][1]:6.1f} s   {verdict}")
    if not args.json:
        console.print(f"\n{found}/{len(queries)} queries found their video at rank 1.")


if __name__ == "__main__":
    main()
