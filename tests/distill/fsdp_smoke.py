"""torchrun entry for the FSDP smoke test: FSDP2-sharded student + chunked KD loss == unsharded, on gloo/CPU.

Each process shards the student's decoder layers and the root ``DistillModule`` (which holds
the embeddings, the tied LM head that the chunked loss reads inside ``forward``, and the
final norm), runs one distillation forward/backward on its half of the batch, and checks loss
and full gradients against a single unsharded module fed the whole batch. Prints "FSDP OK".
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_tiny_model  # noqa: E402

from compactlm.distill.losses import ChunkedLogitLoss, make_loss  # noqa: E402
from compactlm.distill.steps import next_token_labels  # noqa: E402
from compactlm.distill.student import DistillModule  # noqa: E402
from compactlm.distill.teacher import TeacherOutputs  # noqa: E402


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    teacher = make_tiny_model("llama", dtype=torch.float32, seed=0).requires_grad_(False)
    student = make_tiny_model("llama", dtype=torch.float32, seed=1, num_hidden_layers=2).train()
    ids = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    n = ids.numel()

    def step(module: DistillModule, batch: torch.Tensor) -> torch.Tensor:
        labels, mask = next_token_labels(batch)
        with torch.no_grad():
            t_hidden = teacher.model(input_ids=batch, use_cache=False).last_hidden_state
        out = module(batch, labels, mask, TeacherOutputs(t_hidden, teacher.lm_head), kd_scale=1.0 / n, clm_scale=0.1 / n)
        out.loss.backward()
        return out.loss.detach()

    reference = DistillModule(copy.deepcopy(student), ChunkedLogitLoss(make_loss("forward_kl"), 5))
    ref_loss = step(reference, ids)

    sharded = DistillModule(student, ChunkedLogitLoss(make_loss("forward_kl"), 5))
    for layer in student.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    per = ids.shape[0] // world
    loss = step(sharded, ids[rank * per:(rank + 1) * per])  # this process's share of the global mean
    dist.all_reduce(loss)
    assert torch.allclose(loss, ref_loss, rtol=1e-5), (loss, ref_loss)
    ref_grads = dict(reference.named_parameters())
    for name, p in sharded.named_parameters():
        # FSDP averages gradients over processes; the trainer scales the loss by world size as with DDP.
        full = p.grad.full_tensor() * world
        torch.testing.assert_close(full, ref_grads[name].grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    if rank == 0:
        print("FSDP OK")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
