"""`lookalike serve`: registered into the CLI by query/cli.py (register(sub, storage_args, settings_fn))."""
from __future__ import annotations

import argparse
import ipaddress

SERVE_HELP = "start the web app: upload or snap a photo, see each face's lookalikes"

SERVE_EPILOG = """\
The page is at http://HOST:PORT/ ; the JSON API is documented at /docs (OpenAPI at /openapi.json):
  POST /api/query                 multipart: image, model, k, filter, where, where_not
  GET  /api/stats                 collections, models
  GET  /api/thumb/MODEL/FACE_ID   JPEG crop of a stored face

The server binds 127.0.0.1 by default. Binding another address exposes the database's photos to
whoever can reach it; there is no authentication. The camera button needs a secure context:
localhost works, another host needs HTTPS (e.g. behind a reverse proxy).
One Milvus Lite database can be opened by one process: stop other lookalike commands on it first.
"""


def register(sub, storage_args, settings_fn) -> None:
    p = sub.add_parser("serve", help=SERVE_HELP, description=SERVE_HELP.capitalize() + ".",
                       epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--detector", default=None,
                   help="DeepFace detector backend (default yunet, or $LOOKALIKE_DETECTOR); use the "
                        "one the collection was ingested with")
    p.add_argument("--max-upload-mb", type=float, default=15.0, help="largest accepted upload (default 15 MB)")
    p.add_argument("--no-warm", action="store_true", help="load the models on the first query, not at start")
    storage_args(p)
    p.set_defaults(func=lambda args: cmd_serve(args, settings_fn))


def cmd_serve(args, settings_fn) -> int:
    from query.cli import EXIT_OK, CliError
    from query.commands import existing_db_settings

    settings = existing_db_settings(args, settings_fn)
    if not 0 < args.port < 65536:
        raise CliError(f"--port must be between 1 and 65535, got {args.port}")
    if not 0 < args.max_upload_mb <= 1024:
        raise CliError(f"--max-upload-mb must be between 0 and 1024, got {args.max_upload_mb}")
    try:
        import uvicorn

        from query.web import create_app
    except ImportError as e:  # pragma: no cover - declared dependencies
        raise CliError(f"the web app needs fastapi, uvicorn and python-multipart ({e})") from None
    try:
        public = not ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        public = args.host != "localhost"
    if public:
        print(f"lookalike: warning: binding {args.host} exposes the app (and the stored photos) "
              f"without authentication")
    app = create_app(settings, warm=not args.no_warm, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"lookalike: serving {settings.uri or settings.db} on http://{shown}:{args.port}/ "
          f"(API docs at /docs; Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK
