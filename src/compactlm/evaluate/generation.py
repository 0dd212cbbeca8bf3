"""Greedy continuations of fixed prompts and a repetition measure: what a person sees when they try the model.

Held-out perplexity can improve while a small student still loops ("the Earth is a planet,
which is a planet that is a planet ..."); the eval stage therefore continues a few fixed
prompts greedily (``do_sample=False``, KV cache on) with every model of a run and scores each
continuation by **distinct-n** (Li et al., 2016, arXiv 1510.03055): distinct n-grams / n-grams
among the generated tokens of one continuation, averaged over the prompts. 1.0 means no
n-gram repeats; a loop drives it toward 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config.fields import DEFAULT_PROMPTS as PROMPTS  # prompts a new user would try (general knowledge)

MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class Continuation:
    prompt: str
    text: str                 # the generated text only (the prompt not repeated)
    tokens: list[int]         # the generated token ids


def distinct_n(tokens: list[int], n: int = 2) -> float:
    """Distinct n-grams / n-grams of one token sequence (1.0 for sequences shorter than n: nothing repeats)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def mean_distinct(continuations: list[Continuation], n: int = 2) -> float:
    return sum(distinct_n(c.tokens, n) for c in continuations) / max(len(continuations), 1)


@torch.inference_mode()
def greedy_continuations(model, tokenizer, prompts=PROMPTS, max_new_tokens: int = MAX_NEW_TOKENS) -> list[Continuation]:
    """Greedy continuation of each prompt, one prompt at a time (no padding: every model sees the same input)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   do_sample=False, use_cache=True, pad_token_id=pad, temperature=None, top_p=None,
                                   top_k=None)
        new = generated[0, ids.shape[1]:].tolist()
        out.append(Continuation(prompt, tokenizer.decode(new, skip_special_tokens=True), new))
    return out
