"""Text sources → a list of documents: files, folders, saved datasets, Hugging Face names."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import CompactLMError
from .files import JSONL_SUFFIXES, TEXT_SUFFIXES, list_text_files, read_file
from .packaged import is_packaged, packaged_path

logger = logging.getLogger(__name__)

# Marks of a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
SAVED_DATASET_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")
# Data files read by ``datasets``' packaged builders, e.g. ``load_dataset("json", data_files=f)``.
DATASET_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json"}
DATASET_FILE_SUFFIXES = tuple(DATASET_BUILDERS)


def read_documents(
    source: str,
    *,
    text_field: str = "text",
    dataset_config: str | None = None,
    split: str = "train",
) -> list[str]:
    """Read the documents of a text source, in a deterministic order.

    ``source`` is, in order of precedence:

    - a file: ``.jsonl`` gives ``row[text_field]`` per line; ``.json``/``.csv``/``.parquet``/
      ``.arrow`` go through ``datasets.load_dataset(<format>, data_files=...)``; any other file
      is UTF-8 text, split into documents as described in :mod:`compactlm.data.files`;
    - a folder saved with ``save_to_disk`` (has ``state.json``/``dataset_info.json``/
      ``dataset_dict.json``): loaded with ``datasets.load_from_disk``;
    - a folder: every ``.txt``/``.utf8``/``.raw``/``.text``/``.jsonl`` file below it, sorted by
      path; a folder with none of those but parquet/arrow/csv/json files goes to
      ``datasets.load_dataset(folder)``;
    - ``exllamav2:<name>``: a calibration corpus shipped in a PyPI package (:mod:`.packaged`);
    - otherwise a Hugging Face dataset name: ``datasets.load_dataset(source, dataset_config,
      split=split)``.

    Blank documents are dropped. Raises :class:`CompactLMError` for a missing source,
    unreadable or non-UTF-8 files, a missing ``text_field`` and a source with no text.
    """
    path = packaged_path(source) if is_packaged(source) else Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in DATASET_BUILDERS:
        builder = DATASET_BUILDERS[path.suffix.lower()]
        documents = _dataset_texts(_load_data_file(path, builder, source), source, text_field)
        what = f"{builder} file '{source}'"
    elif path.is_file():
        documents = read_file(path, text_field)
        what = f"file '{source}'"
    elif path.is_dir():
        documents, what = _read_folder(path, source, text_field, dataset_config, split)
    elif _looks_like_path(source):
        raise CompactLMError(
            f"Text source '{source}' does not exist; expected a text or .jsonl file, a folder, or a "
            f"Hugging Face dataset name. Check the path."
        )
    else:
        documents = _dataset_texts(_load_hub_dataset(source, dataset_config, split), source, text_field)
        what = f"dataset '{source}'"
    if not documents:
        raise CompactLMError(f"Text source {what} contains no text (only blank documents). Give a source with text.")
    logger.info("Read %d documents (%d characters) from %s", len(documents), sum(map(len, documents)), what)
    return documents


def _looks_like_path(source: str) -> bool:
    """True for names that cannot be Hub dataset ids, so we fail at once instead of asking the Hub."""
    suffix = Path(source).suffix.lower()
    return (
        source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
        or suffix in TEXT_SUFFIXES + JSONL_SUFFIXES + DATASET_FILE_SUFFIXES
    )


def _read_folder(
    folder: Path, source: str, text_field: str, dataset_config: str | None, split: str
) -> tuple[list[str], str]:
    if any((folder / name).is_file() for name in SAVED_DATASET_MARKERS):
        return _dataset_texts(_load_saved_dataset(folder, source, split), source, text_field), f"saved dataset '{source}'"
    files = list_text_files(folder)
    if files:
        documents = []
        for file in files:
            docs = read_file(file, text_field)
            if not docs:
                logger.warning("Skipping '%s': it contains no text", file)
            documents.extend(docs)
        return documents, f"folder '{source}' ({len(files)} files)"
    if any(p.is_file() and p.suffix.lower() in DATASET_FILE_SUFFIXES for p in folder.rglob("*")):
        return (_dataset_texts(_load_hub_dataset(str(folder), dataset_config, split), source, text_field),
                f"dataset folder '{source}'")
    raise CompactLMError(
        f"Folder '{source}' has no text files; expected .txt, .utf8, .raw, .text or .jsonl files "
        f"(searched recursively) or a dataset saved with save_to_disk. Point at a folder with text."
    )


def _load_saved_dataset(folder: Path, source: str, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as err:
        raise CompactLMError(f"Cannot load the saved dataset '{source}': {err}. Re-save it with save_to_disk.") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise CompactLMError(
                f"Saved dataset '{source}' has no split '{split}'; available: {', '.join(loaded)}. "
                "Choose one with split (--data-split)."
            )
        loaded = loaded[split]
    return loaded


def _load_data_file(path: Path, builder: str, source: str):
    import datasets

    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        cause = err.__cause__ or err  # DatasetGenerationError hides the parser's message
        raise CompactLMError(
            f"Cannot read '{source}' as {builder} data: {cause}. Expected a {builder} file of records "
            f"with a text column; fix the file or convert it to .jsonl."
        ) from err


def _load_hub_dataset(name: str, dataset_config: str | None, split: str):
    """``datasets.load_dataset`` with its failures turned into one clear line.

    With no network the Hub client retries for ~20 s before giving up; we do not change its
    global settings, so we log why we wait instead.
    """
    import datasets

    logger.info("Loading dataset '%s' (config %s, split %s) with datasets.load_dataset", name, dataset_config, split)
    try:
        return datasets.load_dataset(name, dataset_config, split=split)
    except ConnectionError as err:
        raise CompactLMError(
            f"Text source '{name}' is not a local file or folder, and the Hugging Face Hub could not be "
            f"reached to load it as a dataset ({err}). Check the path, or the network / HF_HUB_OFFLINE."
        ) from err
    except FileNotFoundError as err:
        raise CompactLMError(
            f"Text source '{name}' is neither a local file or folder nor a dataset on the Hugging Face "
            f"Hub ({err}). Check the path or the dataset name."
        ) from err
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:  # unknown split/config, bad files
        raise CompactLMError(
            f"Cannot load dataset '{name}' (config {dataset_config!r}, split {split!r}): {err}. "
            f"Check --data-config and --data-split."
        ) from err


def _dataset_texts(dataset, source: str, text_field: str) -> list[str]:
    """The non-blank strings of column ``text_field`` of a ``datasets.Dataset``."""
    columns = list(dataset.column_names)
    if text_field not in columns:
        raise CompactLMError(
            f"Dataset '{source}' has no column '{text_field}'; it has {', '.join(map(repr, columns))}. "
            f"Choose the column that holds the text with text_field (--text-field)."
        )
    texts = list(dataset[text_field])
    for i, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise CompactLMError(
                f"Dataset '{source}' row {i}: column '{text_field}' is {type(text).__name__}, expected a string. "
                f"Choose the column that holds the text with text_field (--text-field)."
            )
    return [t for t in texts if t and t.strip()]
