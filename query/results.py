"""What a search returns, as typed models: the one definition of the results' shape.

`lookalike query --json`, `--out DIR/results.json`, the web API's responses and its OpenAPI schema
all come from these pydantic models (`Document.model_validate(json)` checks a document).

A photo gives a `PhotoResult`; each face found in it a `QueryFace`; each stored face it resembles
a `Match`, ranked by `score`, the cosine similarity of the two embeddings (1 = identical; scores of
different models are not comparable). `same_person` is the model's verdict for a search over as
many faces as this one compared (schemas.Verdict.threshold_for), `same_person_probability` its
P(same person), 0.5 at the threshold; both are null for models without a verdict (CLIP, DINOv2).

A query face below the search's minimum quality (`low_quality`) is too poor to judge: the
calibration does not hold for tiny, blurred or turned-away faces (they look like everyone), so none
of its matches is called the same person; their `same_person` and `same_person_probability` are
null (no verdict), and the face's `verdict` says "too_poor". `QueryFace.verdict` is the face's
verdict in one word: "same_person" (a match is judged the same person), "nobody" (none is),
"too_poor", or null for a model without a verdict.

`QueryFace.person` answers who the face is, by the persons `lookalike people` stored (query/people/):
the person of its best same-person match ("named" / "unnamed", i.e. "person N"), "unknown" when
nobody in the collection is the same person, null when the face is too poor to judge or people
never ran on the database.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_serializer, model_validator

from lookalike.schemas import ATTRIBUTES, VERDICTS, Verdict, get_model
from lookalike.schemas.errors import UsageError

TOP_K_MAX = 1000
DEFAULT_TOP_K = 5
DOCUMENT_VERSION = 1

Box = Tuple[int, int, int, int]  # x, y, width, height in the photo's upright pixels


class QueryError(UsageError):
    """A query that cannot run as asked (unknown model, missing collection, bad top_k); one line (exit 2, HTTP 400)."""

    api_code = "bad_option"


def check_top_k(k: Any, limit: int = TOP_K_MAX) -> int:
    """top_k: an integer in [1, limit]."""
    try:
        kk = int(k)
        if str(k).strip() != str(kk) and not isinstance(k, int):
            raise ValueError
    except (TypeError, ValueError):
        raise QueryError(f"top_k must be an integer between 1 and {limit}, got {k!r}") from None
    if not 1 <= kk <= limit:
        raise QueryError(f"top_k must be between 1 and {limit}, got {kk}")
    return kk


def check_min_quality(q: Any) -> float:
    """min_quality: None -> the default; a number in [0, 1]."""
    from lookalike.ingest.quality import DEFAULT_MIN_QUALITY

    if q is None:
        return DEFAULT_MIN_QUALITY
    try:
        v = float(q)
    except (TypeError, ValueError):
        raise QueryError(f"min_quality must be a number between 0 and 1, got {q!r}") from None
    if not 0.0 <= v <= 1.0 or math.isnan(v):
        raise QueryError(f"min_quality must be between 0 and 1, got {v:g}")
    return v


def verdict_for(model: str) -> Optional[Verdict]:
    """The calibrated same-person verdict of a model key (none for block features `_l<N>`)."""
    spec = get_model(model)
    return None if spec.layer is not None else VERDICTS.get(spec.name)


FaceVerdict = Literal["same_person", "nobody", "too_poor"]
VERDICT_DOC = ('the face\'s verdict: "same_person" (a match is judged the same person), "nobody" (none is), '
               '"too_poor" (low_quality: a face too poor to judge, none of its matches is called the same '
               'person and their same_person is null), null: the model has no verdict')


def face_verdict(model: str, matches: Sequence["Match"], low_quality: bool) -> Optional[FaceVerdict]:
    """A query face's verdict over one model's matches (QueryFace.verdict)."""
    try:
        if verdict_for(model) is None:
            return None
    except KeyError:  # a model key this version does not know: judge by the matches
        if not any(m.same_person is not None for m in matches) and not low_quality:
            return None
    if low_quality:
        return "too_poor"
    return "same_person" if any(m.same_person for m in matches) else "nobody"


def judge(score: float, verdict: Optional[Verdict], n: int = 1) -> Tuple[Optional[bool], Optional[float]]:
    """(same person?, P(same person)) of a score in a search over n stored faces (the threshold
    rises with n: schemas.Verdict.threshold_for); (None, None) for a model without a verdict."""
    if verdict is None:
        return None, None
    prob = verdict.probability(score, n)
    return bool(score >= verdict.threshold_for(n)), None if prob is None else round(prob, 4)


class ExplanationFile(BaseModel):
    """A heat-map panel written for a match (`--explain`)."""

    method: Literal["occlusion", "gradcam", "attention", "layers"]
    png: str = Field(description="panel, relative to the output folder")
    seconds: float = Field(description="time to compute it")
    layer_scores: Optional[List[float]] = Field(None, description="'layers': query-match cosine per block")


class Match(BaseModel):
    """A stored face like a query face."""

    rank: int
    score: float = Field(description="cosine similarity of the embeddings (1 = identical)")
    distance: float = Field(description="1 - score")
    id: str = Field(description="stored face id: <image sha256>_<face index>")
    identity: str = Field(description="the person's label ('' when unknown)")
    source_path: str
    image_sha256: str
    face_index: int
    box: Box
    confidence: float = Field(description="detector confidence of the stored face")
    detector: str
    has_attributes: bool = Field(description="false: the 40 CelebA attributes are unknown")
    attributes: Dict[str, Optional[bool]] = Field(description="the 40 CelebA attributes (null: unknown)")
    quality: Optional[float] = Field(None, description="ingest/quality.py; null: stored before quality existed")
    face_size: Optional[int] = None
    same_person: Optional[bool] = Field(None, description="the model's verdict; null: no verdict, the model has "
                                        "none or the query face is too poor to judge (its verdict: too_poor)")
    same_person_probability: Optional[float] = Field(None, description="P(same person), 0.5 at the threshold; "
                                                     "null where same_person is null")
    explanations: List[ExplanationFile] = Field(default_factory=list,
                                                description="only with --explain, for the top matches")

    @model_serializer(mode="wrap")
    def _explanations_when_any(self, handler):
        out = handler(self)
        if not self.explanations:
            out.pop("explanations", None)
        return out

    @classmethod
    def from_row(cls, rank: int, score: float, row: Dict[str, Any], verdict: Optional[Verdict] = None,
                 searched: int = 1) -> "Match":
        known = bool(row.get("has_attributes", False))
        same, prob = judge(score, verdict, searched)
        return cls(
            rank=rank, score=float(score), distance=float(1.0 - score), id=str(row["id"]),
            identity=str(row.get("identity", "")), source_path=str(row.get("source_path", "")),
            image_sha256=str(row.get("image_sha256", "")), face_index=int(row.get("face_index", 0)),
            box=(int(row.get("box_x", 0)), int(row.get("box_y", 0)), int(row.get("box_w", 0)),
                 int(row.get("box_h", 0))),
            confidence=float(row.get("confidence", 0.0)), detector=str(row.get("detector", "")),
            has_attributes=known,
            attributes={a: (bool(row.get(a)) if known and row.get(a) is not None else None) for a in ATTRIBUTES},
            quality=None if row.get("quality") is None else round(float(row["quality"]), 4),
            face_size=None if row.get("face_size") is None else int(row["face_size"]),
            same_person=same, same_person_probability=prob,
        )


PERSON_DOC = ('who this face is, by the persons `lookalike people` grouped the stored faces into (first model '
              'searched): "named" (the person of its best same-person match, named by a user or by the identity '
              'most of its faces carry; a match not grouped yet gives its own identity, with id null), "unnamed" '
              '(that person has no name: shown as "person <id>"), "unknown" (verdict "nobody", or a same-person '
              'match neither grouped nor labelled: not in the gallery); null: verdict too_poor or none, or '
              '`lookalike people` never ran on this database')


class PersonAnswer(BaseModel):
    """A query face's answer by person (QueryFace.person)."""

    id: Optional[int] = Field(None, description="person id (lookalike people); null when the match is not grouped "
                                                "yet or the answer is unknown")
    name: Optional[str] = Field(None, description="the person's name; null for unnamed and unknown")
    named_by: Optional[Literal["user", "identity"]] = Field(None, description="who named it: a user (people name) "
                                                            "or the identity of its labelled faces")
    answer: Literal["named", "unnamed", "unknown"]

    @property
    def label(self) -> str:
        """'Tom Hanks' / 'person 7' / 'unknown'."""
        if self.answer == "named" and self.name:
            return self.name
        return f"person {self.id}" if self.answer == "unnamed" else "unknown"


