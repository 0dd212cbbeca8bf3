"""``load_model(device_map=...)``: passed to ``from_pretrained``; the importance hooks see the same activations."""

from __future__ import annotations

import torch

from compactlm.config import ImportanceSection
from compactlm.importance import estimate_importance
from compactlm.models import load_model


def test_device_map_gives_the_same_importance(tiny_checkpoint):
    path = str(tiny_checkpoint("qwen3"))
    ids = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    base = estimate_importance(load_model(path, with_tokenizer=False), ids, ImportanceSection(batch_size=2, layer_loss_samples=0))
    for device_map in ({"": "cpu"}, "auto"):
        model = load_model(path, with_tokenizer=False, device_map=device_map, dtype="bfloat16")
        assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
        mapped = load_model(path, with_tokenizer=False, device_map=device_map)
        scores = estimate_importance(mapped, ids, ImportanceSection(batch_size=2, layer_loss_samples=0))
        assert all(torch.equal(base.tensors[k], scores.tensors[k]) for k in base.tensors)
