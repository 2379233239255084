"""What DeepSpeed and FSDP (as the HF Trainer and accelerate run them) need from the iteration loop.

The loop makes a new Trainer for every iteration in one process, loads whole models to generate
and evaluate, and saves each iteration model as an ordinary directory. Under the sharding engines
each of those needs a step of its own, all here:
- before_trainer: accelerate refuses a second DeepSpeed Accelerator in a process; ZeRO-3's zero.Init
  needs DeepSpeed's communication set up before the model is loaded (on GPUs accelerate does it;
  on CPU, where it does not, here).
- whole_models: HF partitions every model made while ZeRO-3 arguments exist; ours that generate
  and evaluate must not be.
- trained_model: the parameters gathered from every rank into an ordinary model on rank 0.
"""

from __future__ import annotations

import contextlib
import os

from transformers import AutoModelForCausalLM

from itertrain.core.errors import UsageError
from itertrain.runtime import dist


def notes(targs) -> list[str]:
    """What the user should know about the engine flags on this machine (for the banner)."""
    import torch

    if targs.fsdp and (targs.use_cpu or not torch.cuda.is_available()):
        return ["--fsdp is set, but accelerate runs FSDP only on GPUs (and similar accelerators), not on CPU "
                "processes: this run is plain data parallelism (DDP), its checkpoints hold the full state"]
    return []


def require(targs) -> None:
    """Engine flags this launch cannot honour: a one-line error before anything is written (the
    HF Trainer would raise only once the first iteration's samples are made)."""
    from transformers.training_args import ParallelMode

    if targs.fsdp and targs.parallel_mode != ParallelMode.DISTRIBUTED:
        raise UsageError("--fsdp needs a distributed launch: start it with torchrun on a GPU machine (torchrun "
                         "--nproc_per_node=N train_iterative.py ...); on CPU accelerate runs no FSDP")


def before_trainer(targs) -> None:
    """Every rank, before each iteration's Trainer is made."""
    if not targs.deepspeed:
        return
    # accelerate keeps one AcceleratorState per process and refuses a second DeepSpeed Accelerator
    # ("You cannot pass in a deepspeed_plugin when creating a second Accelerator"). Reset it,
    # keeping the process group (PartialState), as accelerate's own multi-model tests do.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    if dist.world_size() > 1:
        import torch.distributed
        from deepspeed import comm

        if not comm.is_initialized():  # over the existing process group, not a new one
            comm.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)


@contextlib.contextmanager
def whole_models():
    """Models made inside are not partitioned by ZeRO-3's zero.Init. HF decides that from one
    module-level weak reference to the DeepSpeed config (transformers.integrations.deepspeed); it
    is set aside here and put back after (HF has a public unset, but no public way to put the same
    object back: its getter returns the config dict, not the object)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    kept = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = kept


def _fsdp_module_dir(checkpoint: str) -> str:
    from accelerate.utils.constants import FSDP_MODEL_NAME

    return os.path.join(checkpoint, f"{FSDP_MODEL_NAME}_0")  # where accelerate's save_fsdp_model puts them


def fsdp_shards_only(checkpoint: str) -> bool:
    """Whether a checkpoint holds its module weights only as FSDP SHARDED_STATE_DICT files
    (pytorch_model_fsdp_0/, through torch.distributed.checkpoint) and no HF model (no config.json)."""
    return os.path.isdir(_fsdp_module_dir(checkpoint)) and not os.path.exists(os.path.join(checkpoint, "config.json"))


def load_fsdp_weights(model, checkpoint: str) -> None:
    """The module weights of such a checkpoint (keyed "model", as accelerate writes them) into an
    ordinary model, on every rank (DCP reads whatever layout was written into whole tensors). For a
    checkpoint at its iteration's last step: HF's resume, which would run FSDP's loader, is not
    called then."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=_fsdp_module_dir(checkpoint))
    model.load_state_dict(state["model"])


def trained_model(trainer):
    """The trained weights as an ordinary (unsharded) model on rank 0, None on the others; every
    rank must call this. Under FSDP and DeepSpeed ZeRO-3 each rank holds only a part of the
    parameters: accelerate's get_state_dict gathers them (a collective; ZeRO-3 needs
    "stage3_gather_16bit_weights_on_model_save": true, as HF's own save_model does) into a fresh
    model. Elsewhere every rank has the whole model: trainer.model itself."""
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    if not (trainer.is_fsdp_enabled or zero3):
        return trainer.model if dist.is_main() else None
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped if zero3 else trainer.model)
    if not dist.is_main():
        return None
    inner = trainer.accelerator.unwrap_model(trainer.model)
    with whole_models():
        model = AutoModelForCausalLM.from_config(inner.config, dtype=next(iter(state.values())).dtype)
    model.load_state_dict(state)
    return model.to(trainer.args.device).eval()  # evaluated where training ran


