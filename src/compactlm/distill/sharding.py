"""How the trained module is parallelised: DDP or FSDP2 (:func:`resolve_strategy`, :func:`wrap_model`).

FSDP2 for distillation: the sharded student and teacher, DCP shards, the gathered export.

The student (inside :class:`~compactlm.distill.student.DistillModule`) is sharded per decoder
layer, then at the root, which holds the embeddings, the final norm, the LM head that the
chunked loss applies inside ``forward`` and the intermediate-state projection. Its parameters
stay fp32 (the master weights, what AdamW updates); under bf16 training a
:class:`~torch.distributed.fsdp.MixedPrecisionPolicy` all-gathers them as bf16 for compute and
reduce-scatters the gradients in fp32. Unlike the DDP path, where autocast alone makes the
matmuls bf16, the norms, embeddings and residual stream then run in bf16 too (the usual FSDP
mixed precision: half the all-gather traffic).

The frozen teacher, by ``teacher_placement``: ``shard`` (per layer + the decoder body, in its
own dtype, run under the training autocast like the DDP path), ``offload`` (the same, shards
held in CPU memory and copied to the device layer by layer) or ``replicate`` (whole on each
device, as under DDP; ``--teacher-dtype bf16`` halves it). Its LM head stays whole on every
device: the chunked loss reads its weight outside any teacher forward. Sharding changes a
module in place, so a sharded teacher is a copy and the caller's model is never touched.

Checkpoints hold model and optimizer as DCP shards (:func:`save_shards`, :func:`load_shards`,
through ``torch.distributed.checkpoint.state_dict``); the export gathers a full state dict on
rank 0 (:func:`gathered_student`).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ..arch import adapter_for
from ..parallel import DistInfo
from ..sizing import choose_strategy
from .teacher import converted_copy

logger = logging.getLogger(__name__)


def device_mesh(info: DistInfo) -> DeviceMesh:
    """One flat mesh over all processes (FSDP shards over every rank)."""
    return init_device_mesh(info.device.type, (info.world_size,))


def shard_student(module: nn.Module, student: nn.Module, info: DistInfo, bf16: bool) -> nn.Module:
    """``fully_shard`` each decoder layer of ``student``, then ``module`` (the root); returns ``module``, now sharded."""
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    mesh = device_mesh(info)
    for layer in adapter_for(student.config).decoder_layers(student):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return module


def shard_teacher(model: nn.Module, info: DistInfo, dtype: torch.dtype, offload: bool) -> nn.Module:
    """A frozen copy of ``model`` in ``dtype``, its decoder layers and body sharded, its LM head whole on the device.

    ``model`` itself is left as it is (sharding is in place, and the teacher is only borrowed).
    """
    copy = converted_copy(model, torch.device("cpu"), dtype).eval().requires_grad_(False)
    adapter = adapter_for(copy.config)
    head, body = copy.get_submodule(adapter.lm_head), adapter.decoder_body(copy)
    if any(head.weight is p for p in body.parameters()):  # tied: the head keeps its own full copy
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    head.to(info.device)
    mesh = device_mesh(info)
    policy = CPUOffloadPolicy(pin_memory=info.device.type == "cuda") if offload else None
    kwargs = {"mesh": mesh, **({"offload_policy": policy} if policy is not None else {})}
    for layer in adapter.decoder_layers(copy):
        fully_shard(layer, **kwargs)
    fully_shard(body, **kwargs)
    return copy


def save_shards(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Model and optimizer state as DCP shards in the directory ``path``; a collective."""
    model_state, optim_state = get_state_dict(module, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))


def load_shards(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """The inverse of :func:`save_shards`, in place; a collective."""
    if optimizer is None:
        state = {"model": get_model_state_dict(module)}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(module, (), model_state_dict=state["model"], optim_state_dict={})
        return
    model_state, optim_state = get_state_dict(module, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def gathered_student(module: nn.Module, student: nn.Module, info: DistInfo) -> nn.Module | None:
    """A plain CPU copy of the sharded ``student`` on rank 0 (None elsewhere); a collective.

    The full state dict is gathered to rank 0's CPU memory (``full_state_dict``,
    ``cpu_offload``) and loaded into an empty model of the same class; buffers, which FSDP
    does not shard, are copied from the student (rotary ``inv_freq`` is not in a state dict).
    """
    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return None
    prefix = next(name for name, m in module.named_modules() if m is student)
    own = {k[len(prefix) + 1:]: v for k, v in full.items() if k.startswith(prefix + ".")}
    dtype = next(iter(own.values())).dtype
    with torch.device("meta"):
        plain = type(student)(student.config)
    plain.to_empty(device="cpu").to(dtype)
    plain.tie_weights()  # to_empty gives every parameter its own storage; tied heads share one again
    missing, unexpected = plain.load_state_dict(own, strict=False)
    tied = {name for name, _ in plain.named_parameters(remove_duplicate=False)} - {n for n, _ in plain.named_parameters()}
    assert not unexpected and set(missing) <= tied, (missing, unexpected)
    for name, buffer in student.named_buffers():
        plain.get_buffer(name).copy_(buffer.detach().cpu())
    return plain.eval()


def hand_back(trained: nn.Module, student: nn.Module) -> None:
    """Copy the weights of the sharded ``trained`` into the plain ``student`` (its original), on every process.

    One parameter at a time (``DTensor.full_tensor`` all-gathers it, a collective), written where the
    student's own parameter lives: peak extra memory is one full parameter, not the model.
    """

    plain = dict(student.named_parameters())
    with torch.no_grad():
        for name, p in trained.named_parameters():
            full = p.full_tensor() if isinstance(p, DTensor) else p
            plain[name].copy_(full.to(device=plain[name].device, dtype=plain[name].dtype))


def resolve_strategy(args, info: DistInfo, student: nn.Module, teacher: nn.Module | None, seq_len: int = 512,
                     precision: str = "fp32") -> str:
    """``ddp`` or ``fsdp``: what ``--strategy`` (``args.strategy``) means for this run.

    One process has nothing to shard: always ``ddp`` (the plain module). ``auto`` asks the
    memory model of ``compactlm plan`` (:func:`compactlm.sizing.choose_strategy`) with the run's
    sequence length and resolved precision. This is the one function that decides.
    """
    if not info.distributed:
        if args.strategy == "fsdp":
            logger.info("--strategy fsdp with one process: nothing to shard, training the plain model")
        return "ddp"
    if args.strategy != "auto":
        return args.strategy

    return choose_strategy(args, info, student, teacher, seq_len, precision)


def wrap_model(module: nn.Module, info: DistInfo, strategy: str = "ddp", *, student: nn.Module | None = None,
               bf16: bool = False) -> nn.Module:
    """``module`` as the training step calls it: itself for one process, DDP or FSDP2 for several.

    The one place that knows how the trainable module is parallelised. ``ddp`` returns a
    wrapper; validation, checkpoints and the export read the unwrapped ``module``. ``fsdp``
    shards ``student``'s decoder layers, then ``module``, in place
    (:func:`shard_student`): the result *is* ``module``, its
    parameters DTensors, so build the optimizer afterwards.
    """
    if not info.distributed:
        return module
    if strategy == "fsdp":
        assert student is not None, "fsdp shards the student's decoder layers: pass student="
        return shard_student(module, student, info, bf16)
    device = info.device
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but the last micro-batch of a step."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if last_micro_batch else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(last_micro_batch)
    return contextlib.nullcontext()


def norm_value(norm: torch.Tensor) -> float:
    """The norm ``clip_grad_norm_`` returned as a float: under FSDP it is a replicated DTensor (same on every rank)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
