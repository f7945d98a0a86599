"""`lookalike serve`: a small web app over the same Python API as the CLI.

Everything a request does goes through one `query.search.Searcher` created at startup (models load
once, the first time they are used or at startup with `warm=True`); every call into it is
serialised by one lock, because Milvus Lite is a single-process, single-client database.

Routes (documented at /docs by Swagger UI, whose files come from fastapi-offline and are served
from here, so the page works offline; OpenAPI at /openapi.json):

    GET  /                         the page (query/static/index.html; app.css, app.js under /static)
    POST /api/query                multipart: image + model, k, filter, where[], where_not[],
                                   exclude_same_image, min_quality -> QueryResponse
    POST /api/sheet                result_id (from /api/query) -> the contact sheet (PNG) of that search
    GET  /api/stats                collections (rows, dim, index), models, default model, bounds
    GET  /api/fields               attribute groups for the filter UI, filterable fields
    GET  /api/thumb/{model}/{id}   JPEG crop of a stored face, looked up by primary key
    GET  /api/photo/{model}/{id}   JPEG of a stored face's whole source photo, the face outlined
    GET  /api/people?model=dlib    the persons `lookalike people` stored, as `lookalike people --json`
                                   (read-only: nothing is clustered; source paths cut to file names)
    POST /api/people/{id}/name     JSON {"name": ...}: name a person ('' removes the name)

Server paths are not disclosed: a match's `source_path` is the file's name only, and its photo is
fetched by face id (GET /api/photo). The contact sheet is drawn from the search already run: the
server keeps its last results, bounded in number and bytes, each under a random token
(query/app/kept.py); a sheet asked for after its result went is a 404, and the page searches again.

Security: the client never sends a path. An upload is checked for size (413, counted while the
body streams in, so a lying or absent Content-Length does not help) and for an image signature
(415) before it is decoded; decoding refuses images over ingest.images.MAX_PIXELS. Filters go
through schemas.filters.compile_filter (inside Searcher.search_photo). Thumbnails and photos are
read from the `source_path` of the row whose primary key is asked for: only files the collection
points to are ever opened. Model names are checked against the database's collections.

Errors (query/app/web_errors.py): a product exception becomes {"error": {"code", "message"}}
with the HTTP status and code it carries (schemas/errors.py), in one place (ClassifiedRoute); the
app's own refusals (413, 415, 404) are ApiError. Messages are the product's, written for both doors.
"""
from __future__ import annotations

import base64
import io
import os
import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from lookalike.ingest.settings import Settings, resolve
from lookalike.query.app.errors import UsageError
from lookalike.query.app.kept import KEPT_RESULTS, KeptResults
from lookalike.query.app.web_errors import (  # noqa: F401  (api_message: re-exported, tests use it)
    ApiError,
    BodyLimit,
    ClassifiedRoute,
    api_message,
    install_error_handlers,
    too_large,
)
from lookalike.query.results import DEFAULT_TOP_K, DOCUMENT_VERSION, PhotoResult

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_ASSETS = "/docs-assets"  # where Swagger UI's and ReDoc's files are served from
MAX_UPLOAD_BYTES = 15 * 1024 * 1024
# multipart overhead allowed on top of the file (boundaries, the option fields)
_FORM_OVERHEAD = 64 * 1024
PREVIEW_SIDE = 1600  # longest side of the query photo preview sent back (JPEG data URL)
PHOTO_SIDE = 1600  # longest side of a stored face's source photo (/api/photo)
THUMB_SIDE = 160  # longest side of a match thumbnail
WEB_TOP_K_MAX = 50  # matches per face the page can show; the CLI allows more
HIDDEN_FIELDS = {"source_path"}  # never shown by nor filterable through the web API
FACE_ID = re.compile(r"^[0-9a-f]{64}_[0-9]{1,5}$")
OUTLINE = (79, 70, 229)  # the page's accent colour, for the face box on /api/photo

