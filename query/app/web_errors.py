"""The web app's errors and request limits: product errors answered with the status they carry,
the app's own refusals (ApiError), FastAPI's validation and HTTP errors, all as
{"error": {"code", "message", ...}}; and the body-size limit (413) enforced while a body streams in.

Messages are the product's own, written for both doors (schemas/errors.py); the API adds only
where its users find the fields (query/app/errors.door_message) and leaves the database's folder
out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike.query.app.errors import ErrorKind, classify, door_message
from lookalike.schemas.filters import FilterError


class ApiError(Exception):
    """A refusal of the web app's own (size, type, no such face, starting): its HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def too_large(limit: int) -> str:
    return f"upload larger than {limit // (1024 * 1024)} MB"


def api_message(message: str, db: Optional[str] = None) -> str:
    """A product error's message for the API: the database's folder left out (server paths stay
    on the server)."""
    if db:
        for shown in {str(Path(db).resolve()), db}:
            message = message.replace(shown, Path(db).name)
    return message


def product_error(exc: BaseException, kind: ErrorKind, db: Optional[str] = None) -> JSONResponse:
    """The API's answer to a product exception, with the status the exception carries; a filter
    error names its field (if any) for the page to mark."""
    message = api_message(door_message(exc, "web"), db)
    extra = {"field": exc.field} if isinstance(exc, FilterError) else {}
    return error_response(kind.http_status, kind.api_code, message, **extra)


class ClassifiedRoute(APIRoute):
    """A route whose product exceptions (LookalikeError) answer with the status and code they
    carry; anything else (a bug) propagates as a 500."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def classified(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as e:  # noqa: BLE001 - product errors answered, anything else re-raised
                kind = classify(e)
                if kind is None:
                    raise
                svc = getattr(request.app.state, "lookalike", None)
                return product_error(e, kind, svc.settings.db if svc and not svc.settings.uri else None)

        return classified


def install_error_handlers(app: FastAPI, max_upload_bytes: int) -> None:
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, **exc.extra)

    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            return error_response(413, "too_large", too_large(max_upload_bytes))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    async def validation_error(request: Request, exc: RequestValidationError):
        parts, fields = [], []
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ())[1:]]
            parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg')}")
            fields.append(loc[0] if loc else None)
        extra = {"field": fields[0]} if fields and fields[0] else {}
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request", **extra)

    # Starlette types handlers for Exception; each of these takes its own subclass.
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, from Content-Length
    when given, else while the body streams in (chunked uploads)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        cl = headers.get(b"content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                return await error_response(400, "bad_request", "invalid Content-Length")(scope, receive, send)
            if n > self.limit:
                return await error_response(413, "too_large", too_large(self.limit))(scope, receive, send)
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
