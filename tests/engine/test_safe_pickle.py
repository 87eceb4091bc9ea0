"""A checkpoint is data, never code: crafted pickles in a real checkpoint are refused everywhere.

One real run is trained in-process (2 steps, then resumed to 4, so its last checkpoint was written
by a resumed run). For each pickled file of it -- DCP ``weights/.metadata``, an object item of
``weights/__0_0.distcp``, megatron's ``weights/common.pt``, the trainer state ``state/rank_00000.pt``
-- a copy gets a payload whose ``__reduce__`` would create a file; every loading path (the Python
API, ``evaluate``, ``score``, ``train --resume``) must exit 2 / raise with one line naming the file
and the global, and the file must never appear.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from checkpoint_payloads import (PICKLED, Payload, assert_allow_list_covers, craft, object_item, pickle_globals,
                                 rerecord, refusal)

from rm_registry import ConfigError, UnsafeCheckpointError, get_reward_model
from rm_registry._cli import main
from rm_registry.engine.checkpoint import _safe_pickle

pytestmark = pytest.mark.slow

TINY = [
    "model.num_layers=2",
    "model.hidden_size=32",
    "model.num_attention_heads=4",
    "model.encoder_seq_length=64",
    "model.micro_batch_size=4",
    "model.global_batch_size=8",
    "trainer.rm.save_interval=2",
    "trainer.rm.val_check_interval=2",
]


def _prefs(path: Path, n: int) -> Path:
    rows = [{"prompt": f"Q{i}: {i % 7}+{i % 5}?", "chosen": f" It is {i % 7 + i % 5}.", "rejected": " No."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real run: trained to step 2, resumed to step 4 (checkpoints at both)."""
    from rm_registry.engine.config import build_config
    from rm_registry.engine.trainer import train

    d = tmp_path_factory.mktemp("safe")
    plugin = get_reward_model("binary_ranking")
    data = {"train": _prefs(d / "train.jsonl", 16), "validation": _prefs(d / "val.jsonl", 8)}
    out = d / "run"
    train(plugin, build_config(plugin, overrides=[*TINY, "trainer.rm.max_steps=2"], data_paths=data), out,
          progress=False)
    train(plugin, build_config(plugin, overrides=[*TINY, "trainer.rm.max_steps=4"], data_paths=data), out,
          resume=True, progress=False)
    texts = d / "texts.jsonl"
    texts.write_text('{"text": "Q1: 1+1? It is 2."}\n')
    return {"dir": d, "run": out, "first": out / "checkpoints" / "step_0000002",
            "resumed": out / "checkpoints" / "step_0000004", **data, "texts": texts}


@pytest.fixture
def crafted(run: dict[str, Path], tmp_path: Path) -> Callable[[str], tuple[Path, str, Path]]:
    """``crafted(rel)``: (copy of the run with a payload in its last checkpoint's ``rel``, name, marker)."""

    def make(rel: str) -> tuple[Path, str, Path]:
        copy = tmp_path / f"run-{rel.replace('/', '-')}"
        shutil.copytree(run["run"], copy)
        marker = tmp_path / f"PWNED-{rel.replace('/', '-')}"
        where = craft(copy / "checkpoints" / "step_0000004", rel, marker)
        return copy, where, marker

    return make


# ------------------------------------------------------------------------------ the tests


def test_payloads_run_when_unpickled_without_the_allow_list(run: dict[str, Path], tmp_path: Path) -> None:
    """The crafted files are live: the readers torch and megatron use would run them."""
    for rel in PICKLED:
        ckpt = tmp_path / rel.replace("/", "-")
        shutil.copytree(run["resumed"], ckpt)
        marker = tmp_path / f"ran-{ckpt.name}"
        craft(ckpt, rel, marker)
        if rel.endswith(".metadata"):
            with open(ckpt / rel, "rb") as fh:
                pickle.load(fh)  # torch.distributed.checkpoint.FileSystemReader.read_metadata
        elif rel.endswith(".distcp"):
            metadata, key = object_item(ckpt)
            info = metadata.storage_data[key]
            with open(ckpt / rel, "rb") as fh:
                fh.seek(info.offset)
                torch.load(io.BytesIO(fh.read(info.length)), weights_only=False)  # DefaultLoadPlanner.load_bytes
        else:
            torch.load(ckpt / rel, weights_only=False)
        assert marker.exists(), rel


@pytest.mark.parametrize("rel", PICKLED)
def test_python_api_refuses_every_pickled_file(crafted, rel: str) -> None:
    from rm_registry.engine import load_checkpoint, load_reward_model
    from rm_registry.engine.model import RewardModel

    run_dir, where, marker = crafted(rel)
    with pytest.raises(UnsafeCheckpointError) as exc:
        load_reward_model(run_dir)
    assert str(exc.value) == refusal(where)
    model = RewardModel.from_config(_saved_cfg(run_dir), vocab_size=258)
    with pytest.raises(UnsafeCheckpointError, match="posix.system, which is not checkpoint data"):
        load_checkpoint(run_dir / "checkpoints" / "step_0000004", model)
    assert not marker.exists()


