"""A random-initialised decoder LM of a known shape plus a byte-level BPE tokenizer, built offline.

Speed and memory do not need trained weights, so the GPU check runs on models like these where the
embedded teacher's package is absent (and for a ~1B Llama no one ships offline). Shapes:

  smollm2-135m  SmolLM2-135M's config (Llama: hidden 576, 30 layers, 9 heads / 3 KV, MLP 1536, vocab 49152, tied)
  llama-1b      hidden 2048, 16 layers, 16 heads / 8 KV, MLP 5632, vocab 32000, untied (~0.9B weights)
  tiny          hidden 64, 4 layers, 4 heads / 2 KV, MLP 128, vocab 512, tied (CPU smoke runs)

The tokenizer is trained on the fly with the ``tokenizers`` library (byte-level BPE, GPT-2 style) on
the given text (the packaged exllamav2 corpus when installed, else seeded pseudo-words); its
vocabulary may be smaller than the model's, the extra embedding rows are simply never used.

    python -m benchmarks.device.make_random_model OUT_DIR [--config smollm2-135m] [--corpus exllamav2:wiki]

writes an HF checkpoint (``config.json`` + ``model.safetensors``) and the tokenizer to OUT_DIR.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from pathlib import Path

import torch

from benchmarks.common import run_script

CONFIGS = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "llama-1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
                     rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                 rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
}
SPECIAL = "<|endoftext|>"


def corpus_text(source: str | None = "exllamav2:wiki", max_chars: int | None = None) -> str:
    """The packaged corpus (``exllamav2:<name>``, read as a file) if installed, else seeded pseudo-words."""
    if source and importlib.util.find_spec("exllamav2") is not None:
        from compactlm.data.packaged import packaged_path

        text = packaged_path(source).read_text(encoding="utf-8")
        return text[:max_chars] if max_chars else text
    rng = random.Random(0)
    words = ["".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(1, 9))) for _ in range(3000)]
    n = (max_chars or 1_000_000) // 6
    return " ".join(words[min(int(rng.paretovariate(1.1)) - 1, len(words) - 1)] for _ in range(n))


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``text``, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    chunk = 100_000
    tok.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL)


def build(kind: str, device: str | torch.device = "cpu", *, text: str | None = None, tokenizer_vocab: int = 8192,
          seed: int = 0):
    """``(model, tokenizer)``: a random ``kind`` model (fp32, eval mode) built directly on ``device``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    spec = CONFIGS[kind]
    tokenizer = train_tokenizer(text if text is not None else corpus_text(max_chars=2_000_000),
                                min(tokenizer_vocab, spec["vocab_size"]))
    special = tokenizer.convert_tokens_to_ids(SPECIAL)
    config = LlamaConfig(**spec, bos_token_id=special, eos_token_id=special, pad_token_id=special)
    torch.manual_seed(seed)
    with torch.device(device):   # initialise on the device: a 1B model's CPU init would take minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--config", default="smollm2-135m", choices=sorted(CONFIGS))
    p.add_argument("--corpus", default="exllamav2:wiki", help="text the tokenizer is trained on (if installed)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    model, tok = build(a.config, a.device, text=corpus_text(a.corpus, max_chars=2_000_000))
    out = Path(a.out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"wrote a random {a.config} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M) and a "
          f"{len(tok)}-token tokenizer to {out}")


if __name__ == "__main__":
    run_script(main)
