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


def _fresh_venv(tmp_path: Path) -> tuple[Path, Path, list[str | Path], list[str], Path, Path]:
    """A new virtual environment and copies of the core's and the tutorial plugin's sources.

    Returns:
        ``(bin_dir, python, pip command, build flags, core source, plugin source)``.
    """
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python, pip = bin_dir / "python", [bin_dir / "python", "-m", "pip", "--disable-pip-version-check"]
    # Python < 3.12 venvs still bring setuptools; then building in the venv itself (plus the
    # small `wheel`, which old setuptools needs for bdist_wheel) is about 1.5 s faster per
    # package than populating an isolated build environment. Otherwise pip builds normally.
    has_setuptools = subprocess.run([python, "-c", "import setuptools"], capture_output=True).returncode == 0
    build = ["--no-build-isolation"] if has_setuptools else []
    return (bin_dir, python, pip, build, _copy_source(REPO, tmp_path / "src-core"),
            _copy_source(EXAMPLE, tmp_path / "src-plugin"))


def test_pip_install_list_uninstall(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    bin_dir, python, pip, build, core, plugin = _fresh_venv(tmp_path)
    _run([*pip, "install", "--quiet", "pluggy>=1.3", *(["wheel"] if build else [])])
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


def test_fresh_environment_trains_a_plugin_written_against_todays_contract(tmp_path: Path) -> None:
    """The engine's layout moved every module into a package per stage; a plugin of the tutorial
    (``examples/rm-hinge-ranking``, which imports ``rm_registry.engine.model.RewardModel``,
    ``rm_registry.engine.data`` and the fixtures of ``rm_registry.testing``) is installed by pip,
    from built packages (not editable: the package data must be in the wheel), into a fresh
    environment, and trains, evaluates and scores there unchanged."""
    bin_dir, python, pip, build, core, plugin = _fresh_venv(tmp_path)
    # torch first and by its version, so that pip never picks a CUDA build by itself
    _run([*pip, "install", "--quiet", "torch==2.13.0", *(["wheel"] if build else [])], timeout=900)
    _run([*pip, "install", "--quiet", *build, f"{core}[megatron]", plugin], timeout=900)

    # every import path plugins and users use today
    paths = ("rm_registry.engine", "rm_registry.engine.model", "rm_registry.engine.data", "rm_registry.engine.config",
             "rm_registry.engine.api", "rm_registry.engine.tokenizer", "rm_registry.engine.parallel",
             "rm_registry.engine.hf", "rm_registry.testing")
    _run([python, "-c", "import importlib\n"
          f"for m in {paths!r}: importlib.import_module(m)\n"
          "from rm_registry.engine.model import RewardModel\n"
          "from rm_registry.engine import RewardModel as R2, load_reward_model, train, build_config, evaluate_dataset\n"
          "from rm_registry.engine.data import ListDataset, encode_text, fit_length, pad_batch, read_jsonl\n"
          "from rm_registry.engine.config import build_config, engine_defaults\n"
          "assert RewardModel is R2 and engine_defaults().seed == 1234\n"])

    run = tmp_path / "run"
    tiny = ["model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4", "model.encoder_seq_length=128",
            "trainer.rm.max_steps=3", "trainer.rm.val_check_interval=3", "trainer.rm.save_interval=3"]
    trained = _run([bin_dir / "rm-registry", "train", "hinge_ranking", "--output", run, "--no-progress", *tiny],
                   cwd=tmp_path, timeout=900)
    summary = json.loads(trained.stdout[trained.stdout.index("{"):])
    assert summary["steps"] == 3 and (run / "checkpoints" / "step_0000003" / "checkpoint.json").is_file()
    data = EXAMPLE / "src" / "rm_hinge_ranking" / "data"
    validation = sorted(data.glob("*.jsonl"))[-1]
    evaluated = _run([bin_dir / "rm-registry", "evaluate", "--checkpoint", run, "--data", validation, "--json",
                      "--no-progress"], cwd=tmp_path, timeout=900)
    assert "loss" in json.loads(evaluated.stdout)
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "User: hi\\nAssistant: hello"}\n{"prompt": "User: 2+2?\\n", "response": "Assistant: 4"}\n')
    _run([bin_dir / "rm-registry", "score", "--checkpoint", run, "--data", texts, "--output", tmp_path / "s.jsonl",
          "--no-progress"], cwd=tmp_path, timeout=900)
    scores = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(scores) == 2 and all(isinstance(s["reward"], float) for s in scores)
