"""Logit losses: known values, registry errors, and chunked == plain (values and gradients)."""

from __future__ import annotations

import pytest
import torch
from distill_fixtures import one_thread  # noqa: F401  (autouse)
from torch import nn

from compactlm.distill.losses import LOSSES, ChunkedLogitLoss, make_loss
from compactlm.errors import CompactLMError


def test_forward_kl_zero_on_equal_and_matches_definition():
    torch.manual_seed(0)
    s, t = torch.randn(5, 11, dtype=torch.float64), torch.randn(5, 11, dtype=torch.float64)
    kl = make_loss("forward_kl")
    assert torch.allclose(kl(t, t), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    p, q = t.softmax(-1), s.softmax(-1)
    assert torch.allclose(kl(s, t), (p * (p.log() - q.log())).sum(-1))
    assert torch.allclose(make_loss("reverse_kl")(s, t), (q * (q.log() - p.log())).sum(-1))
    m = 0.5 * (p + q)
    js = 0.5 * (p * (p.log() - m.log())).sum(-1) + 0.5 * (q * (q.log() - m.log())).sum(-1)
    assert torch.allclose(make_loss("js", beta=0.5)(s, t), js)


def test_top_k_with_full_vocabulary_equals_full_kl():
    torch.manual_seed(0)
    s, t = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    assert torch.allclose(make_loss("forward_kl", top_k=9)(s, t), make_loss("forward_kl")(s, t))
    assert (make_loss("forward_kl", top_k=3)(s, t) != make_loss("forward_kl")(s, t)).all()


def test_registry_errors_are_user_errors():
    with pytest.raises(CompactLMError, match="Did you mean 'forward_kl'"):
        make_loss("forward_kll")
    with pytest.raises(CompactLMError, match="top-K"):
        make_loss("mse", top_k=10)
    with pytest.raises(CompactLMError, match="Temperature"):
        make_loss("forward_kl", temperature=0)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("clm_scale", [0.0, 0.3])
def test_chunked_equals_plain_including_gradients(name, clm_scale):
    torch.manual_seed(0)
    n, hs, ht, vocab = 37, 8, 12, 50
    head, t_head = nn.Linear(hs, vocab, bias=True).double(), nn.Linear(ht, vocab, bias=False).double()
    hidden = torch.randn(n, hs, dtype=torch.float64, requires_grad=True)
    t_hidden = torch.randn(n, ht, dtype=torch.float64)
    labels = torch.randint(0, vocab, (n,))
    labels[::7] = -100
    mask = (torch.rand(n) > 0.2).double()
    loss_fn = make_loss(name, temperature=2.0, top_k=20 if LOSSES[name].supports_top_k else None)
    results = []
    for chunk in (None, 5, 64):
        for p in (hidden, *head.parameters()):
            p.grad = None
        terms = ChunkedLogitLoss(loss_fn, chunk)(hidden, head, t_hidden, t_head, labels, mask, 1 / 30, clm_scale)
        (3.0 * terms.total).backward()
        results.append([terms.total.detach(), terms.kd_sum, terms.clm_sum, hidden.grad.clone(),
                        head.weight.grad.clone(), head.bias.grad.clone()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert t_head.weight.grad is None


def test_chunked_without_grad_and_tied_head():
    torch.manual_seed(0)
    emb = nn.Embedding(30, 8)
    head = nn.Linear(8, 30, bias=False)
    head.weight = emb.weight  # tied, as in SmolLM2
    ids = torch.randint(0, 30, (20,))
    hidden = emb(ids) * 2.0
    labels, mask = torch.randint(0, 30, (20,)), torch.ones(20)
    plain = ChunkedLogitLoss(None, None)(hidden, head, None, None, labels, mask, 0.0, 1 / 20)
    plain.total.backward()
    g_plain = emb.weight.grad.clone()
    emb.weight.grad = None
    hidden = emb(ids) * 2.0
    chunked = ChunkedLogitLoss(None, 6)(hidden, head, None, None, labels, mask, 0.0, 1 / 20)
    chunked.total.backward()
    torch.testing.assert_close(chunked.total, plain.total)
    torch.testing.assert_close(emb.weight.grad, g_plain)
    with torch.no_grad():
        again = ChunkedLogitLoss(None, 6)(emb(ids) * 2.0, head, None, None, labels, mask, 0.0, 1 / 20)
    torch.testing.assert_close(again.total, plain.total.detach())
