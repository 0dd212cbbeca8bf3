"""Batched, prefix-sharing log-likelihood scoring and perplexity equal brute-force computation.

Brute force: one unbatched forward pass of the whole model over ``context + continuation``,
log-softmax of the full logits. The tiny model is float64, but Llama's RMSNorm computes in
float32, so different batch shapes agree to ~1e-7, not 1e-12.
"""

from __future__ import annotations

import math

import pytest
import torch
from eval_fixtures import tiny_lm, tokenizer  # noqa: F401

from compactlm.errors import CompactLMError
from compactlm.evaluate import Request, perplexity, score_requests, windows
from compactlm.evaluate.loglikelihood import encode_requests

TOL = 1e-6

# four examples: options after a shared context; Winogrande-style partial contexts; a single
# request; and options that begin the text (nothing shared)
EXAMPLES = [
    [Request("Question: What is the capital of France?\nAnswer:", c) for c in (" Paris", " London is big", " no")],
    [Request("A man is sitting on a roof. He", c)
     for c in (" is using wrap to wrap a pair of skis.", " starts pulling up roofing.")],
    [Request("Sarah was a better surgeon than Maria so " + o, " always got the easier cases.") for o in ("Sarah", "Maria")],
    [Request("The cat sat on the", " mat.")],
    [Request("", c) for c in ("Sarah always wins.", "Maria often loses the game.")],
    [Request("Answer: ", c) for c in ("yes", "no")],     # trailing space moves to the continuation
]
REQUESTS = [r for ex in EXAMPLES for r in ex]
GROUPS = [g for g, ex in enumerate(EXAMPLES) for _ in ex]


def brute_force(model, tokenizer, request: Request) -> tuple[float, bool]:
    ((ctx, cont),) = encode_requests(tokenizer, [request])
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0, :-1]          # (T - 1, V)
    logp = torch.log_softmax(logits, dim=-1)[-len(cont):]                   # (n_cont, V)
    target = torch.tensor(cont)
    return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


def test_encoding_follows_the_harness(tokenizer):
    pairs = encode_requests(tokenizer, [Request("Answer: ", "yes"), Request("Answer:", " yes"), Request("", "Hi there")])
    assert pairs[0] == pairs[1]                                              # the space moves to the answer
    assert pairs[0][0] == tokenizer("Answer:")["input_ids"]
    assert pairs[0][0] + pairs[0][1] == tokenizer("Answer: yes")["input_ids"]
    assert pairs[2] == ([tokenizer.bos_token_id], tokenizer("Hi there", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_scoring_equals_brute_force(tiny_lm, tokenizer, share_prefix, batch_size):
    expected = [brute_force(tiny_lm, tokenizer, r) for r in REQUESTS]
    got = score_requests(tiny_lm, tokenizer, REQUESTS, GROUPS, batch_size=batch_size, share_prefix=share_prefix)
    for (logprob, greedy), score, req in zip(expected, got, REQUESTS):
        assert score.logprob == pytest.approx(logprob, abs=TOL), req
        assert score.greedy == greedy


def test_batched_equals_unbatched(tiny_lm, tokenizer):
    one = score_requests(tiny_lm, tokenizer, REQUESTS, GROUPS, batch_size=1)
    many = score_requests(tiny_lm, tokenizer, REQUESTS, GROUPS, batch_size=16)
    assert [s.logprob for s in many] == pytest.approx([s.logprob for s in one], abs=TOL)
    assert [s.tokens for s in many] == [s.tokens for s in one]


def test_left_truncation_keeps_the_last_tokens(tiny_lm, tokenizer):
    req = Request("one two three four five six seven eight nine ten", " eleven twelve")
    ((ctx, cont),) = encode_requests(tokenizer, [req])
    max_length = len(cont) + 3
    (score,) = score_requests(tiny_lm, tokenizer, [req], max_length=max_length)
    window = (ctx + cont)[-(max_length + 1):]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_lm(torch.tensor([window[:-1]])).logits[0], -1)[-len(cont):]
    assert score.logprob == pytest.approx(float(logp.gather(1, torch.tensor(cont)[:, None]).sum()), abs=TOL)


def test_windows():
    spans = windows(10, 4)
    assert [(w.begin, w.end, w.scored) for w in spans] == [(0, 4, 3), (4, 8, 3)]       # tail of 2 dropped
    spans = windows(10, 4, stride=2)
    assert [(w.begin, w.end, w.scored) for w in spans] == [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    with pytest.raises(CompactLMError):
        windows(10, 4, stride=5)


TEXT = " = Robert Boulter = \n\n Robert Boulter is an English film , television and theatre actor . " * 6


@pytest.mark.parametrize("stride", [None, 5])
def test_perplexity_equals_brute_force(tiny_lm, tokenizer, stride):
    window = 16
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    nll, count = 0.0, 0
    for w in windows(len(ids), window, stride):
        with torch.no_grad():
            logp = torch.log_softmax(tiny_lm(torch.tensor([ids[w.begin:w.end]])).logits[0], -1)   # (W, V)
        for pos in range(w.end - w.scored, w.end):        # token `pos` predicted from position pos - 1
            nll -= float(logp[pos - w.begin - 1, ids[pos]])
            count += 1
    for batch_size in (1, 3):
        out = perplexity(tiny_lm, tokenizer, TEXT, window=window, stride=stride, batch_size=batch_size)
        assert out["tokens"] == count
        assert out["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-6)
        assert out["window"] == window


def test_perplexity_rejects_a_text_shorter_than_a_window(tiny_lm, tokenizer):
    with pytest.raises(CompactLMError, match="fewer than one window"):
        perplexity(tiny_lm, tokenizer, "too short", window=64)