class QueryFace(BaseModel):
    """One face found in the query photo and its matches per model searched."""

    index: int = Field(description="0-based, detector order; shown as index + 1")
    box: Box
    confidence: float
    quality: Optional[float] = None
    low_quality: bool = Field(False, description="below the search's minimum quality: answered, but too poor to "
                                                 "judge (verdict too_poor, no same-person match)")
    person: Optional[PersonAnswer] = Field(None, description=PERSON_DOC)
    matches_by_model: Dict[str, List[Match]] = Field(default_factory=dict,
                                                     description="only when more than one model was searched")
    dbox: Optional[Box] = Field(None, exclude=True, repr=False)  # decoded-image pixels (rendering)

    @computed_field(description="matches of the first model searched")  # type: ignore[prop-decorator]
    @property
    def matches(self) -> List[Match]:
        return next(iter(self.matches_by_model.values()), [])

    @computed_field(description=VERDICT_DOC + " (first model searched)")  # type: ignore[prop-decorator]
    @property
    def verdict(self) -> Optional[FaceVerdict]:
        model = next(iter(self.matches_by_model), None)
        return None if model is None else self.verdict_of(model)

    @computed_field(description="verdict per model; only when more than one model was searched")  # type: ignore[prop-decorator]
    @property
    def verdict_by_model(self) -> Dict[str, Optional[FaceVerdict]]:
        return {m: self.verdict_of(m) for m in self.matches_by_model}

    def verdict_of(self, model: str) -> Optional[FaceVerdict]:
        """The face's verdict over one model's matches."""
        return face_verdict(model, self.matches_by_model.get(model, []), self.low_quality)

    @property
    def same_person(self) -> List[Match]:
        """Matches (first model) judged the same person; empty: nobody in the collection is (or
        the face is too poor to judge)."""
        return [m for m in self.matches if m.same_person]

    def withhold_verdict(self) -> None:
        """A too-poor face: no match is called the same person (same_person and its probability null)."""
        for ms in self.matches_by_model.values():
            for m in ms:
                m.same_person = None
                m.same_person_probability = None

    @model_serializer(mode="wrap")
    def _one_model_once(self, handler):
        # With one model, "matches" and "verdict" already hold everything: do not write them twice.
        out = handler(self)
        if len(self.matches_by_model) <= 1:
            out.pop("matches_by_model", None)
            out.pop("verdict_by_model", None)
        return out


