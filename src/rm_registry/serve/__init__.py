"""``rm-registry serve``: a reward server that RLHF frameworks call as they are (``[serve]`` extra).

One dynamic batcher (:mod:`._batcher`) is shared by one module per client dialect:

- :mod:`.openrlhf`: ``POST /get_reward`` (OpenRLHF ``--remote_rm_url``);
- :mod:`.vllm`: ``POST /pooling``, ``/classify``, ``/score``, ``GET /v1/models`` (verl, vLLM clients);
- :mod:`.kserve`: KServe v2 / Triton ``/v2/models/reward_model/infer`` (NeMo-Aligner, ``tritonclient``);

plus ``GET /health`` and ``GET /metrics`` (Prometheus). Rewards are those of ``rm-registry score``
for the same text. See docs/serving.md.

Importing this package is cheap; :func:`serve` imports the engine and the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.api import LoadedRewardModel
    from ._options import ServeOptions

__all__ = ["serve"]


def serve(model: LoadedRewardModel, options: ServeOptions) -> int:
    """Serve a loaded reward model (on every rank of a torchrun launch); returns the exit code.

    Global rank 0 serves HTTP; the other ranks run the batches it broadcasts until it stops.
    """
    if model.info.rank != 0:
        import signal

        from ._runner import ModelRunner

        # torchrun and Ctrl-C signal every rank; only rank 0 decides when to stop (after draining),
        # then releases the others.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        ModelRunner(model).follow()
        return 0
    from ._app import run_server

    return run_server(model, options)