# The 40 CelebA attributes, grouped for the filter UI (every attribute exactly once; tested).
ATTRIBUTE_GROUPS: List[Dict[str, Any]] = [
    {"name": "Hair", "fields": ["Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Bald", "Bangs",
                                "Receding_Hairline", "Straight_Hair", "Wavy_Hair"]},
    {"name": "Beard & moustache", "fields": ["No_Beard", "Five_o_Clock_Shadow", "Goatee", "Mustache",
                                             "Sideburns"]},
    {"name": "Face", "fields": ["Oval_Face", "Chubby", "Double_Chin", "High_Cheekbones", "Rosy_Cheeks",
                                "Pale_Skin", "Arched_Eyebrows", "Bushy_Eyebrows", "Narrow_Eyes",
                                "Bags_Under_Eyes", "Big_Nose", "Pointy_Nose", "Big_Lips"]},
    {"name": "Expression", "fields": ["Smiling", "Mouth_Slightly_Open"]},
    {"name": "Make-up & accessories", "fields": ["Heavy_Makeup", "Wearing_Lipstick", "Eyeglasses",
                                                 "Wearing_Hat", "Wearing_Earrings", "Wearing_Necklace",
                                                 "Wearing_Necktie"]},
    {"name": "Overall", "fields": ["Male", "Young", "Attractive", "Blurry"]},
]

# (offset, signature) pairs of the image formats ingest.images.decode reads.
_MAGIC = [
    (0, b"\xff\xd8\xff", "jpeg"), (0, b"\x89PNG\r\n\x1a\n", "png"), (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"), (0, b"BM", "bmp"), (0, b"II*\x00", "tiff"), (0, b"MM\x00*", "tiff"),
]
_FTYP_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}

def sniff_image(head: bytes) -> Optional[str]:
    """The image format named by a file's first bytes, or None when it is not one we decode."""
    for off, sig, name in _MAGIC:
        if head[off:off + len(sig)] == sig:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return "avif" if head[8:12] in (b"avif", b"avis") else "heif"
    return None


def file_name(path: str) -> str:
    """The last part of a path (either separator): what the API shows of a server path."""
    return re.split(r"[\\/]", path or "")[-1]


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def _display_name(name: Optional[str]) -> str:
    """The upload's file name for display only (never used as a path)."""
    base = file_name(name or "")
    base = "".join(c for c in base if c.isprintable())[:120].strip()
    return base or "upload"


def _bounded(im, side: int):
    from PIL import Image

    if max(im.size) > side:
        r = side / max(im.size)
        im = im.resize((max(1, round(im.width * r)), max(1, round(im.height * r))), Image.Resampling.BILINEAR)
    return im


