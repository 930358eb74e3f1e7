"""External tensor data named inside a bundle graph: found wherever ONNX allows it, confined to the bundle.

Oracle: the ``onnx`` package's own external-data bookkeeping (``onnx.external_data_helper``), which walks the
model with the real protobuf classes; our walker must list the same locations without that package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.external_data_helper import _get_all_tensors, set_external_data  # noqa: E402

from prvr_sdk import bundle as bundle_io  # noqa: E402
from prvr_sdk.errors import ChecksumError  # noqa: E402
from prvr_sdk.onnx_refs import external_data_locations  # noqa: E402

W = np.arange(12, dtype=np.float32).reshape(3, 4)


def _external(tensor: TensorProto, location: str) -> TensorProto:
    set_external_data(tensor, location=location, offset=0, length=tensor.ByteSize())
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def _every_place(locations: dict[str, str]) -> onnx.ModelProto:
    """A model with a tensor in each place a tensor can live, each named external to ``locations[place]``."""
    init = _external(numpy_helper.from_array(W, "w"), locations["initializer"])
    const = _external(numpy_helper.from_array(W, "c"), locations["attribute"])
    sub_init = _external(numpy_helper.from_array(W, "s"), locations["subgraph"])
    values = _external(numpy_helper.from_array(np.ones(2, np.float32), "v"), locations["sparse"])
    indices = numpy_helper.from_array(np.array([0, 5], np.int64), "i")
    sparse = helper.make_sparse_tensor(values, indices, [3, 4])
    then = helper.make_graph([helper.make_node("Identity", ["s"], ["o1"])], "then", [],
                             [helper.make_tensor_value_info("o1", TensorProto.FLOAT, [3, 4])], [sub_init])
    other = helper.make_graph([helper.make_node("Identity", ["w"], ["o2"])], "else", [],
                              [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [3, 4])])
    nodes = [
        helper.make_node("Constant", [], ["c_out"], value=const),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [init],
                              sparse_initializer=[sparse])
    return helper.make_model(graph)


def test_finds_a_location_in_every_place_onnx_allows_one(tmp_path):
    places = {"initializer": "a.data", "attribute": "b.data", "subgraph": "c.data", "sparse": "d.data"}
    model = _every_place(places)
    expected = {
        entry.value for t in _get_all_tensors(model) for entry in t.external_data if entry.key == "location"
    }
    # The onnx helper does not look into sparse initializers (ONNX Runtime does read their external data):
    # those come from the hand-built model itself.
    assert expected == {places["initializer"], places["attribute"], places["subgraph"]}
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert external_data_locations(path) == expected | {places["sparse"]}


def test_a_self_contained_graph_names_nothing(tmp_path):
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [numpy_helper.from_array(W, "w")]))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert external_data_locations(path) == set()


def _bundle_with(tmp_path: Path, location: str, listed: list[str]) -> bundle_io.Bundle:
    """A sealed bundle whose graph keeps ``w`` in ``location``; ``listed`` data files are in the manifest."""
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [numpy_helper.from_array(W, "w")]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "g.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="g.onnx.data", size_threshold=0)
    stored = onnx.load(tmp_path / "g.onnx", load_external_data=False)
    for t in _get_all_tensors(stored):
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    (tmp_path / "g.onnx").write_bytes(stored.SerializeToString())
    files = {"g.onnx": {"role": "video_encoder"}, **{name: {"role": "data"} for name in listed}}
    bundle_io.write_manifest(tmp_path, {"files": files})
    return bundle_io.load(tmp_path)


def test_a_listed_sibling_data_file_opens_and_gives_the_weights(tmp_path):
    b = _bundle_with(tmp_path, "g.onnx.data", ["g.onnx.data"])
    session = ort.InferenceSession(str(b.graph("g.onnx")), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {})[0], W)


@pytest.mark.parametrize("location, listed", [
    ("../outside.data", []),             # leaves the bundle
    ("/etc/passwd", []),                 # absolute
    ("g.onnx.data", []),                 # inside, but not in the manifest
    ("sub/g.onnx.data", ["sub/g.onnx.data"]),  # listed, but not beside the graph
    ("manifest.json", []),               # the bundle's own manifest is not tensor data
])
def test_other_data_files_are_refused_before_a_session_opens(tmp_path, location, listed):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.onnx.data").write_bytes(W.tobytes())
    (tmp_path / "g.onnx.data").write_bytes(W.tobytes())
    b = _bundle_with(tmp_path, location, listed)
    with pytest.raises(ChecksumError, match="external tensor data"):
        b.graph("g.onnx")


def test_a_truncated_graph_is_a_checksum_error(tmp_path):
    data = _every_place({k: "x.data" for k in ("initializer", "attribute", "subgraph", "sparse")})
    raw = data.SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ChecksumError, match="not a well-formed ONNX model"):
        external_data_locations(path)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_damaged_graphs_give_a_set_or_a_checksum_error(tmp_path_factory, data):
    raw = bytearray(_every_place({k: "x.data" for k in ("initializer", "attribute", "subgraph", "sparse")})
                    .SerializeToString())
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    path.write_bytes(bytes(raw))
    try:
        assert isinstance(external_data_locations(path), set)
    except ChecksumError:
        pass
