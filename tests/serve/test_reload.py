"""Hot reload: versions committed while `prvr serve` runs are served within the reload interval, and no
request fails during the swaps (a client loop runs concurrently the whole time)."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import numpy as np

from prvr_sdk.index import ExactIndex


class Loop:
    """Clients searching in a loop in background threads; every response's status, version and top hit."""

    def __init__(self, url: str, body: dict, clients: int = 2) -> None:
        self.records: list[tuple[int, str | None, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(url, body), daemon=True) for _ in range(clients)
        ]
        for t in self._threads:
            t.start()

    def _run(self, url: str, body: dict) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/search", json=body)
                except httpx.HTTPError as exc:  # a dropped connection counts as a failed request
                    self.errors.append(repr(exc))
                    continue
                ok = r.status_code == 200
                data = r.json() if ok else {}
                top = data["results"][0]["hits"][0]["video_id"] if ok else r.text
                self.records.append((r.status_code, data.get("index_version"), top))

    def wait_for(self, version: str, at_least: int = 10, timeout: float = 10.0) -> None:
        """Until ``at_least`` responses came from ``version`` (so requests run before and after a commit)."""
        deadline = time.monotonic() + timeout
        while sum(v == version for _, v, _ in list(self.records)) < at_least:
            assert time.monotonic() < deadline, f"the server never served {version}: {self.records[-3:]}"
            time.sleep(0.01)

    def stop(self) -> list[tuple[int, str | None, str | None]]:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.records


def test_committed_versions_are_served_without_a_failed_request(
    retriever, make_index, start_server, tmp_path
):
    index_dir = make_index(tmp_path / "index")
    server, service = start_server(index_dir, reload_interval=0.05)
    probe = np.zeros(retriever.dim, dtype=np.float32)
    probe[3] = 1.0  # a direction no stored clip points to exactly
    loop = Loop(server.url, {"embedding": probe.tolist(), "top_k": 3})
    try:
        loop.wait_for("v000001")
        writer = ExactIndex.load(index_dir)
        writer.add(["new"], clip_embs=[probe[None, :]], spans=[np.array([[3.0, 4.0]])], metadata=[{"n": 99}])
        writer.save()  # v000002: 'new' matches the probe exactly; v000001's files are deleted meanwhile
        loop.wait_for("v000002")
        with httpx.Client(base_url=server.url) as client:
            hit = client.post("/search", json={"embedding": probe.tolist(), "top_k": 1}).json()
        assert hit["index_version"] == "v000002"
        top = hit["results"][0]["hits"][0]
        assert top["video_id"] == "new" and abs(top["score"] - 1.0) < 1e-3  # stored in float16
        assert (top["start"], top["end"], top["metadata"]) == (3.0, 4.0, {"n": 99})
        writer.remove(["new"])
        writer.save()  # v000003: compacted without it
        loop.wait_for("v000003")
    finally:
        records = loop.stop()
    assert not loop.errors, loop.errors[:3]
    assert records and all(status == 200 for status, _, _ in records), [r for r in records if r[0] != 200][:3]
    versions = [v for _, v, _ in records]
    assert set(versions) == {"v000001", "v000002", "v000003"}
    by_version = {v: {top for _, vv, top in records if vv == v} for v in set(versions)}
    assert by_version["v000002"] == {"new"} and "new" not in by_version["v000001"] | by_version["v000003"]
    assert service.live.reloads == 2 and len(records) >= 30


def test_a_version_that_cannot_be_opened_is_skipped_and_the_old_one_keeps_serving(
    retriever, make_index, start_server, tmp_path
):
    index_dir = make_index(tmp_path / "index")
    server, _ = start_server(index_dir, reload_interval=0)
    unit = np.eye(retriever.dim, dtype=np.float32)[0]
    other = ExactIndex(retriever.dim, "max_clip", bundle_sha256="0" * 64)  # built for another bundle
    other.add(["alien"], clip_embs=[unit[None, :]])
    other.save(index_dir, overwrite=True)  # CURRENT now names v000002, which this bundle must refuse
    with httpx.Client(base_url=server.url) as client:
        deadline = time.monotonic() + 10
        while client.get("/info").json()["index"]["reload_error"] is None:
            assert time.monotonic() < deadline, "the failed reload was never reported"
            time.sleep(0.02)
        info = client.get("/info").json()["index"]
        assert info["version"] == "v000001" and info["videos"] == 12
        assert "v000002: IndexMismatchError" in info["reload_error"] and "0000000000" in info["reload_error"]
        found = client.post("/search", json={"embedding": unit.tolist(), "top_k": 20})
        assert found.status_code == 200 and found.json()["index_version"] == "v000001"
        assert "alien" not in {h["video_id"] for h in found.json()["results"][0]["hits"]}
        make_index(tmp_path / "fixed")  # a good index again, committed over the bad one
        ExactIndex.load(tmp_path / "fixed").save(index_dir, overwrite=True, merge=True)
        deadline = time.monotonic() + 10
        while (info := client.get("/info").json()["index"])["version"] != "v000003":
            assert time.monotonic() < deadline, f"the good version was never picked up: {info}"
            time.sleep(0.02)
        assert info["reload_error"] is None and info["videos"] == 12


def test_an_index_rebuilt_from_scratch_under_a_seen_version_name_is_picked_up(
    retriever, make_index, start_server, tmp_path
):
    index_dir = make_index(tmp_path / "index")
    server, service = start_server(index_dir, reload_interval=0)
    shutil.rmtree(index_dir)  # the server's maps of the deleted files stay valid
    unit = np.eye(retriever.dim, dtype=np.float32)[2]
    fresh = retriever.new_index()
    fresh.add(["solo"], clip_embs=[unit[None, :]])
    fresh.save(index_dir)  # v000001 again, other content
    with httpx.Client(base_url=server.url) as client:
        deadline = time.monotonic() + 10
        while (found := client.post("/search", json={"embedding": unit.tolist(), "top_k": 5}).json())[
            "results"
        ][0]["hits"][0]["video_id"] != "solo":
            assert time.monotonic() < deadline, "the rebuilt index was never picked up"
            time.sleep(0.02)
    assert found["index_version"] == "v000001" and len(found["results"][0]["hits"]) == 1
    assert service.live.reloads == 1
