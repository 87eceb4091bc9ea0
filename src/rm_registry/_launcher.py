"""``rm-registry launch``: torchrun for ``train``, ``evaluate``, ``score`` and ``serve``, with one-line errors.

``torchrun -m rm_registry ...`` works, but when a process fails torchrun's own process ends
with a ``ChildFailedError`` traceback after our one-line error (that traceback is printed by
torchrun's process, which our code does not run in). ``rm-registry launch [torchrun options]
COMMAND ...`` starts the same processes through torchrun's own launcher, in this process, and
turns a failure into one summary line and the failed process's exit code, and a SIGTERM or
Ctrl-C sent to it into the workers' stop line and exit code 143 or 130 (torchrun would add its
``SignalException`` traceback).

Importing this module is cheap; torch is imported by the handler.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["add_launch"]

_COMMANDS = ("train", "evaluate", "score", "serve")
#: Commands that run in one process: launch names them and says how to run them.
_SINGLE = {"export": "a checkpoint of any tensor-parallel layout exports in one process",
           "cache": "it works on files only", "list": "it imports nothing", "info": "it imports nothing",
           "check": "it runs the conformance checks in one process"}


def add_launch(subparsers: Any) -> None:
    """Add ``launch`` to the ``rm-registry`` parser."""
    p = subparsers.add_parser(
        "launch",
        help="run train, evaluate, score or serve on several processes (torchrun), with one-line errors",
        description="Start `rm-registry COMMAND ...` on several processes with torchrun's launcher: the "
        "options before COMMAND are torchrun's (--nproc-per-node, --nnodes, --master-port, ...). Unlike "
        "`torchrun -m rm_registry`, a failed process ends the launch with one line and its exit code, not "
        "torchrun's ChildFailedError traceback.",
        epilog="example: rm-registry launch --nproc-per-node 2 train binary_ranking --data prefs.jsonl "
        "--output runs/dp2 model.micro_batch_size=4",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="[TORCHRUN OPTIONS] COMMAND ...",
                   help="torchrun options, then train, evaluate, score or serve and their arguments")
    p.set_defaults(func=_launch, accepts_anything=True)


def _launch(args: argparse.Namespace) -> int:
    from ._errors import ConfigError

    raw = list(args.raw_argv)
    argv = raw[raw.index("launch") + 1:]  # argparse would take torchrun's leading options for ours
    at = next((i for i, word in enumerate(argv) if word in _COMMANDS), None)
    single = next((word for word in argv if word in _SINGLE), None)
    if at is None and single is not None:
        rest = argv[argv.index(single):]
        raise ConfigError(f"launch: {single} is not launched on several processes ({_SINGLE[single]}); run it as "
                          f"`rm-registry {' '.join(rest)}`. launch runs {', '.join(_COMMANDS)}")
    if at is None:
        raise ConfigError("launch: name the command to run: rm-registry launch [torchrun options] "
                          f"{'|'.join(_COMMANDS)} ... (for example --nproc-per-node 2 train binary_ranking)")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    launch_args = get_args_parser().parse_args([*argv[:at], "-m", "rm_registry", *argv[at:]])
    # The elastic agent logs every failure once more, as a multi-line report: our processes
    # already printed their one-line errors.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(launch_args)
    except SignalException as exc:
        # SIGTERM / SIGINT reached the launcher: torchrun has stopped the workers with it (rank 0
        # printed the stop line); torchrun's own process would end with this exception's traceback.
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, first = exc.get_first_failure()
        code = first.exitcode if first.exitcode > 0 else 1
        how = f"exit code {first.exitcode}" if first.exitcode >= 0 else f"signal {-first.exitcode}"
        print(f"rm-registry: error: launch: {len(exc.failures)} of the {launch_args.nproc_per_node} process(es) "
              f"per node failed, first rank {rank} with {how}; the error lines above say why", file=sys.stderr)
        return code
    return 0