def _jpeg(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _preview(decoded) -> str:
    from PIL import Image

    im = _bounded(Image.fromarray(decoded.rgb), PREVIEW_SIDE)
    return "data:image/jpeg;base64," + base64.b64encode(_jpeg(im)).decode("ascii")


def _thumb_jpeg(path: str, box: Tuple[int, int, int, int]) -> Optional[bytes]:
    """A stored face's crop with a little context (it looks better), or None when unreadable."""
    from PIL import Image

    from lookalike.query.render import source_crop

    x, y, w, h = box
    pad = round(0.15 * max(w, h))
    crop = source_crop(path, (max(0, x - pad), max(0, y - pad), w + 2 * pad, h + 2 * pad))
    if crop is None:
        return None
    crop.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    return _jpeg(crop)


def _photo_jpeg(path: str, box: Tuple[int, int, int, int]) -> Optional[bytes]:
    """A stored face's whole source photo, upright, longest side at most PHOTO_SIDE, the face
    outlined; None when the file is missing or unreadable."""
    from PIL import Image, ImageDraw

    from lookalike.ingest.images import ImageError, load

    try:
        decoded = load(path)
    except (ImageError, OSError):
        return None
    im = _bounded(Image.fromarray(decoded.rgb), PHOTO_SIDE)
    s = im.width / max(decoded.width, 1)  # original upright pixels -> these pixels
    x, y, w, h = (v * s for v in box)
    ImageDraw.Draw(im).rectangle((x, y, x + w, y + h), outline=OUTLINE, width=max(2, round(max(im.size) / 300)))
    return _jpeg(im)


# ---------------------------------------------------------------------------------------------
# What the routes share
# ---------------------------------------------------------------------------------------------
@dataclass
class QueryOptions:
    """The query form's options (the same for /api/query and /api/sheet)."""

    model: Optional[str] = None
    k: int = DEFAULT_TOP_K
    filter: Optional[str] = None
    where: List[str] = field(default_factory=list)
    where_not: List[str] = field(default_factory=list)
    exclude_same_image: bool = False
    min_quality: Optional[float] = None


def query_options(
    model: Optional[str] = Form(None, description="model collection, e.g. dlib; a comma list or 'all' "
                                                  "(default: the database's default)"),
    k: int = Form(DEFAULT_TOP_K, ge=1, le=WEB_TOP_K_MAX, description=f"matches per face, 1..{WEB_TOP_K_MAX}"),
    filter: Optional[str] = Form(None, description="filter expression, e.g. Smiling == true and Male == false"),
    where: List[str] = Form([], description="boolean fields that must be true"),
    where_not: List[str] = Form([], description="boolean fields that must be false"),
    exclude_same_image: bool = Form(False, description="never return faces of this very photo"),
    min_quality: Optional[float] = Form(None, ge=0, le=1, description="leave out stored faces below this "
                                        "quality, 0..1 (default 0.4; 0 keeps every face)"),
) -> QueryOptions:
    return QueryOptions(model, k, filter, where, where_not, exclude_same_image, min_quality)


IMAGE_FILE = File(..., description="the photo (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF)")


class Lookalike:
    """The app's state: settings, the one Searcher and its lock (Milvus Lite: one client per
    process), the thumbnail cache, the last results (for their sheets) and the upload limit."""

    def __init__(self, settings: Settings, searcher=None, explicit_sources=(),
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, kept: Optional[KeptResults] = None):
        self.settings = settings
        self._searcher = searcher
        self.own = searcher is None
        self.explicit_sources = explicit_sources
        self.max_upload_bytes = max_upload_bytes
        self.lock = threading.Lock()
        self._thumbs: Dict[tuple, bytes] = {}
        self.kept = kept if kept is not None else KeptResults()

    def open(self, warm: bool) -> None:
        from lookalike.query.results import QueryError
        from lookalike.query.search import Searcher

        if self._searcher is None:
            self._searcher = Searcher(self.settings, explicit_sources=self.explicit_sources)
        if warm:
            with self.lock:
                try:
                    models = self._searcher.resolve_models(None)
                except QueryError:
                    return  # empty database: the page says so
                self._searcher.analyzer(models)

    def close(self) -> None:
        if self.own and self._searcher is not None:
            self._searcher.close()
            self._searcher = None

    @property
    def searcher(self):
        if self._searcher is None:
            raise ApiError(503, "not_ready", "the server is starting")
        return self._searcher

    def check_model(self, model: Optional[str]) -> None:
        """Refuse a model without a collection here before anything loads (and before the
        search's own message, written for the command line, could name a CLI flag)."""
        from lookalike.schemas import UnknownName

        with self.lock:
            present = self.searcher.store.models()
        if not present:
            raise UsageError("the database holds no faces yet: ingest photos into it first")
        names = [m.strip() for m in (model or "").split(",") if m.strip()]
        bad = [m for m in names if m not in present and names != ["all"]]
        if bad:
            raise UnknownName(f"no collection for model '{bad[0]}' in this database "
                              f"(models: {', '.join(present)})")

    def read_upload(self, image: UploadFile) -> bytes:
        """The upload's bytes, refused when too large (413), empty or not an image type (415)."""
        f = image.file
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(0)
        if size > self.max_upload_bytes:  # the middleware bounds the body; this, the file itself
            raise ApiError(413, "too_large", too_large(self.max_upload_bytes))
        if size == 0:
            raise ApiError(422, "unreadable", "empty file (0 bytes)")
        if sniff_image(f.read(32)) is None:
            raise ApiError(415, "unsupported_type", "not an image this app reads (JPEG, PNG, WebP, GIF, "
                                                    "BMP, TIFF, HEIC or AVIF)")
        f.seek(0)
        return f.read()

    def search(self, image: UploadFile, opts: QueryOptions) -> Tuple[PhotoResult, bytes]:
        """Search every face of the upload: (the result, which keeps the decoded photo; the upload's bytes)."""
        from lookalike.ingest.images import ImageError
        from lookalike.schemas.filters import FilterError, compile_filter

        data = self.read_upload(image)
        self.check_model(opts.model)
        flt = compile_filter(opts.filter or None, opts.where, opts.where_not)
        if flt is not None and HIDDEN_FIELDS & set(flt.fields()):
            # Server paths stay on the server: a filter on them could probe its folders blind.
            hidden = sorted(HIDDEN_FIELDS & set(flt.fields()))[0]
            raise FilterError(f"{hidden}: not filterable through the web API", field=hidden)
        name = _display_name(image.filename)  # only displayed
        try:
            with self.lock:  # flt holds where / where_not too
                r = self.searcher.search_photo(data, name=name, model=opts.model or None, top_k=opts.k, filter=flt,
                                               exclude_same_image=opts.exclude_same_image, keep_image=True,
                                               min_quality=opts.min_quality)
            return r, data
        except ImageError as e:  # "<name>: reason" -> the reason
            msg = str(e)
            msg = msg[len(name):].lstrip(": ") if msg.startswith(name) else msg
            raise ImageError(f"cannot read this image: {msg}") from None

    def stored_face(self, model: str, face_id: str) -> Tuple[str, Tuple[int, int, int, int]]:
        """(source_path, box) of a stored face, looked up by primary key only; 404 otherwise."""
        if not FACE_ID.match(face_id):
            raise ApiError(404, "not_found", "no such face")
        s = self.searcher
        with self.lock:
            if model not in s.store.models():
                raise ApiError(404, "not_found", f"no collection for model '{model}'")
            rows = s.store.get(model, [face_id], output_fields=[
                "id", "source_path", "box_x", "box_y", "box_w", "box_h"])
        if not rows:
            raise ApiError(404, "not_found", "no such face")
        row = rows[0]
        return str(row["source_path"]), (int(row["box_x"]), int(row["box_y"]), int(row["box_w"]),
                                         int(row["box_h"]))

    def thumb(self, model: str, face_id: str) -> Optional[bytes]:
        key = (model, face_id)
        if key not in self._thumbs:
            data = _thumb_jpeg(*self.stored_face(model, face_id))
            if data is None:
                return None
            if len(self._thumbs) >= 2048:
                self._thumbs.pop(next(iter(self._thumbs)))
            self._thumbs[key] = data
        return self._thumbs[key]


def service(request: Request) -> Lookalike:
    return request.app.state.lookalike


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------
class QueryResponse(BaseModel):
    """POST /api/query's answer: the results document's one photo and a preview to draw on.

    Server paths are not disclosed: each match's `source_path` holds the file's name only (its
    photo is GET /api/photo/{model}/{id}), and `photo.path` is the upload's file name."""

    version: int = Field(DOCUMENT_VERSION, description="the results document's version")
    photo: PhotoResult = Field(description="as in `lookalike query --json`, source paths cut to file names")
    preview: Optional[str] = Field(None, description=f"the decoded photo (longest side at most {PREVIEW_SIDE} "
                                                     "px) as a JPEG data URL; face boxes are in its proportions")
    seconds: float = Field(description="server time for this request")
    result_id: str = Field(description="this search's token for POST /api/sheet (the server keeps its last "
                                       f"{KEPT_RESULTS} results at most)")


_QUERY_ERRORS: Dict[Union[int, str], Dict[str, Any]] = {400: {"description": "bad option (unknown model, empty database)"},
                 413: {"description": "upload too large"},
                 415: {"description": "not an image type we decode"},
                 422: {"description": "invalid field (named), invalid filter (names the field) or unreadable image"},
                 503: {"description": "database error, model weights missing, or the server is starting"}}
_JPEG: Dict[Union[int, str], Dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}}, 404: {"description": "no such face, or its file is unreadable"}}

