"""Failures as an operator meets them, in-process: damaged checkpoints, a torn metrics line, a full
disk simulated where a real one cannot be made, and file modes. (Real signals and a real full
file system: tests/test_stop_and_full_disk.py.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from cli_helpers import prefs

from rm_registry import StorageError
from rm_registry._cli import main
from rm_registry.engine import checkpoint as ckpt

TINY = [
    "model.num_layers=2",
    "model.hidden_size=32",
    "model.num_attention_heads=4",
    "model.encoder_seq_length=96",
    "model.micro_batch_size=4",
    "model.global_batch_size=8",
    "trainer.rm.max_steps=4",
    "trainer.rm.val_check_interval=2",
    "trainer.rm.save_interval=2",
]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run with checkpoints at steps 2 and 4 (copied by each test that changes it)."""
    d = tmp_path_factory.mktemp("failures")
    data = {"train": prefs(d / "train.jsonl", 32), "val": prefs(d / "val.jsonl", 8)}
    assert main(["train", "binary_ranking", "--data", str(data["train"]), "--validation-data", str(data["val"]),
                 "--output", str(d / "run"), "--no-progress", *TINY]) == 0
    return {"run": d / "run", **data}


@pytest.fixture
def run(made: dict[str, Path], tmp_path: Path) -> Path:
    shutil.copytree(made["run"], tmp_path / "run")
    return tmp_path / "run"


def _step(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "truncated distcp": ("weights/__0_0.distcp", _truncate),
    "empty .metadata": ("weights/.metadata", lambda p: p.write_bytes(b"")),
    "truncated state": ("state/rank_00000.pt", _truncate),
    "altered distcp": ("weights/__0_0.distcp", _flip_a_byte),
    "missing tokenizer": ("tokenizer/rm_registry_tokenizer.json", Path.unlink),
}


