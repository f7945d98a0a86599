"""The built wheel installs under one namespace (`lookalike.*`), with no generic top-level names."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IMPORT_ALL = """
import importlib, pkgutil, sys
import lookalike.schemas, lookalike.ingest, lookalike.query, lookalike.query.app
for pkg in (lookalike.schemas, lookalike.ingest, lookalike.query):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(m.name)
generic = sorted(n for n in ("schemas", "ingest", "query") if n in sys.modules)
assert not generic, generic
for n in ("schemas", "ingest", "query"):
    try:
        importlib.import_module(n)
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError(f"a top-level module {n!r} is importable")
print(lookalike.query.app.__file__)
"""


def test_every_package_folder_is_declared():
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"lookalike." + ".".join(p.parent.relative_to(ROOT).parts)
               for top in ("schemas", "ingest", "query") for p in (ROOT / top).rglob("__init__.py")}
    assert declared == folders, (sorted(folders - declared), sorted(declared - folders))


def test_wheel_installs_under_the_lookalike_namespace(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(ROOT)], check=True, timeout=300, capture_output=True)
    wheel = next(dist.glob("lookalike-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"lookalike"}, tops
    assert "lookalike/query/app/static/index.html" in names
    assert not any(n.startswith("lookalike/__init__") for n in names)  # a namespace: nothing else may claim it

    # A fresh virtualenv: the wheel in it, the dependencies seen through a plain path entry to this
    # environment's site-packages (a path entry runs no .pth file, so the editable install is not
    # seen), started outside the checkout.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --target with --ignore-installed: pip must not uninstall this environment's own (editable) copy
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--target", str(site),
                    str(wheel)], check=True, timeout=300, capture_output=True)
    r = subprocess.run([str(py), "-c", IMPORT_ALL], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()).is_relative_to(venv), r.stdout
