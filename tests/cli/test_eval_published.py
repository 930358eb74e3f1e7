"""`prvr eval --compare-published` and the published-figures table (sdk/prvr_sdk/published.py).

Oracles: the table in docs/models.md §7 (parsed here; the two must be equal), hand-computed deltas, and
a run of the golden AMDNet bundle on a tiny TVR-layout collection whose SumR the same JSON reports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prvr_cli.app import app
from prvr_sdk.published import PUBLISHED, compare_published, published_result

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "amdnet" / "bundle"
runner = CliRunner()


def doc_rows() -> dict[tuple[str, str], dict[str, float]]:
    text = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    section = text[text.index("## 7. Published results"):text.index("## 8.")]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        model = re.sub(r"\s*\(baseline\)", "", cells["model"]).lower()
        metrics = {k: float(cells[k]) for k in header[2:-1] if cells[k] != "-"}
        rows[model, cells["dataset"]] = metrics
    return rows


def test_docs_section_7_equals_the_table_in_code() -> None:
    assert doc_rows() == {(r.model, r.dataset): dict(r.metrics) for r in PUBLISHED}
    assert len({(r.model, r.dataset) for r in PUBLISHED}) == len(PUBLISHED)
    assert all(r.source and r.features for r in PUBLISHED)


def test_deltas_are_run_minus_published() -> None:
    run = {"model": "mamfusion", "dataset": "tvr", "headline": ["R@1", "R@5", "R@10", "R@100", "SumR"],
           "R@1": 15.0, "R@5": 33.9, "R@10": 40.0, "R@100": 85.25, "SumR": 174.15}
    got = compare_published(run)
    assert got["available"] and got["source"].startswith("MamFusion (Ying et al.")
    assert [(r["metric"], r["run"], r["published"]) for r in got["rows"]] == [
        ("R@1", 15.0, 14.2), ("R@5", 33.9, 33.9), ("R@10", 40.0, 44.9), ("R@100", 85.25, 84.5),
        ("SumR", 174.15, 177.5)]
    assert [r["delta"] for r in got["rows"]] == pytest.approx([0.8, 0.0, -4.9, 0.75, -3.35], abs=1e-9)

    muse = compare_published({"model": "muse", "dataset": "msrvtt", "headline": ["R@1", "R@5", "R@10", "MdR",
                                                                                   "MnR"],
                              "R@1": 40.0, "R@5": 70.0, "R@10": 80.0, "MdR": 2.5, "MnR": 20.0})
    assert {r["metric"]: r["delta"] for r in muse["rows"]} == pytest.approx(
        {"R@1": -4.8, "R@5": -1.6, "R@10": -2.1, "MdR": 0.5, "MnR": 4.4}, abs=1e-9)


def test_missing_rows_say_so() -> None:
    assert published_result("amdnet", "charades") is None
    none = compare_published({"model": "amdnet", "dataset": "activitynet", "headline": ["SumR"], "SumR": 1.0})
    assert not none["available"] and none["rows"] == []
    assert none["note"].startswith("no published figures for amdnet on activitynet (published: tvr); "
                                   "AMDNet's")
    demo = compare_published({"model": "mamfusion", "dataset": "demo", "SumR": 1.0})
    assert demo["note"] == ("no published figures for mamfusion on demo (published: activitynet, charades, "
                            "tvr)")


def write_collection(root: Path, name: str) -> None:
    """A tiny collection in the official layout, in the golden AMDNet bundle's sizes (8 frames x 32-d,
    32-d sentences)."""
    import h5py

    text, feats = root / name / "TextData", root / name / "FeatureData"
    text.mkdir(parents=True)
    feats.mkdir(parents=True)
    rng = np.random.default_rng(3)
    lines = []
    with h5py.File(feats / f"new_clip_vit_32_{name}_vid_features.hdf5", "w") as vf, \
            h5py.File(text / f"clip_ViT_B_32_{name}_query_feat.hdf5", "w") as qf:
        for v in range(4):
            vf.create_dataset(f"show_clip_{v}", data=rng.standard_normal((8, 32)).astype(np.float32))
            for k in range(2):
                lines.append(f"show_clip_{v}#enc#{k} sentence {v} {k}")
                qf.create_dataset(f"show_clip_{v}#enc#{k}", data=rng.standard_normal(32).astype(np.float32))
    (text / f"{name}test.caption.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_prvr_eval_compare_published(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    pytest.importorskip("onnxruntime")
    write_collection(tmp_path, "tvr")
    args = ["eval", "--bundle", str(GOLDEN), "--data-root", str(tmp_path), "--device", "cpu",
            "--compare-published", "--dataset", "tvr"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    published = printed["published"]
    assert published["available"] and published["model"] == "amdnet" and "derived" in published["note"]
    rows = {r["metric"]: r for r in published["rows"]}
    assert rows["SumR"] == {"metric": "SumR", "run": printed["SumR"], "published": 182.6,
                            "delta": pytest.approx(printed["SumR"] - 182.6, abs=1e-6)}
    assert rows["R@1"]["published"] is None and rows["R@1"]["delta"] is None
    assert rows["R@1"]["run"] == printed["R@1"]

    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert any("published" in line and "182.6" in line for line in lines)
    assert any(line.lstrip("│ ").startswith("delta") and f"{printed['SumR'] - 182.6:+.1f}" in line
               for line in lines)
    assert "moment metrics skipped: no query of this split has a ground-truth" in table.stdout

    write_collection(tmp_path, "activitynet")
    other = runner.invoke(app, [*args[:-1], "activitynet"])
    assert other.exit_code == 0, other.output
    assert "no published figures for amdnet on activitynet (published: tvr)" in other.stdout
    other_json = json.loads(runner.invoke(app, [*args[:-1], "activitynet", "--json"]).stdout)
    assert other_json["published"]["available"] is False and other_json["published"]["rows"] == []
    plain = runner.invoke(app, [*args[:-3], "--dataset", "tvr", "--json"])
    assert "published" not in json.loads(plain.stdout)
