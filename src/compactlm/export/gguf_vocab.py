"""The tokenizer half of a GGUF file: copied from a GGUF source, or converted from ``tokenizer.json``.

A student keeps its teacher's vocabulary (pruning never touches it), so when the teacher came
as a GGUF file its ``tokenizer.*`` fields are copied key for key, with their GGUF types: the
student tokenizes exactly as the teacher does in llama.cpp. A Hugging Face source is converted
with the ``gguf`` package's own vocabulary readers (``BpeVocab`` for byte-level BPE such as
Llama 3, Qwen and SmolLM; ``LlamaHfVocab`` for SentencePiece-style BPE such as Llama 2 and
Mistral) and ``SpecialVocab`` for merges, special-token ids, ``add_bos`` and the chat template.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf
from gguf import GGUFReader, GGUFValueType
from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab

from ..errors import CompactLMError
from ..models import resolve_model
from ..provenance import PROVENANCE_FILE

logger = logging.getLogger(__name__)


# Provenance keys that name a model sharing this one's vocabulary (prune, distill, finetune, run).
PARENT_KEYS = ("source_model", "teacher", "model", "initialised_from", "student")


def find_gguf_source(model: str | Path, max_models: int = 32) -> Path | None:
    """The GGUF file a checkpoint descends from, following ``compactlm_provenance.json`` links.

    A distilled student names the pruned student it was trained from and its teacher; a pruned
    student names its source model, which may be a built-in (``smollm2-135m``) or a ``.gguf``
    path. All of them share the vocabulary. Returns ``None`` when no ancestor is a GGUF file.
    """

    queue, seen = [str(model)], set()
    while queue and len(seen) < max_models:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        try:
            source = resolve_model(name)
        except CompactLMError:
            continue
        if source.gguf_file:
            return Path(source.path) / source.gguf_file
        try:
            provenance = json.loads((Path(source.path) / PROVENANCE_FILE).read_text())
        except (OSError, ValueError):
            continue
        queue += [str(provenance[k]) for k in PARENT_KEYS if isinstance(provenance.get(k), str)]
    return None


def add_tokenizer(writer, vocab_size: int, *, gguf_source: Path | None, hf_dir: Path | None,
                  tokenizer_pre: str | None = None) -> str:
    """Write the ``tokenizer.*`` keys; returns where they came from (for the log and provenance)."""
    if gguf_source is not None:
        _copy_from_gguf(writer, gguf_source, vocab_size)
        return f"copied from {gguf_source}"
    if hf_dir is None or not (hf_dir / "tokenizer.json").is_file():
        raise CompactLMError(
            f"No tokenizer to write into the GGUF file: '{hf_dir}' has no tokenizer.json and the model does not "
            f"descend from a GGUF file. Pass --tokenizer-from FILE.gguf (a GGUF file with the same vocabulary).")
    _convert_from_hf(writer, hf_dir, vocab_size, tokenizer_pre)
    return f"converted from {hf_dir / 'tokenizer.json'}"


def _copy_from_gguf(writer, path: Path, vocab_size: int) -> None:
    try:
        reader = GGUFReader(path)
    except Exception as err:  # struct/ValueError on a truncated or foreign file
        raise CompactLMError(f"Cannot read the tokenizer of '{path}': not a readable GGUF file ({err}).") from err
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in fields:
        raise CompactLMError(f"'{path}' has no tokenizer.ggml.tokens; give a GGUF file that carries its tokenizer.")
    n_tokens = len(fields["tokenizer.ggml.tokens"].data)
    if n_tokens != vocab_size:
        raise CompactLMError(
            f"The tokenizer of '{path}' has {n_tokens} tokens but the model's vocab_size is {vocab_size}; "
            f"give the GGUF file the model was pruned from (--tokenizer-from).")
    for key, field in fields.items():
        main = field.types[0]
        if main == GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), main, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), main)


def _convert_from_hf(writer, hf_dir: Path, vocab_size: int, tokenizer_pre: str | None) -> None:
    tokenizer_json = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = None
    for kind in (BpeVocab, LlamaHfVocab):
        try:
            vocab = kind(hf_dir)
            break
        except (FileNotFoundError, TypeError, ValueError, ImportError) as err:
            logger.debug("%s does not fit %s: %s", kind.__name__, hf_dir, err)
    if vocab is None:
        model_type = tokenizer_json.get("model", {}).get("type")
        raise CompactLMError(
            f"Cannot convert the tokenizer in '{hf_dir}' (tokenizer.json model type {model_type!r}): only byte-level "
            f"BPE and SentencePiece-style BPE tokenizers convert. Pass --tokenizer-from FILE.gguf with the same vocabulary.")
    special = {t["content"]: bool(t.get("special")) for t in tokenizer_json.get("added_tokens", [])}
    tokens, scores, types = [], [], []
    for text, score, token_type in vocab.all_tokens():
        shown = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        if shown in special:   # convert_hf_to_gguf's rule: special added tokens are control tokens
            token_type = gguf.TokenType.CONTROL if special[shown] else gguf.TokenType.USER_DEFINED
        tokens.append(text)
        scores.append(score)
        types.append(token_type)
    if len(tokens) > vocab_size:
        raise CompactLMError(f"The tokenizer in '{hf_dir}' has {len(tokens)} tokens but the model's vocab_size is "
                             f"{vocab_size}; the checkpoint's tokenizer does not belong to it.")
    for i in range(len(tokens), vocab_size):   # embedding rows beyond the tokenizer (padded vocabularies)
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    if vocab.tokenizer_model == "gpt2":
        if tokenizer_pre is None:
            logger.warning("GGUF export: no GGUF source to copy the pre-tokenizer name from; writing 'default'. "
                           "llama.cpp then splits text with its default regex, which may differ from this tokenizer's; "
                           "pass --tokenizer-pre NAME (llama.cpp's name, e.g. llama-bpe, qwen2, smollm) to be exact.")
        writer.add_tokenizer_pre(tokenizer_pre or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if vocab.tokenizer_model == "llama":
        writer.add_token_scores(scores)
    SpecialVocab(hf_dir, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=vocab_size).add_to_gguf(writer, quiet=True)
