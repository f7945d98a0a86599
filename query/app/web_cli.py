"""`lookalike serve`: the web app (query/web.py) on uvicorn."""
from __future__ import annotations

import errno
import ipaddress
import socket

import click

from lookalike.query.app.errors import EXIT_OK, UsageError
from lookalike.query.app.options import detector_option, existing_db, settings_for, storage_options
from lookalike.schemas.errors import require

SERVE_EPILOG = """
The page is at http://HOST:PORT/ ; the JSON API is documented at /docs (OpenAPI at /openapi.json):
  POST /api/query                 multipart: image, model, k, filter, where, where_not
  GET  /api/stats                 collections, models
  GET  /api/thumb/MODEL/FACE_ID   JPEG crop of a stored face
  GET  /api/photo/MODEL/FACE_ID   the stored face's whole photo (JPEG, the face outlined)
  POST /api/sheet                 result_id (from /api/query): that search's contact sheet (PNG)
Server paths never leave the server: a match's source_path is its file name.


The server binds 127.0.0.1 by default. Binding another address exposes the database's photos to
whoever can reach it; there is no authentication. The camera button needs a secure context:
localhost works, another host needs HTTPS (e.g. behind a reverse proxy).
One Milvus Lite database can be opened by one process: stop other lookalike commands on it first.
"""


def _check_port_free(host: str, port: int) -> None:
    """Fail before loading anything, and before saying "serving", when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(f"--port {port}: address {host}:{port} is already in use "
                                 f"(another lookalike serve?); choose another with --port") from None
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None


@click.command("serve", epilog=SERVE_EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (this machine only by default)")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@detector_option("; use the one the collection was ingested with")
@click.option("--max-upload-mb", type=click.FloatRange(0, 1024, min_open=True), default=15.0, show_default=True,
              help="largest accepted upload")
@click.option("--no-warm", is_flag=True, help="load the models on the first query, not at start")
@storage_options
def serve(host, port, detector, max_upload_mb, no_warm, db, uri, token, profile) -> int:
    """Start the web app: upload or snap a photo, see each face's lookalikes."""
    for module in ("fastapi", "uvicorn", "python_multipart"):  # before anything is announced or opened
        require(module, "web", "lookalike serve")
    settings = existing_db(settings_for(db=db, uri=uri, token=token, profile=profile, detector=detector))
    _check_port_free(host, port)
    import uvicorn

    from lookalike.query.app.web import create_app

    try:
        public = not ipaddress.ip_address(host).is_loopback
    except ValueError:
        public = host != "localhost"
    if public:
        click.echo(f"lookalike: warning: binding {host} exposes the app (and the stored photos) without authentication")
    from lookalike.query.search import Searcher

    # The database is opened before anything is announced: one in use by another process (Milvus
    # Lite: one at a time) is one line and exit 6, as for query and stats, not a traceback.
    with Searcher(settings) as searcher:
        app = create_app(settings, searcher=searcher, warm=not no_warm,
                         max_upload_bytes=int(max_upload_mb * 1024 * 1024))
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"lookalike: serving {settings.target} on http://{shown}:{port}/ (API docs at /docs; Ctrl-C stops)")
        uvicorn.run(app, host=host, port=port, log_level="warning")
    return EXIT_OK