page = APIRouter()
api = APIRouter(prefix="/api", tags=["api"], route_class=ClassifiedRoute)


@page.get("/", include_in_schema=False)
def index():
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@api.get("/stats", summary="Collections in the database, and the bounds of the query's options")
def stats(svc: Lookalike = Depends(service)) -> Dict[str, Any]:
    from lookalike.ingest.quality import DEFAULT_MIN_QUALITY
    from lookalike.query.results import QueryError
    from lookalike.schemas import collection_name
    from lookalike.schemas.filters import compile_filter

    s = svc.searcher
    with svc.lock:
        cols = s.store.stats()
        models = s.store.models()
        try:
            default = s.resolve_models(None)[0]
        except QueryError:
            default = None
        # attribute filters mean something only where some faces carry CelebA attributes
        annotated = s.store.count(collection_name(default), compile_filter("has_attributes == true")) \
            if default else 0
    settings = svc.settings
    return {"database": settings.uri or Path(settings.db).name, "detector": settings.detector,
            "collections": [c.__dict__ for c in cols], "models": models, "default_model": default,
            "top_k": {"default": DEFAULT_TOP_K, "max": WEB_TOP_K_MAX}, "annotated_faces": annotated,
            "min_quality": {"default": DEFAULT_MIN_QUALITY}, "max_upload_bytes": svc.max_upload_bytes}


