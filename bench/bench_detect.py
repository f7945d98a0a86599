"""Face detection (yunet) before and after the pixel budget, on the group photos and the CelebA sample.

    python bench/bench_detect.py [--celeba N] [--repeat 2] [--no-analyse]   # ~4 min on 2 cores
    # writes bench/results/detect.{txt,json}

before: DeepFace's way, as ingest/models/detector.py did it up to issue 32 -- the photo with a black
        border of half its size on every side, shrunk to 640 px long side (the photo itself at
        <= 320 px), one pass (kept here: BorderedDetector).
after:  the product's Detector -- the photo with a 10-50 % border within 640 x 640 pixels (and
        never more than the 'before' input), plus a
        detail pass of tiles where that would shrink a 24-px face below 20 px; each face found
        again in a crop round it (or in the 'before' framing) to be kept.

1. groups/photos: faces found before / after against faces.csv's human-checked range, ms per photo.
2. CelebA in-the-wild sample: ms per image for detection alone (before and after alternate image by
   image, the best of --repeat runs each: the machine is shared; wall and process CPU time), faces found, how many images
   got the detail pass; and, unless --no-analyse, the time per image of detection plus the dlib
   embedding of every face (what an ingest worker spends on an image after decoding it).
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
from lookalike.ingest.models.detector import MIN_DETECT_SIDE, Detector
from lookalike.ingest.settings import Settings, default_data_dir

ROOT = Path(__file__).resolve().parent.parent


def _bordered_areas(self: Detector, bgr: np.ndarray, hb: int, wb: int, side: int, min_face: float) -> List[Any]:
    """The detector before issue 32 (its _detect_shrunk + _areas): the photo shrunk so that,
    bordered by half its size on every side, it fits `side` px long side; one YuNet pass."""
    import cv2

    H, W = bgr.shape[:2]
    if max(H + 2 * hb, W + 2 * wb) <= side:  # small enough: the full-size bordered copy
        return _rows_as_areas(self, detmod._bordered(bgr, hb, wb), 1.0, 1.0, 0, 0, 0, 0)
    r = side / max(H + 2 * hb, W + 2 * wb)
    ws, hs = max(1, int(W * r)), max(1, int(H * r))
    if min(ws, hs) < MIN_DETECT_SIDE:
        return []
    hbs, wbs = int(0.5 * hs), int(0.5 * ws)
    small = detmod._bordered(cv2.resize(bgr, (ws, hs), interpolation=cv2.INTER_LINEAR), hbs, wbs)
    return _rows_as_areas(self, small, W / ws, H / hs, wbs, hbs, wb, hb)


def _rows_as_areas(self: Detector, img: np.ndarray, fx: float, fy: float, wbs: int, hbs: int,
                   wb: int, hb: int) -> List[Any]:
    import cv2
    from deepface.models.Detector import FacialAreaRegion

    h, w = img.shape[:2]
    r = 1.0
    if max(h, w) > 640:  # DeepFace's wrapper
        r = 640.0 / max(h, w)
        img = cv2.resize(img, (int(w * r), int(h * r)))
    out = []
    for row in self._yunet(img):
        v = [int(c) for c in row[:14]]
        v[0], v[1] = max(v[0], 0), max(v[1], 0)
        if r != 1.0:
            v = [int(c / r) for c in v]
        p = [(int((v[i] - wbs) * fx) + wb, int((v[i + 1] - hbs) * fy) + hb) for i in range(0, 14, 2)]
        out.append(FacialAreaRegion(x=p[0][0], y=p[0][1], w=int(v[2] * fx), h=int(v[3] * fy),
                                    confidence=float(row[-1]), right_eye=p[2], left_eye=p[3], nose=p[4],
                                    mouth_right=p[5], mouth_left=p[6]))
    return out


class BorderedDetector(Detector):
    """The 'before' path."""
    _detect_budget = _bordered_areas


class _Counting(Detector):
    """The product's Detector, counting the photos that get the detail pass."""
    detail = 0

    def _detail_pass(self, *a, **k):
        type(self).detail += 1
        return super()._detail_pass(*a, **k)


