"""Known-harmless warnings of megatron-core and torch, silenced in one place.

On a machine without Transformer Engine or Apex (every CPU install, and the pure-torch GPU
path), importing and running megatron-core 0.16 emits warnings that say nothing to an
rm-registry user: "Transformer Engine and Apex are not installed. Falling back to ...",
megatron deprecations triggered by megatron's own defaults (``cuda_graph_scope="full"``,
``tp_group`` not passed by its own layers), and torch deprecations triggered inside torch or
megatron's checkpointing (``ShardedTensor``, ``torch.jit.script_method``). ``rm-registry train``
printed several of them on every run, ``rm-registry check`` dozens, pytest hundreds.

Each filter below matches one message (a regular expression matched at the start of the message,
case-insensitively), one category, and the modules it comes from (a regular expression matched at
the start of the module the warning is attributed to). Nothing else is hidden: a warning from our
code, from a plugin, or a new one from megatron-core still shows.

:func:`install` runs when :mod:`rm_registry.engine` is first imported (before any engine module
imports megatron-core). The same filters are listed for pytest in the root ``pyproject.toml``
(``[tool.pytest.ini_options] filterwarnings``, kept equal to :func:`pytest_filter_lines` by
``tests/engine/test_warnings.py``), because pytest resets the filters around every test.

This module imports neither torch nor megatron-core.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

__all__ = ["KNOWN_HARMLESS", "HarmlessWarning", "install", "pytest_filter_lines"]


class HarmlessWarning(NamedTuple):
    """One known-harmless third-party warning."""

    #: Regular expression matched at the start of the message (case-insensitive); no ``:`` and
    #: no ``'`` (pytest's filter syntax and TOML literal strings).
    message: str
    category: type[Warning]
    #: Regular expression matched at the start of the module the warning is attributed to.
    module: str
    #: Why it can be ignored.
    why: str


KNOWN_HARMLESS: tuple[HarmlessWarning, ...] = (
    HarmlessWarning(
        r"Transformer Engine and Apex are not installed\. Falling back to ",
        UserWarning,
        r"megatron\.core\.",
        "import-time notice; the local/torch implementations are the ones rm-registry uses",
    ),
    HarmlessWarning(
        r"Apex is not installed\. Falling back to Torch Norm",
        UserWarning,
        r"megatron\.core\.",
        "import-time notice; the engine builds the local (torch) layer spec on purpose",
    ),
    HarmlessWarning(
        r"full scope is deprecated\. Use empty cuda_graph_scope",
        UserWarning,
        r"megatron\.core\.transformer\.transformer_config",
        "triggered by TransformerConfig's own default cuda_graph_scope='full'; no CUDA graphs are used",
    ),
    HarmlessWarning(
        r"Warning. tp_group is None, using default tp group",
        DeprecationWarning,
        r"megatron\.core\.",
        "megatron's own layers do not pass tp_group yet; the default group is the right one",
    ),
    HarmlessWarning(
        r"MLP requires ffn_hidden_size, but it was not provided\. Using\s+config\.ffn_hidden_size",
        DeprecationWarning,
        r"megatron\.core\.transformer\.",
        "megatron's own layer spec omits it; the engine sets config.ffn_hidden_size",
    ),
    HarmlessWarning(
        r"The following imports from `dynamic_context\.py` will be removed",
        DeprecationWarning,
        r"megatron\.core\.inference\.",
        "import-time notice about megatron's own inference package",
    ),
    HarmlessWarning(
        r"The .megatron\.core\.transformer\.custom_layers\.transformer_engine.\s+module is deprecated",
        DeprecationWarning,
        r"megatron\.core\.",
        "import-time notice: megatron imports its own deprecated module",
    ),
    HarmlessWarning(
        r"Please use DTensor instead and we are deprecating ShardedTensor",
        FutureWarning,
        r"torch\.distributed\.checkpoint\.",
        "megatron's dist_checkpointing saves ShardedTensors through torch DCP",
    ),
    HarmlessWarning(
        r"`load_state_dict` is deprecated and will be removed in future versions\. Please use `load`",
        FutureWarning,
        r"megatron\.core\.dist_checkpointing\.",
        "megatron's dist_checkpointing calls the old torch DCP function",
    ),
    HarmlessWarning(
        r"`torch\.jit\.script_method` is deprecated\. Please switch to `torch\.compile`",
        DeprecationWarning,
        r"torch\.jit\._script",
        "emitted while torch imports its own torch.utils.mkldnn (pulled in via torch._inductor)",
    ),
)


def install() -> None:
    """Ignore the :data:`KNOWN_HARMLESS` warnings in this process.

    Idempotent; calling it again moves the filters back to the front of the filter list (ahead
    of a later ``simplefilter("always")``, say).
    """
    for known in reversed(KNOWN_HARMLESS):
        warnings.filterwarnings("ignore", message=known.message, category=known.category, module=known.module)


def pytest_filter_lines() -> list[str]:
    """The :data:`KNOWN_HARMLESS` filters as pytest ``filterwarnings`` ini lines."""
    lines = []
    for known in KNOWN_HARMLESS:
        line = f"ignore:{known.message}:{known.category.__name__}:{known.module}"
        assert line.count(":") == 3 and "'" not in line, f"{known.message!r}: no ':' nor \"'\" allowed"
        lines.append(line)
    return lines
