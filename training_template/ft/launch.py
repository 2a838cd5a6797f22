"""How the run is laid out: one process per GPU of every node, its steps, its logging."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping

from ft.config_io import Hyperparameters
from ft.errors import TemplateError

MASTER_PORT = 29500


def distributed_launch_command(
    gpu_count: int, environ: Mapping[str, str], script: str, python: str = sys.executable
) -> list[str] | None:
    """The torchrun command that uses every GPU of every node, or None to run as is.

    None when already launched by torchrun (LOCAL_RANK set) or when one process is
    enough (at most one GPU on a single node). Multi-node jobs read Baseten's
    BT_GROUP_SIZE, BT_NODE_RANK and BT_LEADER_ADDR.
    """
    if "LOCAL_RANK" in environ:
        return None
    try:
        nnodes = int(environ.get("BT_GROUP_SIZE") or 1)
    except ValueError:
        raise TemplateError(f"BT_GROUP_SIZE={environ['BT_GROUP_SIZE']!r} is not a number") from None
    if gpu_count <= 1 and nnodes <= 1:
        return None
    command = [python, "-m", "torch.distributed.run", f"--nproc_per_node={max(gpu_count, 1)}"]
    if nnodes > 1:
        leader = environ.get("BT_LEADER_ADDR")
        if not leader:
            raise TemplateError(f"BT_GROUP_SIZE={nnodes} but BT_LEADER_ADDR is not set")
        command += [
            f"--nnodes={nnodes}",
            f"--node_rank={environ.get('BT_NODE_RANK') or 0}",
            f"--master_addr={leader}",
            f"--master_port={MASTER_PORT}",
        ]
    return [*command, script]


def expected_optimizer_steps(num_examples: int, hp: Hyperparameters, world_size: int = 1) -> int:
    """Optimizer steps the trainer takes: ceil(ceil(N / global batch) / accumulation) per epoch."""
    batches = math.ceil(num_examples / (hp.batch_size * world_size))
    per_epoch = max(math.ceil(batches / hp.gradient_accumulation_steps), 1)
    return per_epoch * hp.num_epochs


def configure_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
