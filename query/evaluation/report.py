"""What every evaluation report shares: its JSON form, percent cells and the search verdict's
calibration lines."""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional

import numpy as np


def pct(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f} %"


def to_json(report: Dict[str, Any]) -> str:
    """The report as JSON: objects indented, lists of numbers on one line, NaN as null."""
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o

    def enc(o, ind: int) -> str:
        pad, inner = " " * ind, " " * (ind + 1)
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{inner}{json.dumps(k)}: {enc(v, ind + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list) and any(isinstance(v, (dict, list)) for v in o):
            return "[\n" + ",\n".join(inner + enc(v, ind + 1) for v in o) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False)

    return enc(clean(report), 0) + "\n"


def format_search_calibration(c: Dict[str, Any]) -> List[str]:
    """The search verdict's calibration as report lines."""
    out = [f"search verdict over {c['faces']} faces ({c['identities']} identities; {c['impostor_pairs']} impostor "
           f"and {c['mated_pairs']} mated pairs)",
           "  impostor tail: " + ", ".join(f"FAR {p['far']:g} at {p['threshold']:.4f} (TAR {100 * p['tar']:.1f} %)"
                                          for p in c["curve"]),
           f"  open set, each face searched against the other {c['gallery']} "
           f"({c['mated_searches']} with their identity present):"]
    for lv in c["levels"]:
        out.append(f"    FPIR target {100 * lv['fpir_target']:4.1f} %: threshold {lv['threshold']:.4f}  strangers "
                   f"called same {100 * lv['fpir']:5.2f} %  people found and called same {100 * (lv['tpir'] or 0):5.2f} %  "
                   f"wrong person called same {100 * (lv['wrong_called_same'] or 0):5.2f} %")
    out.append(f"  logistic slope {c['logistic'][0]:.2f}, midpoint {c['logistic_midpoint']:.4f}")
    return out