@api.get("/fields", summary="Fields filters may use, attributes grouped")
def fields() -> Dict[str, Any]:
    from lookalike.schemas import ATTRIBUTES, FACE_FIELDS
    from lookalike.schemas.filters import FILTERABLE

    return {"attribute_groups": ATTRIBUTE_GROUPS, "attributes": list(ATTRIBUTES),
            "fields": [{"name": f.name, "kind": f.kind, "doc": f.doc} for f in FACE_FIELDS
                       if f.name in FILTERABLE and f.name not in HIDDEN_FIELDS]}


@api.post("/query", summary="Find lookalikes for every face of a photo", response_model=QueryResponse,
          responses=_QUERY_ERRORS)
def query(image: UploadFile = IMAGE_FILE, opts: QueryOptions = Depends(query_options),
          svc: Lookalike = Depends(service)) -> QueryResponse:
    t0 = time.perf_counter()
    r, data = svc.search(image, opts)
    result_id = svc.kept.put(r, data)  # before the paths below are cut: the sheet reads the match files
    preview = _preview(r.image) if r.image is not None else None
    for f in r.faces:
        for ms in f.matches_by_model.values():
            for m in ms:
                m.source_path = file_name(m.source_path)
    return QueryResponse(photo=r, preview=preview, seconds=round(time.perf_counter() - t0, 4), result_id=result_id)


@api.post("/sheet", summary="The contact sheet (PNG) of a search already run", response_class=Response,
          responses={200: {"content": {"image/png": {}}},
                     404: {"description": "no such result kept (the server keeps its last results): search again"}})
def sheet(result_id: str = Form(..., description="`result_id` of a POST /api/query answer"),
          svc: Lookalike = Depends(service)) -> Response:
    """Draws a search's result as `lookalike query --out` does (the photo with numbered boxes,
    then a row of matches per face), without searching again."""
    from lookalike.ingest.images import decode
    from lookalike.query.render import render_sheet

    kept = svc.kept.get(result_id)
    if kept is None:
        raise ApiError(404, "not_found", "this search's result is no longer kept: search again")
    result, data = kept
    buf = io.BytesIO()
    render_sheet(result, image=decode(data)).save(buf, "PNG", compress_level=1)
    return Response(buf.getvalue(), media_type="image/png")


@api.get("/thumb/{model}/{face_id}", summary="Crop of a stored face (JPEG)", response_class=Response,
         responses=_JPEG)
def thumb(model: str, face_id: str, svc: Lookalike = Depends(service)) -> Response:
    data = svc.thumb(model, face_id)
    if data is None:
        raise ApiError(404, "not_found", "the source image of this face is missing or unreadable")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@api.get("/photo/{model}/{face_id}", summary="Source photo of a stored face (JPEG, the face outlined)",
         response_class=Response, responses=_JPEG)
