"""Perplexity of a text, tokenised once and scored in windows of a stated length.

The usual WikiText-2 protocol (GPTQ, SparseGPT, Wanda, Minitron): the test rows joined with
"\\n\\n", tokenised once without special tokens, cut into non-overlapping windows of ``window``
tokens; every window predicts its tokens 2..window from the ones before, and the tail shorter
than a window is dropped. ``ppl = exp(total NLL / predicted tokens)``.

With ``stride < window`` windows overlap (Hugging Face's sliding-window recipe): a window
starts every ``stride`` tokens and scores only the tokens no earlier window scored, so each
of them sees up to ``window - 1`` tokens of context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import CompactLMError
from ..hardware import autocast
from ..parallel import DistInfo, gather_shares, is_mine
from ..progress import progress
from .loglikelihood import head_and_body, upcast


@dataclass(frozen=True)
class Window:
    begin: int   # first token of the window
    end: int     # one past the last token
    scored: int  # the last `scored` tokens of the window are predicted and counted


def windows(n_tokens: int, window: int, stride: int | None = None) -> list[Window]:
    """Full windows over ``n_tokens`` tokens; every token after the first is counted at most once."""
    stride = window if stride is None else stride
    if window < 2 or not 0 < stride <= window:
        raise CompactLMError(f"Perplexity needs window >= 2 and 0 < stride <= window (got window={window}, stride={stride}).")
    out = []
    for begin in range(0, n_tokens - window + 1, stride):
        out.append(Window(begin, begin + window, window - 1 if begin == 0 else min(stride, window - 1)))
    return out


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    text: str,
    window: int = 2048,
    stride: int | None = None,
    batch_size: int = 4,
    limit: int | None = None,
    bf16: bool = False,
    desc: str = "perplexity",
    parallel: DistInfo | None = None,
) -> dict:
    """Perplexity of ``model`` on ``text``; ``limit`` keeps the first ``limit`` windows.

    With ``parallel``, process ``r`` runs the window batches ``r, r + W, ...``; the per-window
    NLLs are gathered and added in window order: the one-process result bit for bit.

    Returns ``{"ppl", "nll" (mean, nats/token), "tokens" (predicted), "windows", "window",
    "stride"}``.
    """
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and window > max_positions:
        raise CompactLMError(f"Perplexity window {window} is longer than the model's {max_positions} positions; "
                             f"pass --window {max_positions} or less.")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)  # (N,)
    spans = windows(len(ids), window, stride)
    if limit is not None:
        spans = spans[:limit]
    if not spans:
        raise CompactLMError(f"The text has {len(ids)} tokens, fewer than one window of {window}; pass a smaller window.")
    body, head = head_and_body(model)
    device = next(model.parameters()).device

    mine = []   # per batch: the summed NLL of each of its windows
    with progress(total=len(spans) * window, desc=desc, unit="tok") as bar:
        for b, start in enumerate(range(0, len(spans), batch_size)):
            batch = spans[start: start + batch_size]
            bar.update(len(batch) * window)
            if not is_mine(b, parallel):
                continue
            nll = []
            inputs = torch.stack([ids[w.begin: w.end] for w in batch]).to(device)           # (B, W)
            with autocast(device, bf16):
                hidden = body(input_ids=inputs).last_hidden_state                           # (B, W, C)
            for row, w in enumerate(batch):
                h = hidden[row, window - 1 - w.scored: window - 1]                          # (scored, C)
                target = inputs[row, window - w.scored:]                                    # (scored,)
                with autocast(device, bf16):
                    logits = head(h)                                                        # (scored, V)
                nll.append(float(torch.nn.functional.cross_entropy(upcast(logits), target, reduction="sum")))
            mine.append(nll)
    total_nll = 0.0
    for nll in gather_shares(mine, parallel):
        for value in nll:
            total_nll += value
    total_tokens = sum(w.scored for w in spans)
    nll = total_nll / total_tokens
    return {"ppl": math.exp(nll), "nll": nll, "tokens": total_tokens, "windows": len(spans),
            "window": window, "stride": stride or window}
