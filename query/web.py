"""`lookalike serve`: a small web app over the same Python API as the CLI.

Everything a request does goes through one `query.search.Searcher` created at startup (models load
once, the first time they are used or at startup with `warm=True`); every call into it is
serialised by one lock, because Milvus Lite is a single-process, single-client database.

Routes (FastAPI documents them at /docs and /openapi.json):

    GET  /                         the page (query/static/index.html; app.css, app.js under /static)
    POST /api/query                multipart: image + model, k, filter, where[], where_not[],
                                   exclude_same_image -> {"version": 1, "photo": RESULT, "preview": ...}
    GET  /api/stats                collections (rows, dim, index), models, default model
    GET  /api/fields               attribute groups for the filter UI, filterable fields
    GET  /api/thumb/{model}/{id}   JPEG crop of a stored face, looked up by primary key

Security: the client never sends a path. An upload is checked for size (413, counted while the
body streams in, so a lying or absent Content-Length does not help) and for an image signature
(415) before it is decoded; decoding refuses images over ingest.images.MAX_PIXELS. Filters go
through schemas.filters.compile_filter (inside Searcher.search_photo). A thumbnail is cropped from
the `source_path` of the row whose primary key is asked for: only files the collection points to
are ever opened. Model names are checked against the database's collections.
"""
from __future__ import annotations

import base64
import io
import os
import re
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 15 * 1024 * 1024
# multipart overhead allowed on top of the file (boundaries, the option fields)
_FORM_OVERHEAD = 64 * 1024
PREVIEW_SIDE = 1600  # longest side of the query photo preview sent back (JPEG data URL)
THUMB_SIDE = 160  # longest side of a match thumbnail
WEB_TOP_K_MAX = 50  # matches per face the page can show; the CLI allows more
FACE_ID = re.compile(r"^[0-9a-f]{64}_[0-9]{1,5}$")

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


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