def _ms(det: Detector, image: Any, repeat: int) -> Tuple[float, float]:
    """The best of `repeat` detect() calls: wall ms, and CPU ms of the process (all its threads:
    steadier than the wall clock on a shared machine)."""
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
            rows.append({"file": r["file"], "size": [image.bgr.shape[1], image.bgr.shape[0]], "min": lo, "max": hi,
                         "before": len(fb), "after": len(fa), "before_ok": lo <= len(fb) <= hi,
                         "after_ok": lo <= len(fa) <= hi, "before_ms": round(tb, 1), "after_ms": round(ta, 1),
                         "before_cpu_ms": round(cb, 1), "after_cpu_ms": round(ca, 1)})
    return rows


def celeba(data: Path, old: Detector, new: Detector, n: int, repeat: int) -> dict:
    files = sorted((data / "celeba" / "img_celeba").glob("*.jpg"))[:n or None]
    images = [decode(read_bytes(p)) for p in files]
    nb, na = 0, 0
    _Counting.detail = 0
    for image in images:
        nb += len(old.detect(image))
        na += len(new.detect(image))
    detail = _Counting.detail
    t = np.array([[*_ms(old, image, repeat), *_ms(new, image, repeat)] for image in images])  # wall, cpu x2
    big = np.array([im.bgr.shape[0] * im.bgr.shape[1] > 640 * 640 / 1.44 for im in images])

    def ratio(col_after: int, col_before: int, sel: Any = slice(None)) -> float:
        return round(float(t[sel, col_after].sum() / max(1e-9, t[sel, col_before].sum())), 2)

    return {"images": len(images), "faces_before": nb, "faces_after": na, "detail_pass_images": detail,
            "before_ms_per_image": round(float(t[:, 0].mean()), 2), "after_ms_per_image": round(float(t[:, 2].mean()), 2),
            "before_cpu_ms_per_image": round(float(t[:, 1].mean()), 2),
            "after_cpu_ms_per_image": round(float(t[:, 3].mean()), 2),
            "ratio": ratio(2, 0), "cpu_ratio": ratio(3, 1),
            "median_ratio": round(float(np.median(t[:, 2] / t[:, 0])), 2),
            "large_images": int(big.sum()), "large_ratio": ratio(2, 0, big), "large_cpu_ratio": ratio(3, 1, big),
            "small_ratio": ratio(2, 0, ~big), "small_cpu_ratio": ratio(3, 1, ~big)}


