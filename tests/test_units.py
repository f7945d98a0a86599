"""Unit tests of the user-facing layer that need no sample data, no models and no database: they
run wherever the package is installed (conftest collects only these modules without the data)."""
from __future__ import annotations

import pytest

from lookalike.ingest.settings import DETECTORS, Settings, SettingsError
from lookalike.query.app.errors import EXIT_STORE, EXIT_UNREADABLE, EXIT_USAGE, EXIT_WEIGHTS, UsageError, classify
from lookalike.query.results import Document, Match, PhotoResult, QueryFace, check_min_quality, check_top_k


# -- settings ------------------------------------------------------------------------------------
def test_settings_read_the_environment_and_validate_once(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_DETECTOR", "opencv")
    monkeypatch.setenv("LOOKALIKE_DB", "")  # empty: the default, as an unset variable
    monkeypatch.setenv("DEEPFACE_HOME", "/tmp/dfh")
    monkeypatch.setenv("LOOKALIKE_MILVUS_RETRIES", "3")
    s = Settings()
    assert (s.detector, s.db, s.deepface_home, s.milvus_retries) == ("opencv", "lookalike.db", "/tmp/dfh", 3)
    assert s.with_(db="x.db", uri=None).db == "x.db" and s.with_() is s
    assert s.with_(uri="http://h:19530", db="not-a-lite-path").target == "http://h:19530"


@pytest.mark.parametrize("change, needle", [
    ({"detector": "nope"}, "--detector / $LOOKALIKE_DETECTOR: unknown detector 'nope'"),
    ({"db": "mydb"}, "--db / $LOOKALIKE_DB: mydb: a Milvus Lite database path must end in .db"),
    ({"profile": "fast"}, "--profile / $LOOKALIKE_PROFILE: unknown index profile 'fast'"),
    ({"milvus_retries": -1}, "$LOOKALIKE_MILVUS_RETRIES"),
    ({"dlib_engine": "gpu"}, "unknown dlib engine 'gpu'"),
    ({"yunet_threshold": 1.5}, "$LOOKALIKE_YUNET_THRESHOLD"),
])
def test_a_bad_setting_is_one_line_naming_it(change, needle):
    with pytest.raises(SettingsError) as e:
        Settings().with_(**change)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert _kind(e.value).exit_code == EXIT_USAGE


def _kind(exc: BaseException):
    """classify() of a product error: never None."""
    kind = classify(exc)
    assert kind is not None, f"{type(exc).__name__} is not classified as a product error"
    return kind


def test_settings_detectors_are_the_models_detectors():
    from lookalike.ingest import models

    assert models.DETECTORS is DETECTORS


def test_cli_profile_choices_are_the_declared_profiles():
    from lookalike.query.app.options import PROFILE_NAMES
    from lookalike.schemas import PROFILES

    assert set(PROFILE_NAMES) == set(PROFILES)


@pytest.mark.parametrize("command", ["ingest", "query"])
def test_cli_model_lists_and_source_flags_come_from_the_model_declaration(command):
    """Adding a model to schemas.MODELS adds it to --models/--model and, where its weights are named
    by a hub id or folder, adds its --<source setting> flag: no hand-kept list."""
    from click.testing import CliRunner

    from lookalike.query.app.cli import cli
    from lookalike.schemas import MODELS

    out = " ".join(CliRunner().invoke(cli, [command, "--help"], terminal_width=400).output.split())
    assert all(name in out for name in MODELS), out
    for spec in MODELS.values():
        if spec.source_setting:
            assert f"--{spec.source_setting.replace('_', '-')} ID_OR_DIR" in out
            assert spec.default_source in out


# -- errors carry their codes --------------------------------------------------------------------
def test_error_table_gives_exit_code_and_http_status():
    from lookalike.ingest.store import StoreError
    from lookalike.schemas.filters import FilterError, compile_filter

    with pytest.raises(FilterError) as fe:
        compile_filter("Smilng == true")
    assert (_kind(fe.value).exit_code, _kind(fe.value).http_status) == (EXIT_USAGE, 422)
    assert (_kind(StoreError("x")).exit_code, _kind(StoreError("x")).http_status) == (EXIT_STORE, 503)
    assert _kind(UsageError("x", exit_code=EXIT_WEIGHTS)).exit_code == EXIT_WEIGHTS
    assert classify(RuntimeError("a bug")) is None  # not a product error: it must show


@pytest.mark.parametrize("module, name, kind", [
    ("lookalike.ingest.settings", "SettingsError", (EXIT_USAGE, 400, "bad_setting")),
    ("lookalike.schemas.filters", "FilterError", (EXIT_USAGE, 422, "invalid_filter")),
    ("lookalike.schemas", "UnknownName", (EXIT_USAGE, 400, "unknown_model")),
    ("lookalike.query.results", "QueryError", (EXIT_USAGE, 400, "bad_option")),
    ("lookalike.query.explain", "ExplainError", (EXIT_USAGE, 400, "bad_option")),
    ("lookalike.query.evaluation", "EvalError", (EXIT_USAGE, 400, "bad_request")),
    ("lookalike.ingest.pipeline", "IngestError", (EXIT_USAGE, 400, "bad_request")),
    ("lookalike.ingest.erase", "DeleteError", (EXIT_USAGE, 400, "bad_request")),
    ("lookalike.ingest.sources", "SourceError", (EXIT_USAGE, 400, "bad_request")),
    ("lookalike.query.app.errors", "UsageError", (EXIT_USAGE, 400, "bad_request")),
    ("lookalike.ingest.images", "ImageError", (EXIT_UNREADABLE, 422, "unreadable")),
    ("lookalike.ingest.analysis", "AnalysisError", (EXIT_UNREADABLE, 422, "unreadable")),
    ("lookalike.ingest.models", "WeightsMissing", (EXIT_WEIGHTS, 503, "weights_missing")),
    ("lookalike.ingest.models", "ModelError", (EXIT_WEIGHTS, 503, "model_error")),
    ("lookalike.ingest.store", "StoreError", (EXIT_STORE, 503, "store_error")),
])
def test_each_product_error_carries_its_exit_code_http_status_and_api_code(module, name, kind):
    """What each door answers for each product error: the exception carries it (schemas/errors.py)."""
    import importlib

    from lookalike.query.app.errors import ErrorKind

    cls = getattr(importlib.import_module(module), name)
    assert classify(cls("x")) == ErrorKind(*kind), (module, name)


# -- the command line without a database ---------------------------------------------------------
def test_cli_help_and_usage_errors(capsys):
    from lookalike.query.app.cli import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("ingest", "query", "serve", "stats", "delete", "eval", "fields", "train-head"):
        assert command in out
    assert main(["query", "--help"]) == 0 and "--min-quality" in capsys.readouterr().out
    assert main(["query"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PHOTO_OR_FOLDER" in err and "lookalike query --help" in err
    assert main(["query", "x.jpg", "-k", "0"]) == 2
    assert "'--top-k': 0 is not in the range" in capsys.readouterr().err
    assert main(["stats", "--db", "nodotdb"]) == 2
    assert capsys.readouterr().err.strip() == (
        "lookalike: --db / $LOOKALIKE_DB: nodotdb: a Milvus Lite database path must end in .db (e.g. nodotdb.db); "
        "a server is --uri http://host:19530")


def test_cli_modules_do_not_import_the_cli():
    """No import cycle: the command modules use query.app.options and query.app.errors, never query.app.cli."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "query"
    for path in (root / "app").glob("*.py"):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "lookalike.query.app.cli" not in imported, path.name
    search = (root / "search.py").read_text()
    assert "from lookalike.query.explain" not in search.split("def search_photo(photo")[0]  # the Searcher does not explain


# -- result models -------------------------------------------------------------------------------
def _result(models=("dlib",)) -> PhotoResult:
    m = Match.from_row(1, 0.95, {"id": "ab_0", "identity": "obama", "quality": 0.9, "face_size": 80})
    face = QueryFace(index=0, box=(1, 2, 3, 4), confidence=0.9, quality=0.8,
                     matches_by_model={name: [m] for name in models})
    return PhotoResult(path="p.jpg", sha256="s", width=10, height=10, detector="yunet", models=list(models),
                       top_k=1, faces=[face], timings={"total": 0.1})


@pytest.mark.parametrize("models", [("dlib",), ("dlib", "dinov2")])
def test_results_round_trip_through_json(models):
    doc = Document(photos=[_result(models)]).model_dump(mode="json")
    face = doc["photos"][0]["faces"][0]
    assert ("matches_by_model" in face) == (len(models) > 1)  # one model: written once, as matches
    assert "dbox" not in face and "image" not in doc["photos"][0] and "explanations" not in face["matches"][0]
    back = Document.model_validate(doc)
    assert back.model_dump(mode="json") == doc
    assert list(back.photos[0].faces[0].matches_by_model) == list(models)


def test_unknown_attributes_are_null_and_the_verdict_follows_the_gallery_size():
    from lookalike.schemas import VERDICTS

    v = VERDICTS["dlib"]
    small = Match.from_row(1, 0.93, {"id": "a_0", "has_attributes": False}, v, searched=10)
    large = Match.from_row(1, 0.93, {"id": "a_0", "has_attributes": False}, v, searched=100_000)
    assert all(val is None for val in small.attributes.values())
    assert small.same_person is True and large.same_person is False
    assert small.same_person_probability is not None and large.same_person_probability is not None
    assert small.same_person_probability > 0.5 > large.same_person_probability


def test_option_checks_name_the_python_parameter():
    from lookalike.query.results import QueryError

    assert check_top_k("7") == 7 and check_min_quality(None) == pytest.approx(0.4)
    for bad, fn in (("0", check_top_k), ("x", check_top_k), (2, check_min_quality), ("nan", check_min_quality)):
        with pytest.raises(QueryError) as e:
            fn(bad)
        assert "--" not in str(e.value)


def test_python_twins_take_settings_or_keywords_not_both():
    from lookalike import ingest
    from lookalike.ingest.settings import resolve

    s = resolve(None, db="a.db")
    assert s.db == "a.db" and resolve(s) is s
    with pytest.raises(TypeError, match=r"give settings or db= not both"):
        resolve(s, db="b.db")
    with pytest.raises(TypeError, match="not both"):
        ingest.run("nowhere", settings=s, db="b.db")


def test_pair_calibration_meets_its_false_accept_rate():
    import numpy as np

    from lookalike.query.evaluation import verdict_calibration

    rng = np.random.default_rng(1)
    pos, neg = rng.normal(0.95, 0.01, 500), rng.normal(0.85, 0.02, 2000)
    cal = verdict_calibration(np.concatenate([pos, neg]), [True] * 500 + [False] * 2000, far=0.01)
    assert cal is not None
    assert cal["far"] <= 0.01 and cal["tar"] > 0.95
    a, b = cal["logistic"]
    assert a > 0 and 0.85 < -b / a < 0.95  # P(same) = 50 % between the two populations


# -- the ingest runner's batches -----------------------------------------------------------------
def _old_batches(todo: list, size: int) -> list:
    """The batching as specified: full batches, then the last 4 x size items in batches of <= 8."""
    size = max(1, size)
    cut = max(0, len(todo) - 4 * size)
    head = [todo[i:min(i + size, cut)] for i in range(0, cut, size)]
    small = min(size, 8)
    return head + [todo[cut:][i:i + small] for i in range(0, len(todo) - cut, small)]


@pytest.mark.parametrize("n, size, cuts", [
    (0, 16, []), (5, 16, [2]), (100, 16, [0, 1, 63, 64, 99]), (1000, 16, [4096]), (333, 1, [7, 8]),
    (200, 16, list(range(0, 200, 3))),
])
def test_batches_do_not_depend_on_how_the_skip_pass_chunks_the_records(n, size, cuts):
    """The skip pass hands the records over in chunks as it finds them: the batches are the same
    as for the whole list at once (the tail in small batches)."""
    from lookalike.ingest.pipeline.reader import _batches

    items = list(range(n))
    bounds = [0, *sorted(c for c in cuts if c <= n), n]
    chunks = [items[a:b] for a, b in zip(bounds, bounds[1:])]
    assert list(_batches(chunks, size)) == _old_batches(items, size) == list(_batches([items], size))


def test_the_skip_pass_hands_over_chunks_as_found_and_raises_its_error_in_the_run():
    import threading

    from lookalike.ingest.pipeline.reader import _Pending

    gate = threading.Event()

    def find():
        yield [1, 2]
        gate.wait(5)  # the reader has the first chunk before the search goes on
        yield []
        yield [3]

    p = _Pending(find)
    chunks = p.chunks()
    assert next(chunks) == [1, 2] and p.total is None
    gate.set()
    assert list(chunks) == [[3]] and p.total == 3

    def broken():
        yield [1]
        raise RuntimeError("the ledger could not be read")

    p = _Pending(broken)
    with pytest.raises(RuntimeError, match="ledger could not be read"):
        list(p.chunks())


def test_the_skip_pass_pauses_once_it_has_found_work_until_the_workers_are_ready():
    import threading

    from lookalike.ingest.pipeline.reader import _Pending

    went_on = threading.Event()

    def find():
        yield [1]
        went_on.set()
        yield [2]

    p = _Pending(find)
    while p._queue.empty():  # the first chunk found (a reader waiting on an empty queue lets it go on)
        went_on.wait(0.01)
    assert next(p.chunks()) == [1]
    assert not went_on.wait(0.3)  # paused: the workers are still loading their models
    p.go()
    assert went_on.wait(5)
    p.wait()
    assert p.total == 2


def test_the_progress_bar_shows_face_counts_in_full():
    """tqdm writes a number in its shortest form: 50,000 faces showed as "faces=5e+4"."""
    import io

    from tqdm import tqdm

    from lookalike.ingest.pipeline import IngestSummary
    from lookalike.ingest.pipeline.driver import _postfix

    out = io.StringIO()
    bar = tqdm(total=10, file=out)
    _postfix(bar, IngestSummary("s", ["dlib"], "yunet", faces_stored=50000, images_failed=100000))
    bar.update(1)
    bar.close()
    assert "faces=50000, failed=100000" in out.getvalue()