def photo(model: str, face_id: str, svc: Lookalike = Depends(service)) -> Response:
    data = _photo_jpeg(*svc.stored_face(model, face_id))
    if data is None:
        raise ApiError(404, "not_found", "the source image of this face is missing or unreadable")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


class PersonName(BaseModel):
    name: str = Field(description="the person's name, at most 256 characters; '' removes it")


class NamedPerson(BaseModel):
    id: int = Field(description="the person named (a person merged into another names that one)")
    name: Optional[str] = Field(description="its name now (null: removed)")


_PEOPLE_ERRORS: Dict[Union[int, str], Dict[str, Any]] = {
    400: {"description": "bad option (unknown model, empty database, name too long)"},
    404: {"description": "no such person"},
    503: {"description": "database error, or the server is starting"}}


@api.get("/people", summary="The persons `lookalike people` grouped the faces into (read-only)",
         responses=_PEOPLE_ERRORS)
def people_list(model: Optional[str] = None, svc: Lookalike = Depends(service)) -> Dict[str, Any]:
    """The JSON of `lookalike people --json` as stored: nothing is clustered or written here (run
    `lookalike people` to group new faces). `note` says when there is nothing, or faces wait for
    their person. Each face's `id` gives its thumbnail (GET /api/thumb/{model}/{id})."""
    from lookalike.query.people import people

    svc.check_model(model)
    s = svc.searcher
    with svc.lock:
        result = people(model or None, settings=svc.settings, store=s.store, update=False)
    doc = result.to_dict()
    doc["target"] = svc.settings.uri or Path(svc.settings.db).name  # server paths stay on the server
    for p in doc["people"]:
        for f in p["faces"] + ([p["representative"]] if p["representative"] else []):
            f["source"] = file_name(f["source"])
    for f in doc["unclustered"]:
        f["source"] = file_name(f["source"])
    if not result.people:
        doc["note"] = "no persons yet: run `lookalike people` on this database to group its faces"
    elif result.pending:
        doc["note"] = (f"{result.pending} faces have no person yet: run `lookalike people` to group them")
    return doc


@api.post("/people/{person}/name", summary="Name a person ('' removes the name)", response_model=NamedPerson,
          responses=_PEOPLE_ERRORS)
def people_name(person: int, body: PersonName, model: Optional[str] = None,
                svc: Lookalike = Depends(service)) -> NamedPerson:
    """As `lookalike people name PERSON NAME`: kept in the database. A person merged into another
    names that one (its id is answered)."""
    from lookalike.query.people import name_person

    svc.check_model(model)
    s = svc.searcher
    with svc.lock:
        pid = name_person(person, body.name, model or None, settings=svc.settings, store=s.store)
    return NamedPerson(id=pid, name=body.name.strip() or None)


def create_app(settings: Optional[Settings] = None, *, searcher=None, warm: bool = True,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, explicit_sources: Sequence[str] = ()) -> FastAPI:
    """The web app. `searcher`: an open query.search.Searcher to use (its owner closes it);
    otherwise one is created at startup over `settings` and closed at shutdown. `warm` loads the
    default model's detector and embedder at startup, so the first query is as fast as the rest."""
    from fastapi_offline import FastAPIOffline

    svc = Lookalike(resolve(settings), searcher, explicit_sources, max_upload_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.open(warm)
        try:
            yield
        finally:
            svc.close()

    # FastAPIOffline: FastAPI whose /docs loads Swagger UI from this server, not a CDN. No
    # validator badge (it would send the spec's URL to validator.swagger.io), and no /redoc
    # (ReDoc's side menu fetches its logo from a CDN).
    app = FastAPIOffline(title="Lookalike", version="1", lifespan=lifespan, static_url=DOCS_ASSETS,
                         redoc_url=None, swagger_ui_parameters={"validatorUrl": None},
                         description="Find the stored faces most like each face of a photo. The same "
                                     "Python API as `lookalike query` (query.search.Searcher).")
    app.state.lookalike = svc
    app.add_middleware(BodyLimit, limit=max_upload_bytes + _FORM_OVERHEAD)
    install_error_handlers(app, max_upload_bytes)
    app.include_router(page)
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    return app
