"""Checkpoints: bit-identical round trip, atomicity under interruption, finding the latest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rm_registry import ConfigError
from rm_registry.engine import checkpoint as ckpt


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 258, (4, 9), generator=g), torch.tensor([9, 4, 1, 7])


@pytest.mark.slow
def test_round_trip_is_bit_identical(build_model, tmp_path: Path) -> None:
    model = build_model(num_outputs=2)
    tokens, lengths = _batch()
    rewards = model(tokens, lengths)
    state = {"step": 7, "rng": torch.get_rng_state(), "note": "x"}
    path = ckpt.save_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000007", model,
                                extra_files={"config.yaml": "seed: 1\n", "tokenizer/meta.json": b"{}"},
                                state=state)
    assert ckpt.is_complete(path)
    assert (path / "config.yaml").read_text() == "seed: 1\n" and (path / "tokenizer" / "meta.json").read_bytes() == b"{}"
    assert ckpt.checkpoint_info(path)["tensor_model_parallel_size"] == 1
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())

    other = build_model(num_outputs=2, seed=99)
    assert not torch.equal(other(tokens, lengths), rewards)
    loaded = ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "run"), other)
    assert torch.equal(other(tokens, lengths), rewards)
    assert loaded["step"] == 7 and loaded["note"] == "x" and torch.equal(loaded["rng"], state["rng"])

    # A model of another shape is refused with a message naming the folder.
    with pytest.raises(ConfigError, match=r"step_0000007: the checkpoint's weights do not fit"):
        ckpt.load_checkpoint(path, build_model(num_outputs=3))

    # Saving again over an existing checkpoint replaces it atomically.
    model2 = build_model(num_outputs=2, seed=5)
    ckpt.save_checkpoint(path, model2)
    assert ckpt.load_checkpoint(path, other) == {}
    assert torch.equal(other(tokens, lengths), model2(tokens, lengths))


@pytest.mark.slow
def test_interrupted_save_leaves_nothing_complete(build_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model()
    run = tmp_path / "run"
    first = ckpt.save_checkpoint(run / "checkpoints" / "step_0000002", model, state={"step": 2})

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the trainer state")

    with monkeypatch.context() as m:  # interrupted after the weights, before the marker
        m.setattr(torch, "save", boom)
        with pytest.raises(KeyboardInterrupt):
            ckpt.save_checkpoint(run / "checkpoints" / "step_0000004", model, state={"step": 4})
    target = run / "checkpoints" / "step_0000004"
    leftover = run / "checkpoints" / ".step_0000004.tmp"
    assert not target.exists() and not leftover.exists()  # the interrupted save removed its temporary folder
    assert ckpt.find_latest(run) == first

    with monkeypatch.context() as m:  # interrupted at the very end: marker written, not renamed
        m.setattr(ckpt, "_publish", boom)
        with pytest.raises(KeyboardInterrupt):
            ckpt.save_checkpoint(target, model, state={"step": 4})
    assert not target.exists() and not leftover.exists() and ckpt.find_latest(run) == first

    # A save killed by SIGKILL leaves its temporary folder, marker included: ignored, then replaced.
    (leftover / "weights").mkdir(parents=True)
    (leftover / ckpt.MARKER).write_text((first / ckpt.MARKER).read_text())
    (leftover / "weights" / "metadata.json").write_text("{}")
    assert not ckpt.is_complete(leftover) and ckpt.find_latest(run) == first
    assert ckpt.save_checkpoint(target, model, state={"step": 4}) == target.absolute()
    assert not leftover.exists() and ckpt.find_latest(run) == target


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_saving_a_step_again_leaves_nothing_of_the_earlier_save(build_model, tmp_path: Path) -> None:
    tokens, lengths = _batch()
    target = tmp_path / "run" / "checkpoints" / "step_0000004"
    ckpt.save_checkpoint(target, build_model(), state={"step": 4},
                         extra_files={"config.yaml": "first\n", "notes/only_first.txt": "stale"})
    assert (target / "state" / "rank_00000.pt").is_file() and (target / "notes" / "only_first.txt").is_file()

    second = build_model(seed=5)
    ckpt.save_checkpoint(target, second, extra_files={"config.yaml": "second\n"})  # no state this time
    fresh = ckpt.save_checkpoint(tmp_path / "fresh" / "step_0000004", second, extra_files={"config.yaml": "second\n"})
    # Exactly the files of the same save into an empty folder: no state, no file only the first save wrote.
    assert _files(target) == _files(fresh)
    assert not (target / "state" / "rank_00000.pt").exists() and not (target / "notes").exists()
    assert (target / "config.yaml").read_text() == "second\n"
    assert ckpt.checkpoint_info(target)["has_state"] is False
    assert sorted(p.name for p in target.parent.iterdir()) == ["step_0000004"]  # no .tmp / .old left
    other = build_model(seed=9)
    assert ckpt.load_checkpoint(target, other) == {}
    assert torch.equal(other(tokens, lengths), second(tokens, lengths))


def _fake_complete(path: Path) -> Path:
    (path / "weights").mkdir(parents=True)
    (path / "weights" / "metadata.json").write_text("{}")
    (path / ckpt.MARKER).write_text(json.dumps({"format": ckpt.FORMAT, "complete": True}))
    return path


def test_find_latest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"run: no such checkpoint or run folder"):
        ckpt.find_latest(run)
    run.mkdir()
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"run: no checkpoint found"):
        ckpt.find_latest(run)
    (run / "checkpoints" / "step_0000100").mkdir(parents=True)  # incomplete
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"only incomplete ones \(step_0000100\)"):
        ckpt.find_latest(run)
    s9 = _fake_complete(run / "checkpoints" / "step_0000009")
    s20 = _fake_complete(run / "checkpoints" / "step_0000020")
    assert ckpt.find_latest(run) == s20  # numeric order, incomplete step 100 skipped
    assert ckpt.find_latest(run / "checkpoints") == s20
    assert ckpt.find_latest(s9) == s9


def test_cli_refuses_a_missing_or_incomplete_checkpoint_with_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rm_registry._cli import main

    data = tmp_path / "v.jsonl"
    data.write_text('{"text": "hi"}\n')
    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000003").mkdir(parents=True)  # an interrupted save
    torn = _fake_complete(tmp_path / "torn")
    (torn / ckpt.MARKER).write_text("{trunc")
    cases = [(tmp_path / "nothing", "no such checkpoint or run folder"),
             (run, "found only incomplete ones (step_0000003)"),
             (torn, "no checkpoint found")]
    for path, fragment in cases:
        for command in (["evaluate", "--checkpoint", str(path), "--data", str(data)],
                        ["score", "--checkpoint", str(path), "--data", str(data), "--output", str(tmp_path / "o.jsonl")]):
            assert main(command) == 2, command
            out, err = capsys.readouterr()
            assert out == "" and err.startswith("rm-registry: error: ") and err.count("\n") == 1, err
            assert str(path) in err and fragment in err, err
            assert not (tmp_path / "o.jsonl").exists()


def test_is_complete_rejects_bad_markers(tmp_path: Path) -> None:
    path = _fake_complete(tmp_path / "step_0000001")
    assert ckpt.is_complete(path)
    (path / ckpt.MARKER).write_text("{truncated")
    assert not ckpt.is_complete(path)
    (path / ckpt.MARKER).write_text(json.dumps({"format": ckpt.FORMAT, "complete": True}))
    (path / "weights" / "metadata.json").unlink()
    assert not ckpt.is_complete(path)
    with pytest.raises(ckpt.CheckpointNotFoundError, match="not a complete checkpoint"):
        ckpt.checkpoint_info(path)


def test_extra_files_must_stay_inside(build_model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be a relative path"):
        ckpt.save_checkpoint(tmp_path / "c", build_model(), extra_files={"../evil": "x"})
    with pytest.raises(ValueError, match="clashes"):
        ckpt.save_checkpoint(tmp_path / "c", build_model(), extra_files={"weights/x": "x"})
