"""How a file's name is kept: its bytes tell two files apart (the ledger's key), its text is what
Milvus can store and a person can read."""
from __future__ import annotations

import hashlib


def path_bytes(path: str) -> bytes:
    """The file name's own bytes (os.fsencode's): what tells two files apart."""
    try:
        return path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (not from a file system)
        return path.encode("utf-8", "surrogatepass")


def storable(path: str) -> str:
    """A path as Milvus can store it (valid UTF-8) and a person can read. A valid UTF-8 name is
    itself; in a name that is not, undecodable bytes become `\\xNN` and backslashes `\\\\`, so
    two such names never read alike. (A valid name may still read like an escaped one: the
    ledger tells files apart by `_ledger_id`, from the bytes, never by this text.)"""
    raw = path_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


MAX_PATH_BYTES = 2048  # schemas: source_path VARCHAR(2048)


def ledger_path(path: str) -> str:
    """A path as the ledger stores it (`source_path`): storable, cut to the field's size if it
    must be. Display only: the ledger's key is `_ledger_id`."""
    s = storable(path)
    b = s.encode("utf-8")
    return s if len(b) <= MAX_PATH_BYTES else b[:MAX_PATH_BYTES].decode("utf-8", "ignore")


def _ledger_id(model: str, path: str) -> str:
    """A file's key in the ledger: from the bytes of its name, so two names are two keys whatever
    they hold (a valid UTF-8 name's bytes are its UTF-8: the ids of existing databases)."""
    return f"{model}:{hashlib.sha1(path_bytes(path)).hexdigest()}"
