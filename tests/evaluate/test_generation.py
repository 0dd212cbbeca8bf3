"""Greedy continuations and distinct-n: what a person sees when they try a model."""

from __future__ import annotations

import pytest
import torch
from helpers import make_char_tokenizer, make_tiny_model

from compactlm.evaluate.generation import Continuation, distinct_n, greedy_continuations, mean_distinct


def test_distinct_n():
    assert distinct_n([1, 2, 3, 4], 2) == 1.0
    assert distinct_n([5, 6, 5, 6, 5, 6, 5], 2) == pytest.approx(2 / 6)     # a loop: 2 distinct of 6 bigrams
    assert distinct_n([7, 7, 7], 1) == pytest.approx(1 / 3)
    assert distinct_n([9], 2) == 1.0                                        # nothing to repeat
    loops = [Continuation("p", "", [1, 2, 1, 2, 1]), Continuation("q", "", [1, 2, 3])]
    assert mean_distinct(loops, 2) == pytest.approx((2 / 4 + 1.0) / 2)


def test_greedy_continuations_are_the_cached_greedy_decode():
    model, tok = make_tiny_model("llama", dtype=torch.float32), make_char_tokenizer()
    out = greedy_continuations(model, tok, ["Hello there", "Tea"], max_new_tokens=6)
    assert [c.prompt for c in out] == ["Hello there", "Tea"] and all(len(c.tokens) == 6 for c in out)
    ids = tok("Tea", return_tensors="pt")["input_ids"]
    with torch.no_grad():   # the same tokens as step-by-step argmax without a cache
        for _ in range(6):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert out[1].tokens == ids[0, -6:].tolist()
    assert out[1].text == tok.decode(out[1].tokens, skip_special_tokens=True)