def analyse(data: Path, settings: Settings, n: int) -> dict:
    """Detection + dlib embedding per image (the Analyzer an ingest worker runs), before and after:
    the engine's detector switched between the two paths, image by image."""
    from lookalike.ingest.analysis import Analyzer

    files = sorted((data / "celeba" / "img_celeba").glob("*.jpg"))[:n or None]
    images = [decode(read_bytes(p)) for p in files]
    an = Analyzer(settings, "yunet", ["dlib"]).load()
    det = an.engine.detector
    own = type(det)
    t = {"before": 0.0, "after": 0.0, "before_cpu": 0.0, "after_cpu": 0.0}
    for image in images[:3]:
        an.embed([an.prepare(an.detect(image))])
    for image in images:
        for name, cls in (("before", BorderedDetector), ("after", own)):
            det.__class__ = cls
            t0, c0 = time.perf_counter(), time.process_time()
            photo = an.prepare(an.detect(image))
            if photo.faces:
                an.embed([photo])
            t[name] += time.perf_counter() - t0
            t[name + "_cpu"] += time.process_time() - c0
    det.__class__ = own
    return {"images": len(images), "before_ms_per_image": round(1000 * t["before"] / len(images), 2),
            "after_ms_per_image": round(1000 * t["after"] / len(images), 2),
            "ratio": round(t["after"] / t["before"], 2),
            "before_cpu_ms_per_image": round(1000 * t["before_cpu"] / len(images), 2),
            "after_cpu_ms_per_image": round(1000 * t["after_cpu"] / len(images), 2),
            "cpu_ratio": round(t["after_cpu"] / t["before_cpu"], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(default_data_dir()))
    ap.add_argument("--celeba", type=int, default=0, help="first N CelebA images (0: all)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-analyse", action="store_true", help="skip the detect + embed timing")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args(argv)
    data = Path(a.data)
    home = os.environ.get("DEEPFACE_HOME") or tempfile.mkdtemp(prefix="bench_detect_")
    settings = Settings(deepface_home=home, data_dir=data)
    old, new = BorderedDetector("yunet", settings).load(), _Counting("yunet", settings).load()
    g = groups(data, old, new, a.repeat)
    c = celeba(data, old, new, a.celeba, a.repeat)
    an = {} if a.no_analyse else analyse(data, settings, a.celeba)
    doc = {"bench": "detect", "detector": "yunet", "yunet_threshold": settings.yunet_threshold,
           "budget_px": detmod._SHRINKS_TO["yunet"] ** 2, "work_border": detmod._WORK_BORDER,
           "min_face": detmod.MIN_FACE, "yunet_min": detmod.YUNET_MIN, "cpus": os.cpu_count(),
           "groups": g, "celeba": c, "analyse": an}
    lines = ["Face detection (yunet): before = DeepFace's half-size black border, shrunk to 640 px long side;",
             f"after = a {detmod._WORK_BORDER:.0%}-50 % border within {detmod._SHRINKS_TO['yunet']}x"
             f"{detmod._SHRINKS_TO['yunet']} px (at most DeepFace's input), + tiles where a {detmod.MIN_FACE}-px "
             f"face would fall below {detmod.YUNET_MIN} px; each face confirmed in a crop", "",
             f"{'photo':58s} {'size':>9s} {'range':>6s} {'before':>7s} {'after':>6s} {'ms before':>10s} {'ms after':>9s}"
             f" {'CPU before':>11s} {'CPU after':>10s}"]
    for r in g:
        lines.append(f"{r['file'][:58]:58s} {r['size'][0]:>4d}x{r['size'][1]:<4d} {r['min']:>2d}-{r['max']:<3d} "
                     f"{r['before']:>5d}{' ' if r['before_ok'] else '!'} {r['after']:>5d}{' ' if r['after_ok'] else '!'} "
                     f"{r['before_ms']:>10.1f} {r['after_ms']:>9.1f} {r['before_cpu_ms']:>11.1f} {r['after_cpu_ms']:>10.1f}")
    lines.append(f"in range: before {sum(r['before_ok'] for r in g)}/{len(g)}, after {sum(r['after_ok'] for r in g)}/{len(g)}"
                 "  (! = outside faces.csv's range)")
    lines += ["", f"CelebA sample, {c['images']} images: faces {c['faces_before']} -> {c['faces_after']}; "
              f"detail pass on {c['detail_pass_images']} images",
              f"  detection: {c['before_ms_per_image']:.1f} -> {c['after_ms_per_image']:.1f} ms/image wall "
              f"(x{c['ratio']}; median per image x{c['median_ratio']}), {c['before_cpu_ms_per_image']:.1f} -> "
              f"{c['after_cpu_ms_per_image']:.1f} ms CPU (x{c['cpu_ratio']})",
              f"  images over {640 * 640 / 1.44 / 1e3:.0f} kpx ({c['large_images']}): x{c['large_ratio']} wall, "
              f"x{c['large_cpu_ratio']} CPU; the others: x{c['small_ratio']} wall, x{c['small_cpu_ratio']} CPU"]
    if an.get("images"):
        lines.append(f"  detection + dlib embedding: {an['before_ms_per_image']:.1f} -> {an['after_ms_per_image']:.1f} "
                     f"ms/image wall (x{an['ratio']}), {an['before_cpu_ms_per_image']:.1f} -> "
                     f"{an['after_cpu_ms_per_image']:.1f} ms CPU (x{an['cpu_ratio']})")
    lines.append(f"({os.cpu_count()} CPUs, shared; best of {a.repeat} runs per image)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detect.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "detect.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
