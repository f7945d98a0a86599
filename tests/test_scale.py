"""What changed for CelebA at full scale (issue 22): the reads that cost Milvus Lite time per row
(the ledger counts of `stats`, the resume's skip pass, erasure's selective reads) give the same
answers as the plain reads they replace. The figures themselves are bench/bench_scale.py's."""
from __future__ import annotations

import shutil
from collections import Counter

import pytest
from conftest import DATA, read_ledger

import lookalike.ingest.pipeline.runner as runner
import lookalike.ingest.store.collections as store_mod  # where select reads QUERY_LIMIT
from lookalike import ingest
from lookalike.ingest.store import Store
from lookalike.schemas import LEDGER_COLLECTION


def _ledger_rows(model: str, statuses: Counter) -> list:
    return [{"id": f"{model}:{st}{i}", "model": model, "source_path": f"/p/{st}{i}.jpg",
             "image_sha256": f"{st}{i}", "status": st, "faces": int(st == "done"), "reason": "",
             "detector": "yunet", "ingested_at": 0}
            for st, n in statuses.items() for i in range(n)]


def _counted(store: Store) -> dict:
    """The ledger counted the slow way: every row read."""
    out: dict = {m: dict.fromkeys(("done", "noface", "failed"), 0) for m in store.models()}
    for r in store.iterate(LEDGER_COLLECTION, ["model", "status"]):
        if r["model"] in out:
            out[r["model"]][r["status"]] += 1
    return out


def test_ledger_counts_equal_the_rows_for_one_model_and_for_several(tmp_path):
    with Store(str(tmp_path / "c.db")) as store:
        store.ensure_collection("dlib", dim=128, source="test")
        store.ensure_ledger()
        store.record_images(_ledger_rows("dlib", Counter(done=7, noface=2, failed=1)))
        assert store.ledger_counts() == _counted(store) == {"dlib": {"done": 7, "noface": 2, "failed": 1}}
        # a second model's collection, no ledger rows yet: zeros, and dlib's counts unchanged
        store.ensure_collection("facenet", dim=128, source="test")
        assert store.ledger_counts() == _counted(store)
        assert store.ledger_counts()["facenet"] == {"done": 0, "noface": 0, "failed": 0}
        # both models in the ledger, and rows of a model whose collection is gone
        store.record_images(_ledger_rows("facenet", Counter(done=3, failed=2)))
        store.record_images(_ledger_rows("clip", Counter(done=4)))
        got = store.ledger_counts()
        assert got == _counted(store) and got == {"dlib": {"done": 7, "noface": 2, "failed": 1},
                                                  "facenet": {"done": 3, "noface": 0, "failed": 2}}


def test_selective_reads_past_one_answer_fall_back_to_the_iterator(tmp_path, monkeypatch):
    """`select` answers in one query call, unless the answer is full: then it reads them all."""
    with Store(str(tmp_path / "s.db")) as store:
        store.ensure_ledger()
        store.record_images(_ledger_rows("dlib", Counter(done=10, noface=3)))
        monkeypatch.setattr(store_mod, "QUERY_LIMIT", 4)
        done = [r["id"] for r in store.rows_where(LEDGER_COLLECTION, "image_sha256",
                                                  [f"done{i}" for i in range(10)], ["id"])]
        assert sorted(done) == sorted(f"dlib:done{i}" for i in range(10))
        few = [r["id"] for r in store.select(LEDGER_COLLECTION, ["id"], 'status == "noface"')]
        assert sorted(few) == ["dlib:noface0", "dlib:noface1", "dlib:noface2"]
        assert store.delete(LEDGER_COLLECTION, store.in_filter("image_sha256", [f"done{i}" for i in range(6)])) == 6
        assert store.count(LEDGER_COLLECTION) == 7


@pytest.fixture
def three_photos(tmp_path):
    folder = tmp_path / "photos" / "Jackie_Chan"
    folder.mkdir(parents=True)
    for src in sorted((DATA / "people" / "Jackie_Chan").iterdir())[:3]:
        shutil.copy(src, folder / src.name)
    return tmp_path / "photos"


def test_a_resume_reads_the_ledger_while_the_workers_start(tmp_path, settings, three_photos):
    """A half-done source: the skip pass runs beside the model load and skips exactly what the
    ledger holds; the result is the one of a single run."""
    db = str(tmp_path / "r.db")
    s = settings.with_(db=db)
    first = ingest.run(str(three_photos), limit=2, workers=0, progress=False, settings=s)
    assert first.images_seen == 2
    second = ingest.run(str(three_photos), workers=0, progress=False, settings=s)
    assert second.images_skipped == 2 and second.images_seen == 3
    assert second.images_done + second.images_noface + second.images_failed == 1
    ledger = read_ledger(db)
    assert len(ledger) == 3


