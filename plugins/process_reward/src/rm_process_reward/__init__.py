"""``rm-process-reward``: the ``process_reward`` reward-model architecture for rm-registry.

A process reward model (PRM) scores every step of a solution, as Math-Shepherd, PRM800K and
Qwen2.5-Math-PRM do: the backbone's head is read at the last token of each step, and trained to
tell good steps from bad ones. Registered under the ``reward_models`` entry-point group as
``process_reward``::

    >>> import rm_registry
    >>> plugin = rm_registry.get_reward_model("process_reward")   # doctest: +SKIP

Importing this package does not import torch.
"""

from __future__ import annotations

from ._plugin import ProcessRewardPlugin

__all__ = ["ProcessRewardPlugin", "plugin"]

#: The object the ``process_reward`` entry point names.
plugin = ProcessRewardPlugin()
