"""A learned head against its base model (`evaluate_head`; the head: ingest/head.py): both
collections' vectors over the same faces and queries, on the split the head file records."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from lookalike.ingest.metrics import retrieval_metrics
from lookalike.query.evaluation.errors import EvalError
from lookalike.query.evaluation.report import pct

HEAD_SETS = (("photos", "held-out photos of known identities"), ("identities", "held-out identities"),
             ("train", "training faces"))


def evaluate_head(model: str = "dlib", settings=None, store=None) -> Dict[str, Any]:
    """The base model and its head side by side, on the split the head file records: each held-out
    photo of a known identity, each face of a held-out identity, and each training face (how well
    the head fits what it saw) queries every stored face outside its own image (leave-one-out,
    exact, `retrieval_metrics`), once with the base collection's vectors and once with the head
    collection's. Returns the report dict (`format_head` prints it)."""
    from lookalike.ingest.head import Head, head_path
    from lookalike.ingest.settings import resolve
    from lookalike.ingest.store import Store
    from lookalike.schemas import collection_name, head_key

    settings = resolve(settings)
    path = head_path(settings, model)
    if not path.is_file():
        raise EvalError(f"no head file {path}: train it with lookalike train-head --model {model}")
    head = Head.load(path)
    own = store is None
    store = store or Store.from_settings(settings)
    try:
        fields = ["id", "identity", "image_sha256", "vector"]
        base = {r["id"]: r for r in store.iterate(collection_name(model), fields)}
        projected = {r["id"]: r["vector"] for r in store.iterate(collection_name(head_key(model)), ["id", "vector"])}
    finally:
        if own:
            store.close()
    ids = sorted(base)
    missing = [i for i in ids if i not in projected]
    if missing:
        raise EvalError(f"{collection_name(head_key(model))} lacks {len(missing)} faces of {collection_name(model)} "
                        f"(e.g. {missing[0]}); train the head again")
    split = head.provenance.get("split", {})
    held = set(split.get("heldout_identities", []))
    photos, train = set(split.get("heldout_photo_ids", [])), set(split.get("train_ids", []))
    identities = [str(base[i]["identity"]) for i in ids]
    images = [str(base[i]["image_sha256"]) for i in ids]
    masks = {"photos": [i in photos for i in ids], "identities": [n in held for n in identities],
             "train": [i in train for i in ids]}
    X = np.asarray([base[i]["vector"] for i in ids], dtype=np.float32)
    P = np.asarray([projected[i] for i in ids], dtype=np.float32)
    sets: Dict[str, Any] = {}
    for key, _ in HEAD_SETS:
        if not any(masks[key]):
            continue
        sets[key] = {}
        for which, V in (("base", X), ("head", P)):
            m = retrieval_metrics(V, identities, images, queries=masks[key])
            m.pop("first_hit_ranks")
            sets[key][which] = m
    prov = head.provenance
    return {"kind": "head", "version": 1, "model": model, "head_model": head_key(model), "head_file": str(path),
            "faces": len(ids), "arch": prov.get("arch"), "loss": prov.get("loss"),
            "epochs": (prov.get("config") or {}).get("epochs"), "holdout": prov.get("holdout"),
            "counts": prov.get("counts", {}), "trained_at": prov.get("trained_at"), "sets": sets,
            "protocol": "each query face ranks every stored face outside its own image (exact cosine); relevant: "
                        "faces of its identity; base and head vectors over the same faces and queries"}


def format_head(report: Dict[str, Any]) -> str:
    lines = [f"{report['model']} vs {report['head_model']} ({report['arch']}, {report['loss']} loss, "
             f"{report['epochs']} epochs, holdout {report['holdout']}): {report['faces']} stored faces",
             f"protocol: {report['protocol']}", ""]
    head = f"{'set':<38} {'queries':>7} {'':<5} {'R@1':>7} {'R@5':>7} {'R@10':>7} {'mAP':>7}"
    lines += [head, "-" * len(head)]
    for key, label in HEAD_SETS:
        if key not in report["sets"]:
            continue
        for which in ("base", "head"):
            m = report["sets"][key][which]
            lines.append(f"{label if which == 'base' else '':<38} {m['queries'] if which == 'base' else '':>7} "
                         f"{which:<5} {pct(m['recall_at_1'], 1):>7} {pct(m['recall_at_5'], 1):>7} "
                         f"{pct(m['recall_at_10'], 1):>7} {pct(m['map'], 1):>7}")
    return "\n".join(lines)
