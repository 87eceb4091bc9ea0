"""TRL's PRM tokenization, vendored as the reference ours must equal.

Copied from huggingface/trl v0.19.1, ``trl/trainer/prm_trainer.py``, ``PRMTrainer.tokenize_row``
(Apache-2.0), the last release line that ships the trainer outside ``trl.experimental``; only the
docstring is shortened. The arithmetic is theirs, line for line.
"""

from __future__ import annotations

from itertools import chain


def tokenize_row(features, tokenizer, step_separator, max_length, max_prompt_length, max_completion_length,
                 train_on_last_step_only, is_eval):
    # Tokenize the prompt and completions
    prompt_ids = tokenizer(features["prompt"], add_special_tokens=False)["input_ids"]
    completions_ids = [
        tokenizer(completion, add_special_tokens=False)["input_ids"] for completion in features["completions"]
    ]
    if train_on_last_step_only and not is_eval:
        labels = [-100] * (len(features["labels"]) - 1) + [int(features["labels"][-1])]
    else:
        labels = [int(label) for label in features["labels"]]

    # Get the ID of the separator token and add it to the completions
    separator_ids = tokenizer.encode(step_separator, add_special_tokens=False)
    completions_ids = [completion + separator_ids for completion in completions_ids]

    # Create the label
    labels = [[-100] * (len(completion) - 1) + [label] for completion, label in zip(completions_ids, labels)]

    # Join the completions and labels steps
    completion_ids = list(chain(*completions_ids))
    labels = list(chain(*labels))

    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids

    # Truncate prompt and completion sequences
    if max_prompt_length is not None:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if max_completion_length is not None:
        completion_ids = completion_ids[:max_completion_length]
        labels = labels[:max_completion_length]

    input_ids = prompt_ids + completion_ids
    labels = [-100] * len(prompt_ids) + labels

    if max_length is not None:
        input_ids = input_ids[:max_length]
        labels = labels[:max_length]

    return {"input_ids": input_ids, "labels": labels}
