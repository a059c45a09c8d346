"""FSDP on CPU: Accelerate turns an FSDP config into plain DDP when there is no accelerator device.

Try it: ``hfpipe run recipes/tiny.yaml --only pretrain pretrain.num_processes=2 pretrain.accelerate_config=fsdp`` on a
machine without a GPU (tests/test_cluster.py::test_fsdp_on_cpu_matches_ddp_and_resumes_from_its_sharded_checkpoint).

``accelerate launch --config_file hfpipe/accelerate/fsdp.yaml`` exports ``ACCELERATE_USE_FSDP=true``, but
``AcceleratorState`` switches to FSDP only for GPU-like device types: with ``Accelerator(cpu=True)`` it stays
``MULTI_CPU`` (gloo) and ``prepare`` wraps the model in DDP, silently (measured with accelerate 1.x: a checkpoint held
``model.safetensors`` + ``optimizer.bin``, no shards). torch itself runs FSDP2 (``fully_shard``) on CPU over gloo, so
:func:`enable` sets the state to FSDP with the plugin accelerate reads from the same environment (``FSDP_*``), before
``prepare``: the model is sharded (DTensor parameters) and ``save_state`` writes torch.distributed.checkpoint shards
(``pytorch_model_fsdp_0/``, ``optimizer_0/``), one per rank, which ``load_state`` resumes from.
"""

from __future__ import annotations

import os


def enable(accelerator) -> bool:
    """Make a CPU run that the launcher configured for FSDP really use FSDP; True when it switched."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or \
            accelerator.distributed_type != DistributedType.MULTI_CPU:
        return False
    # AcceleratorState copies PartialState's distributed_type whenever it is instantiated again (prepare does): set both
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
    return True