class _BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, from Content-Length
    when given, else while the body streams in (chunked uploads)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        cl = headers.get(b"content-length")
        too_large = _error(413, "too_large", f"upload larger than {self.limit // (1024 * 1024)} MB")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                return await _error(400, "bad_request", "invalid Content-Length")(scope, receive, send)
            if n > self.limit:
                return await too_large(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    # raised inside the route's body parsing: FastAPI re-raises its HTTPException
                    raise HTTPException(413, "too_large")
            return msg

        return await self.app(scope, limited, send)


class _State:
    """The one Searcher and its lock (Milvus Lite: one client per process)."""

    def __init__(self, settings: Settings, searcher=None, explicit_sources=()):
        self.settings = settings
        self.searcher = searcher
        self.own = searcher is None
        self.explicit_sources = explicit_sources
        self.lock = threading.Lock()
        self._thumbs: Dict[tuple, bytes] = {}

    def open(self, warm: bool) -> None:
        from query.results import QueryError
        from query.search import Searcher

        if self.searcher is None:
            self.searcher = Searcher(self.settings, explicit_sources=self.explicit_sources)
        if warm:
            with self.lock:
                try:
                    models = self.searcher.resolve_models(None)
                except QueryError:
                    return  # empty database: the page says so
                self.searcher.engine(models)

    def close(self) -> None:
        if self.own and self.searcher is not None:
            self.searcher.close()
            self.searcher = None

    def thumb(self, key: tuple, make) -> Optional[bytes]:
        if key not in self._thumbs:
            data = make()
            if data is None:
                return None
            if len(self._thumbs) >= 2048:
                self._thumbs.pop(next(iter(self._thumbs)))
            self._thumbs[key] = data
        return self._thumbs[key]


def _field_of(message: str) -> Optional[str]:
    """The field a filter error names, for the page to highlight."""
    m = re.search(r"unknown field '([^']*)'", message) or re.search(r"'([A-Za-z_][A-Za-z0-9_]*)'", message)
    return m.group(1) if m else None


def _display_name(name: Optional[str]) -> str:
    """The upload's file name for display only (never used as a path)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(c for c in base if c.isprintable())[:120].strip()
    return base or "upload"


def _preview(decoded) -> str:
    from PIL import Image

    im = Image.fromarray(decoded.rgb)
    if max(im.size) > PREVIEW_SIDE:
        r = PREVIEW_SIDE / max(im.size)
        im = im.resize((max(1, round(im.width * r)), max(1, round(im.height * r))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def create_app(settings: Optional[Settings] = None, *, searcher=None, warm: bool = True,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, explicit_sources=()) -> FastAPI:
    """The web app. `searcher`: an open query.search.Searcher to use (its owner closes it);
    otherwise one is created at startup over `settings` and closed at shutdown. `warm` loads the
    default model's detector and embedder at startup, so the first query is as fast as the rest."""
    from ingest.images import ImageError
    from ingest.store import StoreError
    from ingest.quality import DEFAULT_MIN_QUALITY
    from query.errors import classify
    from query.results import DEFAULT_TOP_K, QueryError, results_document
    from schemas import ATTRIBUTES, FACE_FIELDS, collection_name
    from schemas.filters import FILTERABLE, FilterError, compile_filter

    settings = settings or Settings()
    state = _State(settings, searcher, explicit_sources)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.open(warm)
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="Lookalike", version="1", lifespan=lifespan,
                  description="Find the stored faces most like each face of a photo. The same "
                              "Python API as `lookalike query` (query.search.Searcher).")
    app.state.lookalike = state
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + _FORM_OVERHEAD)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            return _error(413, "too_large", f"upload larger than {max_upload_bytes // (1024 * 1024)} MB")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
            parts.append(f"{loc}: {e.get('msg')}")
        return _error(422, "invalid_request", "; ".join(parts) or "invalid request")

    def _searcher():
        if state.searcher is None:
            raise ApiError(503, "not_ready", "the server is starting")
        return state.searcher

    # -- page ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    # -- API -------------------------------------------------------------------------------------
    @app.get("/api/stats", summary="Collections in the database", tags=["api"])
    def stats() -> Dict[str, Any]:
        s = _searcher()
        try:
            with state.lock:
                cols = s.store.stats()
                models = s.store.models()
                try:
                    default = s.resolve_models(None)[0]
                except QueryError:
                    default = None
                # attribute filters mean something only where some faces carry CelebA attributes
                annotated = s.store.count(collection_name(default), compile_filter("has_attributes == true")) \
                    if default else 0
        except StoreError as e:
            raise ApiError(503, "store_error", str(e)) from None
        where = settings.uri or Path(settings.db).name
        return {"database": where, "detector": settings.detector,
                "collections": [c.__dict__ for c in cols], "models": models, "default_model": default,
                "top_k": {"default": DEFAULT_TOP_K, "max": WEB_TOP_K_MAX}, "annotated_faces": annotated,
                "min_quality": {"default": DEFAULT_MIN_QUALITY},
                "max_upload_bytes": max_upload_bytes}

    @app.get("/api/fields", summary="Fields filters may use, attributes grouped", tags=["api"])
    def fields() -> Dict[str, Any]:
        return {"attribute_groups": ATTRIBUTE_GROUPS, "attributes": list(ATTRIBUTES),
                "fields": [{"name": f.name, "kind": f.kind, "doc": f.doc} for f in FACE_FIELDS
                           if f.name in FILTERABLE]}

    @app.post("/api/query", summary="Find lookalikes for every face of a photo", tags=["api"],
              responses={400: {"description": "bad option (k, unknown model)"},
                         413: {"description": "upload too large"},
                         415: {"description": "not an image type we decode"},
                         422: {"description": "invalid filter (names the field) or unreadable image"}})
    def query(image: UploadFile = File(..., description="the photo (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF)"),
              model: Optional[str] = Form(None, description="model collection, e.g. dlib (default: the database's default)"),
              k: int = Form(DEFAULT_TOP_K, ge=1, le=WEB_TOP_K_MAX, description=f"matches per face, 1..{WEB_TOP_K_MAX}"),
              filter: Optional[str] = Form(None, description="filter expression, e.g. Smiling == true and Male == false"),
              where: List[str] = Form([], description="boolean fields that must be true"),
              where_not: List[str] = Form([], description="boolean fields that must be false"),
              exclude_same_image: bool = Form(False, description="never return faces of this very photo"),
              min_quality: Optional[float] = Form(None, description="leave out stored faces below this quality, "
                                                  "0..1 (default 0.4; 0 keeps every face)"),
              ) -> Dict[str, Any]:
        s = _searcher()
        t0 = time.perf_counter()
        # size first (the middleware bounds the body; this bounds the file itself), then signature
        f = image.file
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(0)
        if size > max_upload_bytes:
            raise ApiError(413, "too_large", f"upload larger than {max_upload_bytes // (1024 * 1024)} MB")
        if size == 0:
            raise ApiError(422, "unreadable", "empty file (0 bytes)")
        head = f.read(32)
        kind = sniff_image(head)
        if kind is None:
            raise ApiError(415, "unsupported_type", "not an image this app reads (JPEG, PNG, WebP, GIF, "
                                                    "BMP, TIFF, HEIC or AVIF)")
        if model is not None and model.strip() and model.strip() not in ("all",):
            with state.lock:
                present = s.store.models()
            names = [m.strip() for m in model.split(",") if m.strip()]
            bad = [m for m in names if m not in present]
            if bad:
                raise ApiError(400, "unknown_model", f"no collection for model '{bad[0]}' in this database "
                                                     f"(models: {', '.join(present) or 'none'})")
        name = _display_name(image.filename)
        f.seek(0)
        data = f.read()  # bounded above; the client's file name is only displayed
        try:
            with state.lock:
                r = s.search_photo(data, name=name, model=model or None, top_k=k, filter=filter or None,
                                   where=where, where_not=where_not, exclude_same_image=exclude_same_image,
                                   keep_image=True, min_quality=min_quality)
        except Exception as e:  # noqa: BLE001 - the shared table (query/errors.py) decides
            kind = classify(e)
            if kind is None:
                raise
            msg = str(e)
            if isinstance(e, ImageError):
                msg = "cannot read this image: " + (msg[len(name):].lstrip(": ") if msg.startswith(name) else msg)
            extra = {"field": _field_of(msg)} if isinstance(e, FilterError) else {}
            raise ApiError(kind.http_status, kind.api_code, msg, **extra) from None
        del data
        preview = _preview(r.image) if r.image is not None else None
        doc = results_document([r])
        return {"version": doc["version"], "photo": doc["photos"][0], "preview": preview,
                "seconds": round(time.perf_counter() - t0, 4)}

    @app.get("/api/thumb/{model}/{face_id}", summary="Crop of a stored face (JPEG)", tags=["api"],
             response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no such face"}})
    def thumb(model: str, face_id: str):
        from query.render import source_crop

        s = _searcher()
        if not FACE_ID.match(face_id):
            raise ApiError(404, "not_found", "no such face")
        with state.lock:
            try:
                present = s.store.models()
                if model not in present:
                    raise ApiError(404, "not_found", f"no collection for model '{model}'")
                rows = s.store.get(model, [face_id], output_fields=[
                    "id", "source_path", "box_x", "box_y", "box_w", "box_h"])
            except StoreError as e:
                raise ApiError(503, "store_error", str(e)) from None
        if not rows:
            raise ApiError(404, "not_found", "no such face")
        row = rows[0]
        box = (int(row["box_x"]), int(row["box_y"]), int(row["box_w"]), int(row["box_h"]))
        # a little context around the face box looks better in a thumbnail
        x, y, w, h = box
        pad = round(0.15 * max(w, h))
        padded = (max(0, x - pad), max(0, y - pad), w + 2 * pad, h + 2 * pad)

        def make() -> Optional[bytes]:
            from PIL import Image

            crop = source_crop(str(row["source_path"]), padded)
            if crop is None:
                return None
            crop.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR)
            buf = io.BytesIO()
            crop.save(buf, "JPEG", quality=85)
            return buf.getvalue()

        data = state.thumb((model, face_id), make)
        if data is None:
            raise ApiError(404, "not_found", "the source image of this face is missing or unreadable")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app
