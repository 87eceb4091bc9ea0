"""rm-regression: multi-attribute (SteerLM / HelpSteer) reward models for rm-registry.

The object registered under the ``reward_models`` entry point ``regression`` is
:data:`plugin`. Importing this package does not import torch; ``plugin.model_class``
imports the model (torch, megatron-core) on first access.

    >>> from rm_regression import plugin
    >>> plugin.name
    'regression'
"""

from __future__ import annotations

from ._config import HELPSTEER_ATTRIBUTES, RegressionSettings
from ._plugin import RegressionPlugin

__all__ = ["HELPSTEER_ATTRIBUTES", "RegressionPlugin", "RegressionSettings", "plugin"]

#: The plugin instance (entry point ``regression = "rm_regression:plugin"``).
plugin = RegressionPlugin()