def _saved_cfg(run_dir: Path) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.load(run_dir / "config.yaml")


@pytest.mark.parametrize("rel", PICKLED)
def test_every_loading_command_exits_2_with_one_line(crafted, run: dict[str, Path], rel: str,
                                                     capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run_dir, where, marker = crafted(rel)
    scores = tmp_path / "scores.jsonl"
    commands = {
        "evaluate": ["evaluate", "--checkpoint", str(run_dir), "--data", str(run["validation"]), "--json"],
        "score": ["score", "--checkpoint", str(run_dir / "checkpoints" / "step_0000004"), "--data",
                  str(run["texts"]), "--output", str(scores), "--no-progress"],
        "train --resume": ["train", "binary_ranking", "--data", str(run["train"]), "--output", str(run_dir),
                           "--resume", "--no-progress", *TINY, "trainer.rm.max_steps=6"],
    }
    before = _snapshot(run_dir)
    for name, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        out, err = capsys.readouterr()
        assert err == f"rm-registry: error: {refusal(where)}\n", name
        assert not marker.exists(), name
    assert not scores.exists()
    assert _snapshot(run_dir) == before  # nothing written, nothing touched


def _snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_score_subprocess_as_in_the_report(crafted, run: dict[str, Path], tmp_path: Path) -> None:
    """The issue's reproduction, as a user runs it: a crafted ``.metadata``, ``rm-registry score``."""
    run_dir, where, marker = crafted("weights/.metadata")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    proc = subprocess.run([sys.executable, "-m", "rm_registry", "score", "--checkpoint", str(run_dir), "--data",
                           str(run["texts"]), "--output", str(tmp_path / "s.jsonl")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr == f"rm-registry: error: {refusal(where)}\n"
    assert not marker.exists() and not (tmp_path / "s.jsonl").exists()


def test_legitimate_checkpoints_pass_and_load(run: dict[str, Path]) -> None:
    from rm_registry.engine import load_reward_model

    for ckpt in (run["first"], run["resumed"]):
        _safe_pickle.check_checkpoint(ckpt)
    rm = load_reward_model(run["resumed"])
    assert isinstance(rm.score(["Q1: 1+1? It is 2."])[0]["reward"], float)


# ------------------------------------------------------------------------------ allow-list = what we write


@pytest.fixture(scope="module")
def legacy(run: dict[str, Path]) -> Path:
    """Weights as rm-registry saved them before it wrote checkpoints in-process: with megatron-core's
    own writer, whose ``.metadata`` also pickles its save plans. Such checkpoints must still load."""
    from megatron.core import dist_checkpointing

    from rm_registry.engine.parallel import _cpu_compat
    from rm_registry.engine.model import RewardModel

    folder = run["dir"] / "legacy"
    (folder / "weights").mkdir(parents=True)
    model = RewardModel.from_config(_saved_cfg(run["run"]), vocab_size=258)
    with _cpu_compat.cuda_device_shims():
        dist_checkpointing.save(model.sharded_state_dict(), str(folder / "weights"))
    return folder


def test_allow_list_is_what_our_saves_write(run: dict[str, Path], legacy: Path) -> None:
    _safe_pickle.check_checkpoint(legacy)
    found: dict[str, set[str]] = {"metadata": set(), "torch.save": set()}
    for ckpt in (run["first"], run["resumed"], legacy):
        for kind, names in assert_allow_list_covers(ckpt).items():
            found[kind] |= names
    # ... and no wider: every explicit entry is written by some save (dtypes/storages are a family).
    assert sorted(_safe_pickle.DCP_METADATA_GLOBALS - found["metadata"]) == []
    assert sorted(_safe_pickle.TORCH_SAVE_GLOBALS - found["torch.save"]) == []
    assert "torch.float32" in found["metadata"] and "torch.FloatStorage" in found["torch.save"]


def test_scanner_sees_what_a_payload_references() -> None:
    """The pickletools scan of the allow-list test does find globals (it could fail)."""
    assert "posix.system" in pickle_globals(pickle.dumps(Payload(Path("x")), protocol=4))
    assert "posix.system" in pickle_globals(pickle.dumps(Payload(Path("x")), protocol=2))


# ------------------------------------------------------------------------------ units


def test_restricted_unpickler_refuses_before_calling(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bad = tmp_path / "x.metadata"
    for protocol in (0, 2, 4, 5):
        bad.write_bytes(pickle.dumps(Payload(marker), protocol=protocol))
        with pytest.raises(UnsafeCheckpointError, match=r"x\.metadata: it references posix\.system"):
            _safe_pickle.check_dcp_metadata(bad)
    bad.write_bytes(pickle.dumps({"f": eval}))
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval, which is not checkpoint data"):
        _safe_pickle.check_dcp_metadata(bad)
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ConfigError, match="not a readable checkpoint file"):
        _safe_pickle.check_dcp_metadata(bad)
    assert not marker.exists()


def test_torch_files_other_than_plain_torch_save_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2), "x": Payload(marker)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="not a torch.save zip archive"):
        _safe_pickle.safe_torch_load(legacy)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(UnsafeCheckpointError, match="torch.save does not write"):
        _safe_pickle.safe_torch_load(scripted)
    good = tmp_path / "good.bin"
    torch.save({"w": torch.arange(3.0), "b": torch.zeros(2, dtype=torch.bfloat16)}, good)
    loaded = _safe_pickle.safe_torch_load(good)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["b"].dtype == torch.bfloat16
    assert not marker.exists()


def test_paths_out_of_the_folder_are_refused(run: dict[str, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run["resumed"], ckpt)
    # a DCP storage entry pointing outside the weights folder
    metadata = pickle.loads((ckpt / "weights" / ".metadata").read_bytes())
    next(iter(metadata.storage_data.values())).relative_path = "../../../etc/passwd"
    (ckpt / "weights" / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(UnsafeCheckpointError, match=r"points the reader at '\.\./\.\./\.\./etc/passwd'"):
        _safe_pickle.check_checkpoint(ckpt)
    shutil.rmtree(ckpt)
    shutil.copytree(run["resumed"], ckpt)
    # a loader of megatron-core other than the one whose files are checked
    meta_json = ckpt / "weights" / "metadata.json"
    original = meta_json.read_text()
    meta_json.write_text(original.replace('"torch_dist"', '"zarr"'))
    with pytest.raises(UnsafeCheckpointError, match="sharded_backend='zarr'; only 'torch_dist' checkpoints"):
        _safe_pickle.check_checkpoint(ckpt)
    meta_json.write_text(original)
    # a symlink out of the folder (the tokenizer) is refused by the API before anything is read
    outside = tmp_path / "elsewhere"
    shutil.copytree(ckpt / "tokenizer", outside)
    shutil.rmtree(ckpt / "tokenizer")
    (ckpt / "tokenizer").symlink_to(outside)
    from rm_registry.engine import load_reward_model

    with pytest.raises(UnsafeCheckpointError, match=rf"tokenizer is a symlink to {outside}, outside the folder"):
        load_reward_model(ckpt)
    # ... while the folder itself may be a link, and links inside it are fine
    (ckpt / "tokenizer").unlink()
    shutil.copytree(outside, ckpt / "tokenizer")
    os.mkfifo(ckpt / "weights" / "pipe")  # reading it would never end
    with pytest.raises(UnsafeCheckpointError, match=r"weights/pipe is neither a file nor a folder"):
        _safe_pickle.check_checkpoint(ckpt)
    (ckpt / "weights" / "pipe").unlink()
    (ckpt / "config-link.yaml").symlink_to(ckpt / "config.yaml")
    (tmp_path / "latest").symlink_to(ckpt)
    _safe_pickle.check_checkpoint(tmp_path / "latest")


def test_saved_config_is_data(run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run["resumed"], ckpt)
    config = ckpt / "config.yaml"
    text = config.read_text()
    marker = tmp_path / "ran"
    config.write_text(text + f'evil: !!python/object/apply:os.system ["touch {marker}"]\n')
    rerecord(ckpt)  # else it is refused as damaged (changed since saved) before anything parses it
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(run["validation"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rm-registry: error: {config}: unreadable config: could not determine a constructor")
    assert err.count("\n") == 1 and not marker.exists()
    config.write_text(text.replace("reward_model_type: binary_ranking", "reward_model_type: ${oc.env:HOME}"))
    rerecord(ckpt)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(run["validation"])]) == 2
    assert "model.reward_model_type='${oc.env:HOME}' is an interpolation" in capsys.readouterr().err


def test_hf_pytorch_model_bin_is_checked(tmp_path: Path) -> None:
    """An HF folder's ``pytorch_model.bin`` goes through safe_torch_load: a payload is refused, tensors load."""
    from rm_registry.engine.hf._io import WeightFiles

    marker = tmp_path / "ran"
    torch.save({"score.weight": torch.ones(1, 4), "x": Payload(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError) as exc:
        WeightFiles(tmp_path)
    assert str(exc.value) == refusal(str(tmp_path / "pytorch_model.bin")) and not marker.exists()
    torch.save({"score.weight": torch.ones(1, 4)}, tmp_path / "pytorch_model.bin")
    files = WeightFiles(tmp_path)
    assert files.names() == {"score.weight"} and torch.equal(files.get("score.weight"), torch.ones(1, 4))
