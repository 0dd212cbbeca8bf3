"""Fixtures for the data tests: a byte tokenizer built in the test (one token per UTF-8 byte)."""

from __future__ import annotations

import pytest


EOS = 256


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map, which the ByteLevel pre-tokenizer uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_ids(text: str) -> list[int]:
    """What the byte tokenizer gives for ``text``: its UTF-8 bytes."""
    return list(text.encode("utf-8"))


def make_byte_tokenizer():
    """A fast tokenizer with no merges: token id = UTF-8 byte value, EOS is id 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: byte for byte, ch in _bytes_to_unicode().items()}
    vocab["<eos>"] = EOS
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture(scope="session")
def byte_tokenizer():
    return make_byte_tokenizer()
