"""schemas/filters.py: validation, templating, rendering, and escaping against a real Milvus Lite."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike.schemas import ATTRIBUTES, FACE_FIELDS
from lookalike.schemas.filters import FILTERABLE, CompiledFilter, FilterError, combine, compile_filter, encode_literal


# ---------------------------------------------------------------------------------------------
# Valid expressions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("expr, row_true, row_false", [
    ("Smiling == true", {"Smiling": True}, {"Smiling": False}),
    ("Smiling", {"Smiling": True}, {"Smiling": False}),
    ("not Wearing_Hat", {"Wearing_Hat": False}, {"Wearing_Hat": True}),
    ("!Wearing_Hat", {"Wearing_Hat": False}, {"Wearing_Hat": True}),
    ("Smiling and not Eyeglasses", {"Smiling": True, "Eyeglasses": False}, {"Smiling": True, "Eyeglasses": True}),
    ("Smiling && Eyeglasses || Male", {"Smiling": False, "Eyeglasses": False, "Male": True},
     {"Smiling": True, "Eyeglasses": False, "Male": False}),
    ('identity in ["2880", "4262"]', {"identity": "4262"}, {"identity": "1"}),
    ('identity not in ["2880", "4262"]', {"identity": "1"}, {"identity": "2880"}),
    ("box_w >= 100 and confidence > 0.5", {"box_w": 100, "confidence": 0.9}, {"box_w": 99, "confidence": 0.9}),
    ('source_path like "%celeba%"', {"source_path": "/data/celeba/1.jpg"}, {"source_path": "/data/lfw/1.jpg"}),
    ("(Male or Young) and not (Bald)", {"Male": False, "Young": True, "Bald": False},
     {"Male": True, "Young": True, "Bald": True}),
    ("Five_o_Clock_Shadow == false", {"Five_o_Clock_Shadow": False}, {"Five_o_Clock_Shadow": True}),
    ("face_index != 0", {"face_index": 2}, {"face_index": 0}),
    ("ingested_at < 1e15", {"ingested_at": 10}, {"ingested_at": 10 ** 16}),
])
def test_valid_expressions_compile_and_evaluate(expr, row_true, row_false):
    # rows of annotated faces (attribute filters never match a face whose attributes are unknown)
    row_true, row_false = {"has_attributes": True, **row_true}, {"has_attributes": True, **row_false}
    f = compile_filter(expr)
    assert isinstance(f, CompiledFilter)
    assert f.evaluate(row_true) is True
    assert f.evaluate(row_false) is False
    # the rendered expression is itself valid and means the same thing
    again = compile_filter(f.render())
    assert again is not None and again.render() == f.render()
    assert again.evaluate(row_true) and not again.evaluate(row_false)


def test_nothing_to_filter_gives_none():
    assert compile_filter(None) is None
    assert compile_filter("   ") is None
    assert compile_filter("", [], []) is None


def test_where_shorthands_map_to_the_same_filter():
    f = compile_filter(None, ["Male", "Smiling"], ["Eyeglasses"])
    assert f is not None
    assert f.render() == ("((has_attributes == true and Male == true) and (has_attributes == true and "
                          "Smiling == true) and (has_attributes == true and Eyeglasses == false))")
    g = compile_filter("Male and Smiling and not Eyeglasses")
    assert g is not None
    row = {"Male": True, "Smiling": True, "Eyeglasses": False, "has_attributes": True}
    assert f.evaluate(row) and g.evaluate(row)
    both = compile_filter('identity == "7"', ["Male"], ["Bald"])
    assert both is not None
    assert both.fields() == ["Bald", "Male", "has_attributes", "identity"]
    assert both.evaluate({"identity": "7", "Male": True, "Bald": False, "has_attributes": True})
    assert not both.evaluate({"identity": "7", "Male": True, "Bald": True, "has_attributes": True})
    assert not both.evaluate({"identity": "7", "Male": None, "Bald": None, "has_attributes": False})


def test_template_holds_placeholders_and_params_hold_values():
    f = compile_filter('identity in ["2880", "4262"] and box_w > 40 and Smiling == true')
    assert f is not None
    assert "2880" not in f.template and "{p0}" in f.template
    # the attribute comparison comes with its has_attributes guard (one more True parameter)
    assert [list(v) if isinstance(v, tuple) else v for v in f.params.values()] == [["2880", "4262"], 40, True, True]
    # substituting each parameter with encode_literal gives exactly render()
    rendered = f.template
    for key, value in f.params.items():
        rendered = rendered.replace("{" + key + "}", encode_literal(value))
    assert rendered == f.render()
    assert 'identity in ["2880", "4262"]' in f.render()


def test_every_filterable_field_is_declared_and_vector_is_not():
    declared = {f.name for f in FACE_FIELDS}
    assert set(FILTERABLE) <= declared
    assert "vector" not in FILTERABLE
    assert set(ATTRIBUTES) <= set(FILTERABLE)


# ---------------------------------------------------------------------------------------------
# Errors: one line, naming the problem
# ---------------------------------------------------------------------------------------------
def _err(expr, where=(), where_not=()) -> str:
    with pytest.raises(FilterError) as ei:
        compile_filter(expr, where, where_not)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_unknown_field_suggests_close_names():
    msg = _err("Smilng == true")
    assert "unknown field 'Smilng'" in msg and "Smiling" in msg
    assert "Smiling" in _err("smiling")
    assert "Eyeglasses" in _err("Eyeglases and Male")
    assert "unknown field 'vector'" in _err("vector == 1")
    assert "unknown field" in _err(None, where=["Smilling"])
    assert "boolean" in _err(None, where=["identity"])


@pytest.mark.parametrize("expr, needle", [
    ("Smiling ==", "ends early"),
    ("(Smiling == true", "expected )"),
    ("Smiling == true)", "unexpected ')'"),
    ("Smiling = true", "syntax error"),
    ("Smiling == true Male", "unexpected 'Male'"),
    ("Smiling == true; drop collection", "syntax error"),
    ('identity in ["a", ]', "expected a value"),
    ("and Smiling", "expected a field name"),
    ("identity", "not a boolean field"),
    ('Smiling == "yes"', "type error"),
    ("identity == 5", "type error"),
    ("Smiling > 1", "numeric field"),
    ("identity like 5", "type error"),
    ("Male like \"%a\"", "string field"),
    ("box_w == true", "type error"),
])
def test_syntax_and_type_errors_are_one_line(expr, needle):
    assert needle in _err(expr)


@pytest.mark.parametrize("expr", [
    "Smiling == true) or (1 == 1",
    'identity == "x") or (1 == 1',
    "1 == 1",
    "Smiling == true or 1 == 1",
    'identity == "a" or identity != ""  or true',
    "Smiling == true /* comment */",
    "Smiling == true -- comment",
    'identity == "unterminated',
    "Smiling == true or vector != []",
    "json_contains(identity, 1)",
])
def test_injection_attempts_are_rejected(expr):
    _err(expr)


def test_quoted_values_stay_values():
    # The quote inside the value is escaped by the user; the whole thing is one string value.
    f = compile_filter(r'identity == "x\" or 1==1"')
    assert f is not None
    assert f.params == {"p0": 'x" or 1==1'}
    assert f.render() == 'identity == "x\\" or 1==1"'
    assert not f.evaluate({"identity": "anything"})
    assert f.evaluate({"identity": 'x" or 1==1'})
    # single quotes work too and are re-encoded with double quotes
    g = compile_filter("identity == 'it''s'") if False else compile_filter("identity == 'a\\'b'")
    assert g is not None
    assert g.params == {"p0": "a'b"}
    assert g.render() == 'identity == "a\'b"'


@pytest.mark.parametrize("value", ['a"b\\c', 'x" or 1==1', "it's", "back\\", "Zoë 李", "", "%_"])
def test_encode_literal_round_trips_through_the_parser(value):
    lit = encode_literal(value)
    f = compile_filter(f"identity == {lit}")
    assert f is not None
    assert f.params["p0"] == value
    assert f.render() == f"identity == {lit}"
    assert json.loads(lit) == value


def test_encode_literal_types():
    assert encode_literal(True) == "true" and encode_literal(False) == "false"
    assert encode_literal(3) == "3" and encode_literal(0.5) == "0.5"
    assert encode_literal(["a", 'b"']) == '["a", "b\\""]'
    with pytest.raises(TypeError):
        encode_literal(object())


def test_combine_joins_rendered_filters():
    assert combine([None, "", "a == 1"]) == "(a == 1)"
    assert combine(["a == 1", "b == 2"]) == "(a == 1) and (b == 2)"
    assert combine([]) == ""


# ---------------------------------------------------------------------------------------------
# Against a real Milvus Lite collection
# ---------------------------------------------------------------------------------------------
TRICKY = ['a"b\\c', 'x" or 1==1', "it's", "back\\", "Zoë 李", "plain", 'q"', "\\\"", "tab\there"]


def _row(i: int, identity: str, vec: np.ndarray, **attrs) -> dict:
    r = {"id": f"{i:064x}_0", "image_sha256": f"{i:064x}", "source_path": f"/synthetic/{i}.jpg",
         "face_index": 0, "box_x": 0, "box_y": 0, "box_w": 50 + i, "box_h": 50, "confidence": 0.9,
         "detector": "synthetic", "identity": identity, "has_attributes": True, "ingested_at": i,
         "face_size": 100, "sharpness": 0.5, "frontal": 1.0, "quality": 1.0,
         "vector": vec.tolist()}
    r.update({a: False for a in ATTRIBUTES})
    r.update(attrs)
    return r


@pytest.fixture(scope="module")
def lite_store(tmp_path_factory):
    from lookalike.ingest.store import Store

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((len(TRICKY) + 6, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = [_row(i, ident, vecs[i], Smiling=i % 2 == 0, Male=i % 3 == 0) for i, ident in enumerate(TRICKY)]
    rows += [_row(100 + j, f"n{j}", vecs[len(TRICKY) + j], Smiling=True, Eyeglasses=j < 2) for j in range(6)]
    store = Store(str(tmp_path_factory.mktemp("filters") / "f.db"))
    store.ensure_collection("dlib")
    store.upsert_faces("dlib", rows)
    store.flush(["faces_dlib"])
    yield store, rows
    store.close()


def _milvus_ids(store, flt) -> set:
    return {r["id"] for r in store.iterate("faces_dlib", ["id"], filter=store.filter_args(flt)["filter"])}


@pytest.mark.parametrize("value", TRICKY)
def test_rendered_literals_find_exactly_the_row_in_milvus(lite_store, value):
    store, rows = lite_store
    f = compile_filter(f"identity == {encode_literal(value)}")
    want = {r["id"] for r in rows if r["identity"] == value}
    assert len(want) == 1
    assert _milvus_ids(store, f) == want
    assert store.count("faces_dlib", f) == 1


def test_injected_value_matches_nothing_in_milvus(lite_store):
    store, rows = lite_store
    for expr in (r'identity == "x\" or 1==1 or identity == \"plain"', r'identity == "plain\" or \"1\" == \"1"'):
        f = compile_filter(expr)
        assert _milvus_ids(store, f) == set()
        assert store.count("faces_dlib", f) == 0


@pytest.mark.parametrize("expr", [
    "Smiling", "Smiling and not Male", "Male or Eyeglasses", 'identity in ["plain", "n1", "nobody"]',
    'identity like "n%"', "box_w > 55 and box_w <= 104", 'not (identity == "plain")',
    'identity == "nobody"', "Eyeglasses and Male",
])
def test_milvus_agrees_with_evaluate(lite_store, expr):
    store, rows = lite_store
    f = compile_filter(expr)
    assert f is not None
    want = {r["id"] for r in rows if f.evaluate(r)}
    assert _milvus_ids(store, f) == want


# ---------------------------------------------------------------------------------------------
# Hostile input: bounded, one line, never another exception; what passes, Milvus accepts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("expr, needle", [
    ("(" * 340 + "Smiling" + ")" * 340, "nested too deeply"),
    ("not " * 1000 + "Smiling", "nested too deeply"),
    ("Smiling or " * 7000 + "Smiling", "filter too long"),
    ("confidence > 1e999", "1e999 for 'confidence' is not a finite number"),
    ("confidence < -1e999", "is not a finite number"),
    ("face_index == 99999999999999999999999", "99999999999999999999999 for 'face_index' does not fit"),
    ("face_index == 2147483648", "does not fit a 32-bit integer"),
    ("ingested_at > 9223372036854775808", "does not fit a 64-bit integer"),
    ("box_w > 1" + "0" * 5000, "too long a number"),
    (r'identity == "\ud800"', r'"\ud800" for ' + "'identity'"),
    (r'identity in ["ok", "\udfff"]', "lone surrogate"),
    (r'identity == "a\0b"', "NUL"),
])
def test_hostile_filters_get_one_line_naming_the_problem(expr, needle):
    assert needle in _err(expr)


def test_the_deepest_accepted_filter_runs_in_milvus(lite_store):
    from lookalike.schemas.filters import MAX_FILTER_DEPTH

    store, rows = lite_store
    nots = "not " * MAX_FILTER_DEPTH + "(Smiling)"
    groups = "Male"  # and/or alternating: one level each, as rendered
    for i in range(MAX_FILTER_DEPTH):
        groups = f"Smiling {'and' if i % 2 else 'or'} ({groups})"
    for deep in (nots, groups):
        f = compile_filter(deep)
        assert f is not None
        assert f.render().count("(") - f.render().count(")") == 0
        assert _milvus_ids(store, f) == {r["id"] for r in rows if f.evaluate(r)}
        assert "nested too deeply" in _err(f"not ({deep})")


def test_literals_out_of_range_never_reach_encode_literal():
    for bad in (float("inf"), float("nan"), 2 ** 64, "\udc80", "a\0"):
        with pytest.raises(FilterError):
            encode_literal(bad)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FIELDS = ["Smiling", "Male", "identity", "source_path", "confidence", "face_index", "box_w",
           "ingested_at", "has_attributes", "vector", "Smilng", "inf", "nan"]
_NUMS = st.one_of(st.integers(min_value=-2 ** 70, max_value=2 ** 70).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["1e999", "-1e999", "1e308", "0.5", "99999999999999999999999", "1e-400"]))
_STRS = st.text(st.characters(codec=None, exclude_categories=()), max_size=12).map(
    lambda s: '"' + "".join(c if c not in '"\\' else "\\" + c for c in s) + '"')
_ESCAPED = st.sampled_from([r'"\ud800"', r'"\udfff"', r'"\u0000"', r'"\""', r'"\\"', "'x'", '"x\\', '"'])
_LIT = st.one_of(_NUMS, _STRS, _ESCAPED, st.sampled_from(["true", "false", "[]", '["a", 1]']))
_OPS = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "like", "in", "not in", "=", ""])


# Mostly well-typed comparisons (so that many expressions pass and reach Milvus), with values at
# and past the edges of each field's range.
_EDGE_INTS = st.sampled_from([0, -1, 2 ** 24, 2 ** 24 + 1, 2 ** 31 - 1, 2 ** 31, -2 ** 31 - 1, 2 ** 63 - 1, 2 ** 63])
_TYPED = st.one_of(
    st.builds(lambda f, v: f"{f} == {v}", st.sampled_from(["Smiling", "Male", "has_attributes"]),
              st.sampled_from(["true", "false"])),
    st.builds(lambda f, o, v: f"{f} {o} {v}", st.sampled_from(["confidence", "face_index", "box_w", "ingested_at"]),
              st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
              st.one_of(st.integers(-2 ** 65, 2 ** 65), _EDGE_INTS,
                        st.floats(allow_nan=False, allow_infinity=False)).map(repr)),
    st.builds(lambda f, o, v: f"{f} {o} {v}", st.sampled_from(["identity", "source_path"]),
              st.sampled_from(["==", "!=", "like"]), _STRS),
    st.builds(lambda v, w: f"identity in [{v}, {w}]", _STRS, _STRS),
)


def _exprs():
    leaf = st.one_of(
        _TYPED, _TYPED,
        st.builds(lambda f, o, v: f"{f} {o} {v}" if o not in ("in", "not in") else f"{f} {o} [{v}, {v}]",
                  st.sampled_from(_FIELDS), _OPS, _LIT),
        st.sampled_from(_FIELDS))
    return st.recursive(leaf, lambda inner: st.one_of(
        st.builds(lambda a, b, op: f"{a} {op} {b}", inner, inner, st.sampled_from(["and", "or", "&&", "||", ","])),
        st.builds(lambda a: f"not {a}", inner),
        st.builds(lambda a: f"({a})", inner),
        st.builds(lambda a, k: "(" * k + a + ")" * k, inner, st.integers(0, 60)),
        st.builds(lambda a, k: "not " * k + a, inner, st.integers(0, 60)),
    ), max_leaves=12)


def _one_line_or_valid(expr: str):
    try:
        f = compile_filter(expr)
    except FilterError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg and len(msg) < 400, msg
        return None
    if f is None:
        assert not expr.strip()
        return None
    rendered = f.render()
    rendered.encode("utf-8")  # what Milvus gets is text
    again = compile_filter(rendered)
    assert again is not None and again.render() == rendered
    return f


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_exprs(), st.text(max_size=200),
                 st.text(st.sampled_from(list("()!&|=<>[],\"'\\ notandorSmilingidentity0123456789.eE-")), max_size=300)))
def test_property_random_and_hostile_expressions(expr):
    _one_line_or_valid(expr)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(_exprs())
def test_property_what_the_validator_accepts_milvus_lite_accepts(lite_store, expr):
    store, rows = lite_store
    f = _one_line_or_valid(expr)
    if f is not None:
        assert _milvus_ids(store, f) == {r["id"] for r in rows if f.evaluate(r)}, f.render()


@pytest.mark.needs_data
@pytest.mark.parametrize("expr, needle", [
    ("confidence > 1e999", "1e999"),
    ("face_index == 99999999999999999999999", "99999999999999999999999"),
    (r'identity == "\ud800"', r"\ud800"),
    ("(" * 340 + "Smiling" + ")" * 340, "nested too deeply"),
    ("not " * 1000 + "Smiling", "nested too deeply"),
])
def test_cli_refuses_hostile_filters_with_one_line_and_exit_2(tmp_path, expr, needle):
    """Checked before any database or model is opened: the database named does not even exist."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import DATA

    photo = DATA / "groups" / "photos" / "couple.jpg"
    r = subprocess.run([sys.executable, "-m", "lookalike.query.app.cli", "query", str(photo), "--db", str(tmp_path / "none.db"),
                        "--filter", expr], cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lookalike: ") and needle in lines[0], r.stderr[-2000:]
