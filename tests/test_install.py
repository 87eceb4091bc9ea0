"""The plugin story with real installs: pip install a plugin, see it, pip uninstall it, it is gone.

A fresh virtual environment gets the core (``rm-registry``, base install: pluggy only, no
torch) and the tutorial's example plugin ``examples/rm-hinge-ranking``, both installed by pip
from this repository. Torch is deliberately absent: listing must not need it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "rm-hinge-ranking"

pytestmark = pytest.mark.slow


def _run(cmd: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure, fail the test with the command and its whole output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RM_REGISTRY_DISABLE", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        pytest.fail(
            f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def _copy_source(project: Path, dst: Path) -> Path:
    """Copy what a project's build reads (``pyproject.toml``, ``README.md``, ``src/``) to ``dst``.

    pip builds in the source tree; building a copy keeps ``build/`` and ``*.egg-info`` out of
    the checkout that other processes (editable installs) use.
    """
    dst.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(project / name, dst / name)
    shutil.copytree(project / "src", dst / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    return dst


def _listed(venv_python: Path, script: Path) -> list[dict[str, object]]:
    """``rm-registry list --json`` in the venv, checking on the way that torch and the plugin stay unimported."""
    # -X importtime prints every module the interpreter imports: the proof that listing imports
    # neither torch nor the plugin (torch is not even installed here, the plugin is).
    traced = _run([venv_python, "-X", "importtime", "-m", "rm_registry", "list", "--json"])
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in traced.stderr.splitlines() if "|" in line}
    assert "rm_registry" in imported and "argparse" in imported  # the trace was parsed
    assert "torch" not in imported
    assert "rm_hinge_ranking" not in imported
    # The console script users type gives the same answer.
    out = _run([script, "list", "--json"]).stdout
    assert json.loads(out) == json.loads(traced.stdout)
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


def test_pip_install_list_uninstall(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python, pip = bin_dir / "python", [bin_dir / "python", "-m", "pip", "--disable-pip-version-check"]

    # Python < 3.12 venvs still bring setuptools; then building in the venv itself (plus the
    # small `wheel`, which old setuptools needs for bdist_wheel) is about 1.5 s faster per
    # package than populating an isolated build environment. Otherwise pip builds normally.
    has_setuptools = subprocess.run([python, "-c", "import setuptools"], capture_output=True).returncode == 0
    build = ["--no-build-isolation"] if has_setuptools else []

    core = _copy_source(REPO, tmp_path / "src-core")
    plugin = _copy_source(EXAMPLE, tmp_path / "src-plugin")
    _run([*pip, "install", "--quiet", "pluggy>=1.3", *(["wheel"] if has_setuptools else [])])
    _run([*pip, "install", "--quiet", "--no-deps", *build, core])
    t_core = time.perf_counter()

    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0, "torch leaked in"
    script = bin_dir / "rm-registry"
    before = _listed(python, script)
    assert "hinge_ranking" not in {row["name"] for row in before}

    _run([*pip, "install", "--quiet", "--no-deps", *build, plugin])
    rows = _listed(python, script)
    hinge = [row for row in rows if row["name"] == "hinge_ranking"]
    assert len(hinge) == 1, rows
    assert hinge[0]["distribution"] == "rm-hinge-ranking"
    assert hinge[0]["version"] == "0.1.0"
    assert hinge[0]["entry_point"] == "rm_hinge_ranking:plugin"
    assert hinge[0]["status"] == "available"  # listed, never imported

    _run([*pip, "uninstall", "--yes", "rm-hinge-ranking"])
    after = _listed(python, script)
    assert "hinge_ranking" not in {row["name"] for row in after}
    assert after == before

    print(
        f"\nvenv + core install {t_core - t0:.1f} s, whole test {time.perf_counter() - t0:.1f} s "
        f"({'--no-build-isolation' if build else 'isolated builds'})"
    )