class SearchInfo(BaseModel):
    """How one model's search ran."""

    model: str
    collection: str
    rows: int = Field(description="rows in the collection")
    filtered_rows: Optional[int] = Field(None, description="rows the filter keeps; null when not probed")
    mode: Literal["ann", "exact", "empty"]
    ef: Optional[int] = Field(None, description="breadth given to the ANN search")
    seconds: float
    note: str = Field("", description="how the search was chosen")
    same_person_threshold: Optional[float] = Field(None, description="the verdict's threshold for this many faces")


class PhotoResult(BaseModel):
    """The answer for one photo."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: str
    sha256: str
    width: int
    height: int
    detector: str
    models: List[str]
    top_k: int
    filter: Optional[str] = Field(None, description="the validated filter as rendered for Milvus")
    exclude_same_image: bool = False
    min_face: int = 0
    min_score: Optional[float] = None
    min_quality: float = Field(0.0, description="stored faces below it were left out (0: every face)")
    error: Optional[str] = Field(None, description="one-line reason when the photo could not be read")
    faces_skipped_small: int = 0
    timings: Dict[str, float] = Field(default_factory=dict, description="seconds per step")
    search: List[SearchInfo] = Field(default_factory=list)
    faces: List[QueryFace] = Field(default_factory=list)
    # For the caller's rendering and explanations; never serialised.
    image: Optional[Any] = Field(None, exclude=True, repr=False)  # ingest.images.Decoded
    detected: List[Any] = Field(default_factory=list, exclude=True, repr=False)  # ingest.models.Face
    analysis: Optional[Any] = Field(None, exclude=True, repr=False)  # ingest.analysis.PhotoAnalysis (keep_image)
    notes: List[str] = Field(default_factory=list, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _faces_from_json(cls, data: Any) -> Any:
        # A document read back: one model's matches are under "matches" only (see QueryFace).
        if isinstance(data, dict) and data.get("models") and isinstance(data.get("faces"), list):
            first = data["models"][0]
            data = {**data, "faces": [
                {**f, "matches_by_model": {first: f["matches"]}}
                if isinstance(f, dict) and "matches_by_model" not in f and "matches" in f else f
                for f in data["faces"]]}
        return data

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> Dict[str, Any]:
        return self.model_dump(mode="json")


class Document(BaseModel):
    """`lookalike query --json` and results.json: every photo of a run."""

    version: int = DOCUMENT_VERSION
    photos: List[PhotoResult]


def results_document(results: Sequence[PhotoResult]) -> Dict[str, Any]:
    """The document `--json` prints and `--out` writes as results.json."""
    return Document(photos=list(results)).model_dump(mode="json")


def validate_document(doc: Any) -> List[str]:
    """Problems of a results document (parsed JSON) against the models ([] when it conforms): a
    missing or mistyped field, or a key the models would not write."""
    from pydantic import ValidationError

    try:
        parsed = Document.model_validate(doc)
    except ValidationError as e:
        return [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
    if parsed.model_dump(mode="json") != doc:
        return ["the document holds keys or values the result models do not write"]
    return []
