"""``rm-binary-ranking``: the ``binary_ranking`` reward-model architecture for rm-registry.

A Bradley-Terry reward model: one scalar reward per sequence, trained so that the chosen
response of each preference pair scores higher than the rejected one. Registered under the
``reward_models`` entry-point group as ``binary_ranking``::

    >>> import rm_registry
    >>> plugin = rm_registry.get_reward_model("binary_ranking")   # doctest: +SKIP

Importing this package does not import torch.
"""

from __future__ import annotations

from ._plugin import BinaryRankingPlugin

__all__ = ["BinaryRankingPlugin", "plugin"]

#: The object the ``binary_ranking`` entry point names.
plugin = BinaryRankingPlugin()
