"""Face detection (yunet) without and with the detail pass, on the group photos and the CelebA sample.

    python bench/bench_detect.py [--celeba N] [--repeat 2]   # ~1 min on 2 cores
    # writes bench/results/detect.{txt,json}

before: the first pass alone (Detector.detail = False): DeepFace's way, the photo with a black
        border of half its size on every side, shrunk to 640 px long side (the photo itself at
        <= 320 px), one YuNet pass -- what ingest/models/detector.py did up to issue 32 item 6.
after:  the product's Detector: the same first pass, its faces kept as they are, plus, on a photo
        longer than DETAIL_MIN_SIDE where the first pass found >= DETAIL_MIN_FACES faces, the
        detail pass (tiles at a higher resolution), whose faces away from the first pass's are
        added once confirmed in a crop round each.

1. groups/photos: faces found before / after against faces.csv's human-checked range, whether the
   first pass's faces are all kept unchanged, ms per photo.
2. CelebA in-the-wild sample: ms per image for detection (before and after alternate image by
   image, the best of --repeat runs each: the machine is shared; wall and process CPU time),
   faces found, how many images got the detail pass.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, List, Tuple

import numpy as np

from lookalike.ingest.images import decode, read_bytes
from lookalike.ingest.models import detector as detmod
from lookalike.ingest.models.detector import Detector, Face
from lookalike.ingest.settings import Settings, default_data_dir

ROOT = Path(__file__).resolve().parent.parent


class _Counting(Detector):
    """The product's Detector, counting the photos that get the detail pass."""
    runs = 0

    def _detail_pass(self, bgr: np.ndarray) -> List[np.ndarray]:
        type(self).runs += 1
        return super()._detail_pass(bgr)


def _key(f: Face) -> tuple:
    return f.box, f.dbox, f.left_eye, f.right_eye, f.nose, f.confidence