@pytest.mark.slow
def test_manifest_lists_every_file_with_size_and_checksum(made: dict[str, Path]) -> None:
    folder = _step(made["run"], 4)
    files = ckpt.checkpoint_info(folder)["files"]
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {ckpt.MARKER}
    assert set(files) == on_disk and {"weights/.metadata", "state/rank_00000.pt", "config.yaml"} <= on_disk
    for rel, meta in files.items():
        assert meta["size"] == (folder / rel).stat().st_size and len(meta["crc32"]) == 8


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.slow
def test_damaged_checkpoint_is_named_and_the_run_falls_back(run: Path, made: dict[str, Path], damage: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rel, spoil = DAMAGE[damage]
    newest = _step(run, 4)
    spoil(newest / rel)
    with pytest.raises(ckpt.CheckpointDamagedError, match=rf"step_0000004/{rel}: damaged checkpoint file"):
        ckpt.verify_checkpoint(newest)
    skipped = rf"skipping a damaged checkpoint: .*step_0000004/{rel}.*using .*step_0000002"
    with pytest.warns(RuntimeWarning, match=skipped):
        assert ckpt.find_latest(run) == _step(run, 2)

    # The checkpoint folder itself: exit 2, one line naming the damaged file.
    args = ["--data", str(made["val"]), "--json", "--no-progress"]
    assert main(["evaluate", "--checkpoint", str(newest), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rm-registry: error: ") and f"step_0000004/{rel}: damaged" in err[0]
    # The run folder: the newest intact checkpoint, with a warning about the skipped one.
    assert main(["evaluate", "--checkpoint", str(run), *args]) == 0
    captured = capsys.readouterr()
    assert "rm-registry: warning: skipping a damaged checkpoint" in captured.err and "Traceback" not in captured.err
    assert json.loads(captured.out)["num_pairs"] == 8


@pytest.mark.slow
def test_resume_skips_a_damaged_checkpoint_and_can_be_pointed_at_one(run: Path, made: dict[str, Path],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _truncate(_step(run, 4) / "state" / "rank_00000.pt")
    common = ["binary_ranking", "--data", str(made["train"]), "--no-progress", *TINY]
    assert main(["train", *common, "--output", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "skipping a damaged checkpoint" in err and "state/rank_00000.pt" in err
    assert f"resuming from step 2 (checkpoint {_step(run, 2)})" in err
    ckpt.verify_checkpoint(_step(run, 4))  # saved again, intact

    # --resume-from a checkpoint folder of the run (the run folder is inferred); steps 3-4 again.
    assert main(["train", *common, "--resume-from", str(_step(run, 2))]) == 0
    assert f"resuming from step 2 (checkpoint {_step(run, 2)})" in capsys.readouterr().err
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]

    # ... but not one of another run, and not a damaged one (exit 2, naming the file).
    assert main(["train", *common, "--output", str(run), "--resume-from", str(_step(made["run"], 2))]) == 2
    assert "not a checkpoint of the run" in capsys.readouterr().err
    _flip_a_byte(_step(run, 2) / "weights" / "__0_0.distcp")
    assert main(["train", *common, "--resume-from", str(_step(run, 2))]) == 2
    assert "step_0000002/weights/__0_0.distcp: damaged checkpoint file" in capsys.readouterr().err


@pytest.mark.slow
def test_every_checkpoint_damaged_is_refused_not_restarted(run: Path, made: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    for step in (2, 4):
        (_step(run, step) / "weights" / ".metadata").write_bytes(b"")
    metrics = (run / "metrics.jsonl").read_text()
    assert main(["train", "binary_ranking", "--data", str(made["train"]), "--output", str(run), "--resume",
                 "--no-progress", *TINY]) == 2
    err = capsys.readouterr().err
    assert "every checkpoint is damaged" in err and "step_0000002/weights/.metadata" in err
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing started over


@pytest.mark.slow
def test_checkpoint_saved_before_manifests_still_loads(run: Path) -> None:
    folder = _step(run, 4)
    marker = json.loads((folder / ckpt.MARKER).read_text())
    del marker["files"]
    (folder / ckpt.MARKER).write_text(json.dumps(marker))
    ckpt.verify_checkpoint(folder)  # nothing recorded, nothing checked
    assert ckpt.find_latest(run) == folder


@pytest.mark.slow
def test_torn_last_metrics_line_is_dropped_with_a_warning(run: Path, made: dict[str, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from rm_registry.engine.trainer._loggers import MetricsLog

    metrics = run / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"step": 5, "split": "tra')  # power cut in the middle of a line
    n = len(whole.splitlines()) + 1
    with pytest.warns(RuntimeWarning, match=rf"metrics.jsonl:{n}: dropped a torn last line"):
        MetricsLog(metrics, enabled=True, keep_until_step=4).close()
    assert metrics.read_text() == whole
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]

    # A bad line that is not the last one is damage to repair, named with its line number.
    lines = whole.splitlines()
    metrics.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    assert main(["train", "binary_ranking", "--data", str(made["train"]), "--output", str(run), "--resume",
                 "--no-progress", *TINY]) == 2
    assert "metrics.jsonl:2: not a JSON object" in capsys.readouterr().err


@pytest.mark.slow
def test_run_files_follow_the_umask(made: dict[str, Path], tmp_path: Path) -> None:
    from rm_registry.engine.checkpoint._fs import atomic_write_text

    for name in ("config.yaml", "data_stats.json", "metrics.jsonl"):
        assert (made["run"] / name).stat().st_mode & 0o777 == 0o666 & ~_umask(), name
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_saving_a_checkpoint(build_model: Callable[..., Any], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: every fsync fails (DCP's writer, the trainer state, the marker)."""
    target = tmp_path / "run" / "checkpoints" / "step_0000002"
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(StorageError, match=r"cannot write checkpoint .*step_0000002: No space left on device") as info:
        ckpt.save_checkpoint(target, build_model(), state={"step": 2})
    assert info.value.errno == errno.ENOSPC
    assert list(target.parent.iterdir()) == []  # the temporary folder is gone


@pytest.mark.slow
def test_full_disk_for_run_files_and_score_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  made: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from rm_registry.engine.checkpoint._fs import atomic_write_text
    from rm_registry.engine.trainer._loggers import MetricsLog

    target = tmp_path / "config.yaml"
    target.write_text("old\n")
    with monkeypatch.context() as m:
        m.setattr(os, "replace", _enospc)
        with pytest.raises(StorageError, match=rf"cannot write {target}: No space left on device"):
            atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]

    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True, keep_until_step=None)

    class FullDisk:
        write = flush = close = staticmethod(_enospc)

    log._fh.close()
    log._fh = FullDisk()
    with pytest.raises(StorageError, match=r"cannot write .*metrics.jsonl: No space left on device"):
        log.write({"step": 1})
    log.close()

    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "hello"}\n')
    with monkeypatch.context() as m:
        m.setattr(os, "replace", _enospc)
        assert main(["score", "--checkpoint", str(made["run"]), "--data", str(texts), "--output",
                     str(tmp_path / "scores.jsonl"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rm-registry: error: cannot write {tmp_path / 'scores.jsonl'}: No space left on device"]


@pytest.mark.slow
def test_unwrapped_os_error_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch, made: dict[str, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import rm_registry._engine_cli as engine_cli

    def denied(args: Any) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/somewhere/file")

    monkeypatch.setattr(engine_cli, "_evaluate", denied)
    assert main(["evaluate", "--checkpoint", str(made["run"]), "--data", str(made["val"])]) == 1
    assert capsys.readouterr().err == "rm-registry: error: /somewhere/file: Permission denied\n"


def test_stopped_while_replacing_a_checkpoint_keeps_the_old_one(build_model: Callable[..., Any], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped between the two renames of a save that replaces a step: the previous folder comes back."""
    target = ckpt.save_checkpoint(tmp_path / "checkpoints" / "step_0000002", build_model(), state={"step": 2})
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(src).name == ".step_0000002.tmp":  # target -> .old done, .tmp -> target not yet
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(target, build_model(seed=5), state={"step": 2})
    monkeypatch.undo()
    assert ckpt.find_latest(tmp_path) == target and sorted(p.name for p in target.parent.iterdir()) == ["step_0000002"]
