"""Names users bring from TRL / transformers' ``TrainingArguments``, mapped to ours for hints.

``train --max_steps 5`` and ``learning_rate=1e-5`` are refused (unknown option, unknown key) with
the equivalent here: ``trainer.rm.max_steps=5``, ``model.optim.lr=1e-5``. No torch, no engine.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["TRL_NAMES", "flag_hint", "key_hint"]

#: TRL / TrainingArguments name -> (our key, option or fixed ``KEY=VALUE``, a note or None).
TRL_NAMES: dict[str, tuple[str, str | None]] = {
    "learning_rate": ("model.optim.lr", None),
    "max_steps": ("trainer.rm.max_steps", None),
    "num_train_epochs": ("trainer.rm.max_epochs", "with trainer.rm.max_steps=-1"),
    "per_device_train_batch_size": ("model.micro_batch_size", None),
    "per_device_eval_batch_size": ("model.micro_batch_size", "evaluation uses the training micro-batch size"),
    "gradient_accumulation_steps": ("model.global_batch_size",
                                    "model.global_batch_size = micro_batch_size x accumulation steps x data-parallel "
                                    "size; set it, the accumulation follows"),
    "max_length": ("model.encoder_seq_length", None),
    "warmup_steps": ("model.optim.sched.warmup_steps", None),
    "warmup_ratio": ("model.optim.sched.warmup_steps", "a number of steps, not a ratio: ratio x trainer.rm.max_steps"),
    "weight_decay": ("model.optim.weight_decay", None),
    "max_grad_norm": ("trainer.rm.gradient_clip_val", None),
    "bf16": ("trainer.precision=bf16-mixed", "bf16 compute, float32 main weights"),
    "fp16": ("trainer.precision=16-mixed", None),
    "seed": ("seed", None),
    "eval_steps": ("trainer.rm.val_check_interval", None),
    "save_steps": ("trainer.rm.save_interval", None),
    "lr_scheduler_type": ("model.optim.sched.name", None),
    "output_dir": ("--output", None),
    "model_name_or_path": ("--pretrained", None),
    "dataset_name": ("--data", "a local file, or hf://ORG/NAME[:SPLIT] from the local Hugging Face cache"),
}


#: Names whose value means something else here (a ratio, a count of accumulation steps): shown as ``...``.
_OTHER_VALUE = {"gradient_accumulation_steps", "warmup_ratio", "per_device_eval_batch_size"}


def _normal(name: str) -> str:
    return name.lstrip("-").split("=", 1)[0].replace("-", "_").lower()


def _advice(name: str, value: str | None) -> str | None:
    found = TRL_NAMES.get(_normal(name))
    if found is None:
        return None
    ours, note = found
    if _normal(name) in _OTHER_VALUE:
        value = None
    if ours.startswith("--"):
        use = f"{ours} {value}" if value else ours
    elif "=" in ours:  # a fixed value (bf16 -> trainer.precision=bf16-mixed)
        use = ours
    else:
        use = f"{ours}={value if value is not None else '...'}"
    return f"TRL's {_normal(name)} is {use} here" + (f" ({note})" if note else "")


def flag_hint(extras: Sequence[str]) -> str | None:
    """The hint for the first TRL-style option among unrecognized command-line words, or None."""
    for i, word in enumerate(extras):
        if not word.startswith("--"):
            continue
        value = word.split("=", 1)[1] if "=" in word else (
            extras[i + 1] if i + 1 < len(extras) and not extras[i + 1].startswith("-") else None)
        advice = _advice(word, value)
        if advice:
            return f"unrecognized option {word.split('=', 1)[0]}: {advice}"
    return None


def key_hint(key: str, value: object = None) -> str | None:
    """``"TRL's learning_rate is model.optim.lr=1e-05 here"`` for an unknown key named like TRL's, else None."""
    if key.split(".")[-1] not in TRL_NAMES:
        return None
    return _advice(key.split(".")[-1], None if value is None else str(value))
