"""Batched log-likelihood scoring with lm-evaluation-harness's tokenisation and windowing.

A request asks for ``log P(continuation | context)``. Tokenisation follows the harness's
``HFLM`` exactly: trailing spaces of the context move to the continuation, ``context +
continuation`` is encoded whole and split at the length of the encoded context, an empty
context is replaced by the prefix (BOS) token, and over-long inputs are cut from the left to
``max_length + 1`` tokens.

Speed comes from three things. Requests are sorted by length, longest first, so a batch pads
little. The requests of one example (the answer options of a question) usually share their
whole context: that shared token prefix runs once, and only the differing suffixes run again,
batched over a copy of the prefix's KV cache. And the vocabulary projection runs only at the
positions that predict continuation tokens. With ``share_prefix=False`` every request runs in
full, in the harness's own order and batching.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..arch import LogitTransform, TransformedHead
from ..hardware import autocast
from ..parallel import DistInfo, gather_shares, is_mine
from ..progress import progress


@dataclass(frozen=True)
class Request:
    """One query: the log-probability of ``continuation`` right after ``context``."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Score:
    logprob: float   # sum over continuation tokens of log P(token | everything before), nats
    greedy: bool     # every continuation token is the model's argmax
    tokens: int      # number of continuation tokens


@dataclass
class _Unit:
    """Requests that share ``prefix`` (token ids); each row is (request index, suffix, n_cont)."""

    prefix: list[int]
    rows: list[tuple[int, list[int], int]]
    sort_key: tuple


def _encode_many(tokenizer, strings: Sequence[str]) -> dict[str, list[int]]:
    """Encode each distinct string once, as ``tokenizer.encode(s)`` would (default special tokens)."""
    unique = list(dict.fromkeys(strings))
    ids = tokenizer(unique)["input_ids"] if unique else []
    return dict(zip(unique, ids))


def encode_requests(tokenizer, requests: Sequence[Request],
                    prefix_token_id: int | None = None) -> list[tuple[list[int], list[int]]]:
    """Token ids ``(context, continuation)`` per request, split the way the harness splits them."""
    if prefix_token_id is None:
        prefix_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pairs = []
    for req in requests:
        ctx, cont = req.context, req.continuation
        n_spaces = len(ctx) - len(ctx.rstrip())
        if n_spaces:  # "Answer: " + "x" scores " x": the space belongs to the answer's token
            ctx, cont = ctx[:-n_spaces], ctx[-n_spaces:] + cont
        pairs.append((ctx, cont))
    enc = _encode_many(tokenizer, [s for c, x in pairs if c for s in (c, c + x)])
    out = []
    for ctx, cont in pairs:
        if ctx:
            ctx_ids, whole = enc[ctx], enc[ctx + cont]
            out.append((ctx_ids, whole[len(ctx_ids):]))
            continue
        # empty context: condition on the prefix (BOS) token, as the harness does
        cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
        if cont_ids and cont_ids[0] == prefix_token_id:
            out.append((cont_ids[:1], cont_ids[1:]))
        else:
            out.append(([prefix_token_id], cont_ids))
    return out


def head_and_body(model):
    """``(body, head)``: the decoder returning final hidden states, and the vocabulary projection
    followed by the family's logit transform (Granite's scaling, Gemma's soft-cap), as ``forward`` applies it."""

    body = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    if body is None or head is None:
        raise NotImplementedError(f"{type(model).__name__}: no plain decoder + lm_head split")
    transform = LogitTransform.of(model.config)
    return body, (head if transform.identity else TransformedHead(head, transform))


