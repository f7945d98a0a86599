"""Optional parts (the package's extras: web, vit, plots): without one installed, what needs it
stops with one line naming the extra to install (exit 5, like a model that cannot load), and
before it announces or opens anything."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.schemas.errors import EXIT_WEIGHTS, NotInstalled, require


def _hide(tmp_path: Path, *modules: str) -> Path:
    """A folder that, first on PYTHONPATH, makes `modules` fail to import as if not installed."""
    hidden = tmp_path / "hidden"
    for m in modules:
        (hidden / m).mkdir(parents=True)
        (hidden / m / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{m}'\", name='{m}')\n")
    return hidden


def _cli(tmp_path: Path, hidden: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lookalike.query.app.cli", *args], cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(hidden)},
                          capture_output=True, text=True, timeout=300)


def test_require_names_the_extra_only_when_the_module_itself_is_missing(tmp_path, monkeypatch):
    assert require("json", "web", "x").__name__ == "json"
    with pytest.raises(NotInstalled) as e:
        require("no_such_module_xyz", "web", "lookalike serve")
    assert str(e.value) == ("lookalike serve needs no_such_module_xyz, which is not installed here: "
                            "pip install 'lookalike[web]'")
    assert e.value.exit_code == EXIT_WEIGHTS and e.value.api_code == "not_installed"
    # installed but broken (it imports something missing): a bug to show, not an extra to install
    (tmp_path / "broken_mod_xyz.py").write_text("import another_missing_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e2:
        require("broken_mod_xyz", "web", "x")
    assert not isinstance(e2.value, NotInstalled) and e2.value.name == "another_missing_module_xyz"


def test_serve_without_the_web_extra_says_which_extra_before_anything_else(tmp_path):
    r = _cli(tmp_path, _hide(tmp_path, "fastapi"), "serve", "--db", str(tmp_path / "none.db"))
    assert r.returncode == EXIT_WEIGHTS, r.stderr
    assert r.stderr.strip() == ("lookalike: lookalike serve needs fastapi, which is not installed here: "
                                "pip install 'lookalike[web]'")
    assert r.stdout == "" and not (tmp_path / "none.db").exists()


def test_a_transformer_model_without_the_vit_extra_says_which_extra(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    data = Path(__import__("os").environ.get("LOOKALIKE_DATA", "../shared/data"))
    photo = next((data / "celeba" / "img_celeba").glob("*.jpg"), None)
    if photo is None:
        pytest.skip("no sample data")
    (src / "a.jpg").write_bytes(photo.read_bytes())
    r = _cli(tmp_path, _hide(tmp_path, "transformers"), "ingest", str(src), "--models", "clip",
             "--workers", "0", "-q", "--db", str(tmp_path / "x.db"))
    assert r.returncode == EXIT_WEIGHTS, r.stderr
    assert "model clip needs transformers, which is not installed here: pip install 'lookalike[vit]'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