def test_a_finished_source_starts_no_workers(tmp_path, settings, three_photos, monkeypatch):
    """Every photo in the ledger: the ledger is read before any worker starts, and none does."""
    db = str(tmp_path / "f.db")
    s = settings.with_(db=db)
    ingest.run(str(three_photos), workers=0, progress=False, settings=s)

    def no_cluster(*a, **k):
        raise AssertionError("a Dask cluster was started for a source that is all done")

    monkeypatch.setattr(runner, "_run_dask", no_cluster)
    again = ingest.run(str(three_photos), workers=2, progress=False, settings=s)
    assert again.images_skipped == 3 and again.faces_stored == 0


def test_the_lite_writer_flushes_every_so_many_photos(tmp_path):
    """The Lite writer flushes every `flush_every` photos (and at the end), so that a kill -9 leaves
    Lite at most that many photos of log to replay; every committed row is readable after each."""
    import numpy as np

    from lookalike.ingest.pipeline import ImageResult, Writer
    from lookalike.ingest.sources import ImageRecord

    with Store(str(tmp_path / "w.db")) as store:
        store.ensure_collection("dlib", dim=128, source="test")
        store.ensure_ledger()
        flushed = []
        real_flush = store.flush

        def flush(names):
            flushed.append(sorted(names))
            real_flush(names)

        store.flush = flush  # type: ignore[method-assign]
        paths = [f"/p/{i}.jpg" for i in range(7)]
        writer = Writer(store, ["dlib"], "yunet", {p: ImageRecord(p) for p in paths}, commit_every=0,
                        flush_every=3)
        face = {"box": [0, 0, 50, 50], "face_index": 0, "confidence": 0.9,
                "quality": {"face_size": 50, "sharpness": 0.5, "frontal": 0.9, "quality": 0.8}}
        for i, p in enumerate(paths):
            writer.write([ImageResult(p, f"{i:064x}", "done", faces=[face],
                                      vectors={"dlib": np.ones((1, 128), np.float32)})])
            assert len(flushed) == (i + 1) // 3  # after photos 3 and 6
        writer.close()
        assert flushed == [["faces_dlib", LEDGER_COLLECTION]] * 3
        assert store.count("faces_dlib") == 7 and store.count(LEDGER_COLLECTION) == 7


def test_the_skip_pass_starts_where_the_work_is_and_misses_nothing(tmp_path):
    """A killed run did mostly a prefix of the source: the pass starts at the first chunk with
    work (found by binary search), then does the chunks before it, so a hole in the prefix (a
    batch in flight at the kill) is still done; every chunk is looked up once."""
    from lookalike.ingest.pipeline.paths import _ledger_id
    from lookalike.ingest.pipeline.reader import _undone
    from lookalike.ingest.sources import ImageRecord

    records = [ImageRecord(f"/p/{i}.jpg") for i in range(10)]
    done = [0, 1, 3, 4, 5, 8]  # 2 was in flight; 6, 7 and 9 not reached
    with Store(str(tmp_path / "u.db")) as store:
        store.ensure_ledger()
        store.record_images([{"id": _ledger_id("dlib", f"/p/{i}.jpg"), "model": "dlib", "source_path": f"/p/{i}.jpg",
                              "image_sha256": str(i), "status": "noface" if i == 8 else "done", "faces": 0,
                              "reason": "", "detector": "yunet", "ingested_at": 0} for i in done])
        asked = []
        real = store.ledger_statuses

        def ledger_statuses(ids):
            asked.append(len(ids))
            return real(ids)

        store.ledger_statuses = ledger_statuses  # type: ignore[method-assign]
        got = [[int(r.path[3:-4]) for r in c] for c in _undone(store, records, ["dlib"], {"done", "noface"}, chunk=2)]
        assert got == [[6, 7], [9], [], [2], []]  # from the first chunk with work; the prefix last
        assert sum(asked) == 10
        # a second model with nothing recorded: every photo is to do, in source order
        again = [r.path for c in _undone(store, records, ["dlib", "facenet"], {"done"}, chunk=3) for r in c]
        assert again == [r.path for r in records]