def _cache_kwarg(body) -> str:
    """transformers >= 5.24 names the KV cache argument ``cache``; earlier, ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def _plan_units(encoded, groups, max_length: int, share_prefix: bool) -> list[_Unit]:
    inputs = []
    for ctx, cont in encoded:
        if not cont:
            raise ValueError("empty continuation: nothing to score")
        whole = ctx + cont
        inputs.append((whole[-(max_length + 1):][:-1], len(cont), tuple(whole)))
    by_group: dict[object, list[int]] = {}
    for i, g in enumerate(groups if share_prefix else range(len(encoded))):
        by_group.setdefault(g, []).append(i)
    units = []
    for members in by_group.values():
        seqs = [inputs[i][0] for i in members]
        n = min(len(s) for s in seqs)
        lcp = next((k for k in range(n) if any(s[k] != seqs[0][k] for s in seqs)), n)
        if lcp == 0:  # nothing shared (e.g. options that start the text): score each alone
            parts = [[i] for i in members]
        else:
            parts = [members]
        for part in parts:
            p = lcp if len(part) > 1 else len(inputs[part[0]][0])
            prefix = inputs[part[0]][0][:p]
            rows = [(i, inputs[i][0][p:], inputs[i][1]) for i in part]
            longest = max(part, key=lambda i: len(inputs[i][2]))
            # the harness's order: longest (context + continuation) first, ties by tokens
            units.append(_Unit(prefix, rows, (-len(inputs[longest][2]), inputs[longest][2])))
    units.sort(key=lambda u: u.sort_key)
    return units


def _batches(units: list[_Unit], batch_size: int):
    batch, n_rows = [], 0
    for unit in units:
        if batch and n_rows + len(unit.rows) > batch_size:
            yield batch
            batch, n_rows = [], 0
        batch.append(unit)
        n_rows += len(unit.rows)
    if batch:
        yield batch


def _pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def _continuation_logprobs(body, head, batch: list[_Unit], pad_id: int, device, bf16: bool) -> torch.Tensor:
    """Log-softmax rows, one per continuation token of every request in ``batch``, in order."""
    suffix_rows = [(u_idx, row) for u_idx, u in enumerate(batch) for row in u.rows if row[1]]
    prefix_ids, prefix_mask = _pad([u.prefix for u in batch], pad_id, device)          # (U, P)
    with autocast(device, bf16):
        # right padding needs no mask here: causal attention never looks ahead to the pads
        out = body(input_ids=prefix_ids, use_cache=bool(suffix_rows))
    h_prefix = out.last_hidden_state                                                     # (U, P, C)
    h_suffix = None
    if suffix_rows:
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        owner = torch.tensor([u_idx for u_idx, _ in suffix_rows], device=device)
        cache.reorder_cache(owner)                                # one copy of its prefix per row
        suffix_ids, suffix_mask = _pad([row[1] for _, row in suffix_rows], pad_id, device)  # (R, S)
        positions = prefix_mask.sum(1)[owner][:, None] + torch.arange(suffix_ids.shape[1], device=device)
        mask = torch.cat([prefix_mask[owner], suffix_mask], dim=1)                        # (R, P + S)
        with autocast(device, bf16):
            h_suffix = body(input_ids=suffix_ids, attention_mask=mask, position_ids=positions,
                            use_cache=False, **{_cache_kwarg(body): cache}).last_hidden_state  # (R, S, C)
    del out
    suffix_of = {row[0]: k for k, (_, row) in enumerate(suffix_rows)}
    hidden = []
    for u_idx, unit in enumerate(batch):
        p = len(unit.prefix)
        for req, suffix, n_cont in unit.rows:
            length = p + len(suffix)
            # input position `pos` predicts the token after it; the last n_cont positions
            # predict the continuation
            for pos in range(length - n_cont, length):
                hidden.append(h_prefix[u_idx, pos] if pos < p else h_suffix[suffix_of[req], pos - p])
    with autocast(device, bf16):
        logits = head(torch.stack(hidden))                                               # (N, V)
    return torch.log_softmax(upcast(logits), dim=-1)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 before a softmax; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def score_requests(
    model,
    tokenizer,
    requests: Sequence[Request],
    groups: Sequence[object] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    share_prefix: bool = True,
    bf16: bool = False,
    desc: str = "loglikelihood",
    parallel: DistInfo | None = None,
) -> list[Score]:
    """Score every request; ``groups[i]`` names the example request ``i`` belongs to.

    Requests of one group (the options of one question) share their common token prefix.
    ``batch_size`` bounds the rows of every forward pass. Returns one :class:`Score` per
    request, in the order given.

    With ``parallel`` (every process calling this with the same requests), the batches are
    planned exactly as for one process and process ``r`` runs batches ``r, r + W, ...``; the
    scores are gathered, so every process returns the one-process scores bit for bit.
    """

    if not requests:
        return []
    body, head = head_and_body(model)
    device = next(model.parameters()).device
    if max_length is None:
        max_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = encode_requests(tokenizer, requests)
    groups = list(range(len(requests))) if groups is None else list(groups)
    units = _plan_units(encoded, groups, max_length, share_prefix)
    results: list[Score | None] = [None] * len(requests)
    mine = []
    with progress(total=len(requests), desc=desc, unit="req") as bar:
        for b, batch in enumerate(_batches(units, batch_size)):
            if is_mine(b, parallel):
                mine.append(_score_units(body, head, batch, encoded, pad_id, device, bf16))
            bar.update(sum(len(u.rows) for u in batch))
    for scored in gather_shares(mine, parallel):
        for req, score in scored:
            results[req] = score
    return results  # type: ignore[return-value]


def _score_units(body, head, batch, encoded, pad_id, device, bf16) -> list[tuple[int, Score]]:
    logp = _continuation_logprobs(body, head, batch, pad_id, device, bf16)
    out, k = [], 0
    for unit in batch:
        for req, _suffix, n_cont in unit.rows:
            cont = torch.tensor(encoded[req][1], device=logp.device)                        # (n_cont,)
            rows = logp[k: k + n_cont]                                                    # (n_cont, V)
            out.append((req, Score(float(rows.gather(1, cont[:, None]).sum()),
                                   bool((rows.argmax(-1) == cont).all()), n_cont)))
            k += n_cont
    assert k == logp.shape[0]
    return out
