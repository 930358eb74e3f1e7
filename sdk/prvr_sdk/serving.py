"""What a model promises its servers: the one description of its graphs, outputs, scores and metrics.

Each model class declares a ``ServingSpec`` (``model.serving_spec()`` in ``prvr_export.models``); the
exporter writes it into the bundle manifest (key ``"serving"``), and everything downstream reads it
instead of keeping its own per-model knowledge: the exporter's graph names, dynamic axes and dummy
inputs, the Retriever's choice of outputs and of how a clip index maps to time, the evaluation's
headline metrics, and the embedding size (so loading a bundle needs no probe inference).

Shapes are symbolic tuples: an ``int`` is a fixed size, a ``str`` names a dynamic axis (``"batch"``,
``"frames"``, ``"tokens"``). Inputs whose name ends in ``_mask`` are float masks (1 = real step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from prvr_sdk.errors import BundleError

__all__ = ["HEADLINE_KEYS", "GraphSpec", "ServingSpec", "text_graph"]

# What each selection metric reports first: PRVR's R@K + SumR; the text-video protocol's R@K + ranks.
HEADLINE_KEYS: dict[str, tuple[str, ...]] = {
    "sumr": ("R@1", "R@5", "R@10", "R@100", "SumR"),
    "r1": ("R@1", "R@5", "R@10", "MdR", "MnR"),
}
ClipTime = Literal["uniform", "anchors"]


@dataclass(frozen=True)
class GraphSpec:
    """One graph's inputs (name -> symbolic shape, in graph order) and output names (in order)."""

    inputs: dict[str, tuple[int | str, ...]]
    outputs: tuple[str, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{input: {axis: name}}`` for every symbolic axis (what ``torch.onnx.export`` wants)."""
        dims = self.inputs.items()
        return {name: {i: d for i, d in enumerate(shape) if isinstance(d, str)} for name, shape in dims}

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": {k: list(v) for k, v in self.inputs.items()}, "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> GraphSpec:
        if not isinstance(d, dict) or not isinstance(d.get("inputs"), dict) or not isinstance(
            d.get("outputs"), list
        ):
            raise BundleError(f"{where}: expected {{'inputs': {{...}}, 'outputs': [...]}}")
        inputs = {}
        for name, shape in d["inputs"].items():
            if not isinstance(shape, list) or not all(
                isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool)) for x in shape
            ):
                raise BundleError(f"{where}: input {name!r} shape must be a list of ints and axis names")
            inputs[name] = tuple(shape)
        if not all(isinstance(o, str) for o in d["outputs"]):
            raise BundleError(f"{where}: output names must be strings")
        return cls(inputs, tuple(d["outputs"]))


def text_graph(query_type: str, query_dim: int) -> GraphSpec:
    """The text encoder every model shares: token features with a mask, or one sentence vector."""
    if query_type == "sentence":
        return GraphSpec({"query": ("batch", query_dim)}, ("text_emb",))
    return GraphSpec(
        {"query": ("batch", "tokens", query_dim), "query_mask": ("batch", "tokens")}, ("text_emb",)
    )


@dataclass(frozen=True)
class ServingSpec:
    """How a model is served.

    Attributes:
        video, text: the two graphs.
        dim: embedding size ``D`` of every ``*_emb`` output (all unit vectors in an exported graph).
        scoring: the scoring rule, as ``prvr_sdk.index.ScoringRule`` reads it (``{"kind": "max_clip"}``,
            ``{"kind": "weighted", "clip_weight", "frame_weight"}``, ``{"kind": "video"}``).
        clip_output: the video output ``[B, Nc, D]`` a video is scored by (max over its rows), or None.
        video_output: the video output ``[B, D]`` (one vector per video), or None.
        clip_count: ``Nc``, rows of ``clip_output`` per video.
        clip_time: what a row of ``clip_output`` covers in time: ``"uniform"`` (the video cut into
            ``clip_count`` equal runs of frames) or ``"anchors"`` (learned spans read from
            ``anchor_output`` ``[B, Nc, 2]`` = centre and width as fractions of the video).
        anchor_output: see ``clip_time``.
        headline: the metric names reports show first.
    """

    video: GraphSpec
    text: GraphSpec
    dim: int | None
    scoring: dict[str, Any]
    clip_output: str | None = None
    video_output: str | None = None
    clip_count: int | None = None
    clip_time: ClipTime | None = None
    anchor_output: str | None = None
    headline: tuple[str, ...] = HEADLINE_KEYS["sumr"]

    def __post_init__(self) -> None:
        outs = set(self.video.outputs)
        for role in ("clip_output", "video_output", "anchor_output"):
            name = getattr(self, role)
            if name is not None and name not in outs:
                raise BundleError(f"serving spec: {role} {name!r} is not a video output {sorted(outs)}")
        if self.clip_output is None and self.video_output is None:
            raise BundleError("serving spec: a video needs a clip_output, a video_output, or both")
        if (self.clip_time == "anchors") != (self.anchor_output is not None):
            raise BundleError("serving spec: clip_time 'anchors' goes with an anchor_output, and only it")
        if self.clip_output is not None and self.clip_time not in ("uniform", "anchors"):
            raise BundleError(f"serving spec: clip_time {self.clip_time!r}; expected 'uniform' or 'anchors'")

    def to_dict(self) -> dict[str, Any]:
        return {
            "video": self.video.to_dict(),
            "text": self.text.to_dict(),
            "dim": self.dim,
            "scoring": dict(self.scoring),
            "clip_output": self.clip_output,
            "video_output": self.video_output,
            "clip_count": self.clip_count,
            "clip_time": self.clip_time,
            "anchor_output": self.anchor_output,
            "headline": list(self.headline),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "serving spec") -> ServingSpec:
        if not isinstance(d, dict):
            raise BundleError(f"{where}: expected an object")
        try:
            dim = d.get("dim")
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
                raise BundleError(f"{where}: dim must be a positive integer, got {dim!r}")
            headline = d.get("headline", list(HEADLINE_KEYS["sumr"]))
            if not isinstance(headline, list) or not all(isinstance(h, str) for h in headline):
                raise BundleError(f"{where}: headline must be a list of metric names")
            if not isinstance(d.get("scoring"), dict):
                raise BundleError(f"{where}: scoring must be an object")
            return cls(
                video=GraphSpec.from_dict(d.get("video"), f"{where}.video"),
                text=GraphSpec.from_dict(d.get("text"), f"{where}.text"),
                dim=dim,
                scoring=dict(d["scoring"]),
                clip_output=d.get("clip_output"),
                video_output=d.get("video_output"),
                clip_count=d.get("clip_count"),
                clip_time=d.get("clip_time"),
                anchor_output=d.get("anchor_output"),
                headline=tuple(headline),
            )
        except (TypeError, AttributeError) as exc:
            raise BundleError(f"{where}: malformed ({exc})") from None

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], where: str = "bundle") -> ServingSpec:
        """The spec a bundle's manifest carries (bundles exported before specs existed must be re-exported:
        guessing a model's outputs from their names is what this spec replaces)."""
        if "serving" not in manifest:
            raise BundleError(
                f"{where} was exported by an older prvr-sdk and has no serving spec; export it again "
                "(`prvr export --model M --checkpoint RUN --out DIR --overwrite`)"
            )
        spec = cls.from_dict(manifest["serving"], f"{where}: manifest 'serving'")
        if spec.dim is None:
            raise BundleError(f"{where}: manifest 'serving' has no embedding dim")
        return spec