def _ms(det: Detector, image: Any, repeat: int) -> Tuple[float, float]:
    """The best of `repeat` detect() calls: wall ms, and CPU ms of the process."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        det.detect(image)
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return 1000 * wall, 1000 * cpu


def groups(data: Path, old: Detector, new: Detector, repeat: int) -> List[dict]:
    rows = []
    with open(data / "groups" / "faces.csv") as f:
        for r in csv.DictReader(f):
            image = decode(read_bytes(data / "groups" / "photos" / r["file"]))
            fb, fa = old.detect(image), new.detect(image)
            (tb, cb), (ta, ca) = _ms(old, image, repeat), _ms(new, image, repeat)
            lo, hi = int(r["faces_min"]), int(r["faces_max"])
            kept = {_key(x) for x in fb} <= {_key(x) for x in fa}
            added = [{"box": list(x.box), "confidence": round(x.confidence, 3)} for x in fa
                     if _key(x) not in {_key(y) for y in fb}]
            rows.append({"file": r["file"], "size": [image.bgr.shape[1], image.bgr.shape[0]], "min": lo, "max": hi,
                         "before": len(fb), "after": len(fa), "before_ok": lo <= len(fb) <= hi,
                         "after_ok": lo <= len(fa) <= hi, "first_pass_kept": kept, "added": added,
                         "before_ms": round(tb, 1), "after_ms": round(ta, 1),
                         "before_cpu_ms": round(cb, 1), "after_cpu_ms": round(ca, 1)})
    return rows


def celeba(data: Path, old: Detector, new: Detector, n: int, repeat: int) -> dict:
    files = sorted((data / "celeba" / "img_celeba").glob("*.jpg"))[:n or None]
    images = [decode(read_bytes(p)) for p in files]
    nb, na, kept = 0, 0, 0
    _Counting.runs = 0
    for image in images:
        fb, fa = old.detect(image), new.detect(image)
        nb, na = nb + len(fb), na + len(fa)
        kept += {_key(x) for x in fb} <= {_key(x) for x in fa}
    runs = _Counting.runs
    t = np.array([[*_ms(old, image, repeat), *_ms(new, image, repeat)] for image in images])  # wall, cpu x2
    big = np.array([max(im.bgr.shape[:2]) > detmod.DETAIL_MIN_SIDE for im in images])

    def ratio(col_after: int, col_before: int, sel: Any = slice(None)) -> float:
        return round(float(t[sel, col_after].sum() / max(1e-9, t[sel, col_before].sum())), 3)

    return {"images": len(images), "faces_before": nb, "faces_after": na, "first_pass_kept_images": kept,
            "detail_pass_images": runs, "large_images": int(big.sum()),
            "before_ms_per_image": round(float(t[:, 0].mean()), 2), "after_ms_per_image": round(float(t[:, 2].mean()), 2),
            "before_cpu_ms_per_image": round(float(t[:, 1].mean()), 2),
            "after_cpu_ms_per_image": round(float(t[:, 3].mean()), 2),
            "ratio": ratio(2, 0), "cpu_ratio": ratio(3, 1),
            "median_ratio": round(float(np.median(t[:, 2] / t[:, 0])), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--data", default=str(default_data_dir()))
    ap.add_argument("--celeba", type=int, default=0, help="first N CelebA images (0: all)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args(argv)
    data = Path(a.data)
    home = os.environ.get("DEEPFACE_HOME") or tempfile.mkdtemp(prefix="bench_detect_")
    settings = Settings(deepface_home=home, data_dir=data)
    old, new = Detector("yunet", settings).load(), _Counting("yunet", settings).load()
    old.detail = False
    g = groups(data, old, new, a.repeat)
    c = celeba(data, old, new, a.celeba, a.repeat)
    doc = {"bench": "detect", "detector": "yunet", "yunet_threshold": settings.yunet_threshold,
           "detail_min_side": detmod.DETAIL_MIN_SIDE, "detail_min_faces": detmod.DETAIL_MIN_FACES,
           "min_face": detmod.MIN_FACE, "yunet_min": detmod.YUNET_MIN, "cpus": os.cpu_count(),
           "groups": g, "celeba": c}
    lines = ["Face detection (yunet): before = the first pass alone (DeepFace's half-size black border, shrunk to",
             f"640 px long side); after = + the detail pass (tiles at {detmod.YUNET_MIN}/{detmod.MIN_FACE} scale or "
             f"the photo whole) on photos over {detmod.DETAIL_MIN_SIDE} px with >= {detmod.DETAIL_MIN_FACES} "
             "first-pass faces, faces added away from the first pass's, each confirmed in a crop", "",
             f"{'photo':58s} {'size':>9s} {'range':>6s} {'before':>7s} {'after':>6s} {'kept':>5s} {'ms before':>10s}"
             f" {'ms after':>9s} {'CPU before':>11s} {'CPU after':>10s}"]
    for r in g:
        lines.append(f"{r['file'][:58]:58s} {r['size'][0]:>4d}x{r['size'][1]:<4d} {r['min']:>2d}-{r['max']:<3d} "
                     f"{r['before']:>5d}{' ' if r['before_ok'] else '!'} {r['after']:>5d}{' ' if r['after_ok'] else '!'} "
                     f"{'yes' if r['first_pass_kept'] else 'NO':>5s} "
                     f"{r['before_ms']:>10.1f} {r['after_ms']:>9.1f} {r['before_cpu_ms']:>11.1f} {r['after_cpu_ms']:>10.1f}")
    lines.append(f"in range: before {sum(r['before_ok'] for r in g)}/{len(g)}, after {sum(r['after_ok'] for r in g)}/{len(g)}"
                 "  (! = outside faces.csv's range; kept = every first-pass face found again unchanged)")
    lines += ["", f"CelebA sample, {c['images']} images ({c['large_images']} over {detmod.DETAIL_MIN_SIDE} px): faces "
              f"{c['faces_before']} -> {c['faces_after']}; detail pass on {c['detail_pass_images']} images; first-pass "
              f"faces kept unchanged in {c['first_pass_kept_images']}/{c['images']}",
              f"  detection: {c['before_ms_per_image']:.2f} -> {c['after_ms_per_image']:.2f} ms/image wall "
              f"(x{c['ratio']}; median per image x{c['median_ratio']}), {c['before_cpu_ms_per_image']:.2f} -> "
              f"{c['after_cpu_ms_per_image']:.2f} ms CPU (x{c['cpu_ratio']})",
              f"({os.cpu_count()} CPUs, shared; best of {a.repeat} runs per image)"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detect.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "detect.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
