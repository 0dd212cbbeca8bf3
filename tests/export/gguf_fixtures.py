"""A byte-level BPE tokenizer (the GPT-2 / Llama 3 / SmolLM kind) trained in the test, for GGUF round trips."""

from __future__ import annotations

from pathlib import Path

VOCAB = 300


def save_bpe_tokenizer(path: Path) -> Path:
    """Train a BPE tokenizer of at most ``VOCAB`` ids on a fixed sentence and ``save_pretrained`` it to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["The quick brown fox jumps over the lazy dog. Pruning keeps the important neurons."] * 50
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<|endoftext|>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(path)
    assert len(fast) <= VOCAB
    return path
