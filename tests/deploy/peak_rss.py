"""Subprocess of test_memory.py's peak test: the resident memory a bfloat16 model takes to hold ``seq_len`` tokens of
context at ``batch``. Prints one JSON line per family.

    python tests/deploy/peak_rss.py SEQ_LEN BATCH FAMILY...

For each family in turn, a tiny model of the family first runs the same code once, so that the pages of the
libraries' code it touches are already resident. Then the resident high-water mark (VmHWM) is reset
(``/proc/self/clear_refs``), the model is built in bfloat16, its prompt prefilled in chunks of ``CHUNK`` tokens (as
inference servers do: one pass over the whole prompt would hold activations for all of it) and ``generate`` decodes
the last ``DECODE`` tokens, leaving ``seq_len`` tokens in the cache. ``peak`` is the high-water mark's growth over
the resident size before the weights (weights + KV cache + activations + the allocator's slack), ``end`` the
resident growth after ``generate``.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.initialization import no_init_weights

# weights 193 MB in bfloat16 (qwen2, untied: 327 MB); KV cache 134 MB at 1024 x 8 (2 x 8 x 16 x 64 x 1024 x 2 B x 4)
SIZES = dict(vocab_size=65536, hidden_size=1024, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=16,
             num_key_value_heads=16, head_dim=64, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1,
             eos_token_id=None, tie_word_embeddings=True)
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4,
            head_dim=16)
FAMILIES = {"llama": {}, "qwen2": dict(tie_word_embeddings=False),
            "gemma3_text": dict(sliding_window=512, query_pre_attn_scalar=64,
                                layer_types=["sliding_attention", "full_attention"] * 2)}
CHUNK, DECODE = 256, 32


def status(key: str) -> int:
    """A /proc/self/status figure, in bytes."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1]) * 1024


def config_of(family: str, **changes):
    return AutoConfig.for_model(family, **{**SIZES, **FAMILIES[family], **changes})


def run(config, seq_len: int, batch: int):
    """Build the model, prefill ``seq_len + 1 - DECODE`` prompt tokens, generate ``DECODE``; the model and its output."""
    with no_init_weights():           # random weights without transformers' (slower) initialisers
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    model.tie_weights()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=generator)
    prompt = seq_len + 1 - DECODE     # + DECODE new tokens = seq_len + 1: generate never feeds the last one back
    ids = torch.randint(3, config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        for start in range(0, prompt - 1, CHUNK):
            model(ids[:, start:min(start + CHUNK, prompt - 1)], cache=cache, use_cache=True, logits_to_keep=1)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, max_new_tokens=DECODE,
                             min_new_tokens=DECODE, do_sample=False, return_dict_in_generate=True)
    return model, out


def measure(family: str, seq_len: int, batch: int) -> dict:
    run(config_of(family, **TINY), 2 * CHUNK, batch)     # warm-up: the code's pages
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                      # VmHWM := VmRSS
    before, start = status("VmRSS"), time.perf_counter()
    model, out = run(config_of(family), seq_len, batch)
    return {"family": family, "peak": status("VmHWM") - before, "end": status("VmRSS") - before,
            "weights": sum(p.nbytes for p in model.parameters()), "tokens": out.sequences.shape[1],
            "kv_held": sum(t.untyped_storage().nbytes() for layer in out.cache.layers for t in (layer.keys, layer.values)),
            "seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    torch.set_num_threads(1)          # a second thread only waits on a shared 2-core machine
    for name in sys.argv[3:]:
        print(json.dumps(measure(name, int(sys.argv[1]), int(sys.argv[2]))), flush=True)
