"""Shared fixtures: sample data location, an isolated DeepFace weights dir, settings."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Tuple

import pytest

# The real Milvus server's fixtures (milvus_server, milvus_server_process, server_uri).
from milvus_server import milvus_server, milvus_server_process, server_uri  # noqa: E402,F401

from lookalike.ingest.settings import Settings, default_data_dir

DATA = default_data_dir()


DATA_PRESENT = (DATA / "celeba").is_dir()
# Modules whose tests need no sample data (their few that do are marked needs_data): they run
# wherever the package is installed.
UNIT_MODULES = {"test_units.py", "test_schemas.py", "test_filters.py"}


def pytest_configure(config):
    if not DATA_PRESENT and os.environ.get("LOOKALIKE_REQUIRE_DATA"):
        raise pytest.UsageError(
            f"sample data not found at {DATA}; set LOOKALIKE_DATA to the shared data folder")


def pytest_report_header(config):
    if not DATA_PRESENT:
        return f"sample data not found at {DATA}: only the unit tests run (set LOOKALIKE_DATA)"
    return None


def pytest_ignore_collect(collection_path, config):
    # Without the sample data the other modules cannot even be imported (they list its files).
    name = collection_path.name
    if not DATA_PRESENT and name.startswith("test_") and name.endswith(".py") and name not in UNIT_MODULES:
        return True
    return None


def pytest_collection_modifyitems(config, items):
    if DATA_PRESENT:
        return
    skip = pytest.mark.skip(reason=f"needs the sample data ({DATA}); set LOOKALIKE_DATA")
    for item in items:
        if "needs_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session", autouse=True)
def deepface_home(tmp_path_factory) -> Path:
    """A DeepFace home of the test session's own: weights are linked in from packages and the
    sample data by the product's provisioning code, exactly as on a user's machine."""
    home = Path(os.environ.get("LOOKALIKE_TEST_DEEPFACE_HOME") or tmp_path_factory.mktemp("deepface_home"))
    os.environ["DEEPFACE_HOME"] = str(home)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return home


@pytest.fixture(scope="session")
def settings(deepface_home) -> Settings:
    return Settings(deepface_home=str(deepface_home), data_dir=DATA)


def read_rows(db: Path | str, model: str, with_vectors: bool = True) -> dict:
    """Every row of a model's collection keyed by id, ingest time left out (it differs by run)."""
    from lookalike.ingest.store import Store
    from lookalike.schemas import OUTPUT_FIELDS, collection_name

    fields = [f for f in OUTPUT_FIELDS if f != "ingested_at"] + (["vector"] if with_vectors else [])
    with Store(str(db)) as store:
        return {r["id"]: r for r in store.iterate(collection_name(model), fields)}


def read_ledger(db: Path | str) -> dict:
    from lookalike.ingest.store import Store
    from lookalike.schemas import LEDGER_COLLECTION

    with Store(str(db)) as store:
        return {r["source_path"]: r for r in store.iterate(
            LEDGER_COLLECTION, ["source_path", "status", "faces", "reason", "image_sha256", "model"])}


def wait_for_progress(proc, total: int, at_least: int, timeout: float = 300.0) -> Tuple[int, str]:
    """Read the progress bar a running ingest writes to its stderr (a text pipe) until it shows at
    least `at_least` of `total` images. Returns the count shown (0 when the run ended or the time
    ran out first) and the stderr read so far."""
    buf = ""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ch = proc.stderr.read(1)
        if not ch:
            break
        buf += ch
        seen = re.findall(rf"(\d+)/{total}\b", buf[-80:])
        if seen and int(seen[-1]) >= at_least:
            return int(seen[-1]), buf
    return 0, buf
