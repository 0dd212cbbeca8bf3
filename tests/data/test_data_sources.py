"""read_documents: text files, JSON Lines, folders, saved and loaded datasets, and the errors."""

from __future__ import annotations

import json

import pytest

from compactlm.data import read_documents
from compactlm.errors import CompactLMError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- plain text ------------------------------------------------------------------------------

def test_plain_text_is_one_document(tmp_path):
    text = "First paragraph.\n\nSecond paragraph\nwith two lines.\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    assert read_documents(str(tmp_path / "a.txt")) == [text.rstrip("\n")]  # newlines around a document are trimmed


def test_endoftext_lines_separate_documents(tmp_path):
    (tmp_path / "tiny.utf8").write_text("Story one.\nMore.\n<|endoftext|>\n\nStory two.\n<|endoftext|>\n", encoding="utf-8")
    assert read_documents(str(tmp_path / "tiny.utf8")) == ["Story one.\nMore.", "Story two."]


def test_wikiextractor_docs_are_documents(tmp_path):
    text = ('<doc id="1" url="u" title="A">\nA\n\nAbout A.\n</doc>\n'
            '<doc id="2" url="u" title="B">\nB\n\nAbout B.\n\n</doc>\n')
    (tmp_path / "wiki.utf8").write_text(text, encoding="utf-8")
    assert read_documents(str(tmp_path / "wiki.utf8")) == ["A\n\nAbout A.", "B\n\nAbout B."]


def test_utf8_bom_is_dropped(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffhello".encode("utf-8"))
    assert read_documents(str(tmp_path / "bom.txt")) == ["hello"]


def test_non_utf8_file_is_an_error(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CompactLMError, match=r"latin\.txt.*not UTF-8.*offset 3"):
        read_documents(str(tmp_path / "latin.txt"))


def test_blank_file_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\n\t\n", encoding="utf-8")
    with pytest.raises(CompactLMError, match=r"empty\.txt.*no text"):
        read_documents(str(tmp_path / "empty.txt"))


# --- JSON Lines ------------------------------------------------------------------------------

def test_jsonl_rows_skip_blank_lines_and_texts(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one", "id": 1}, {"text": ""}, {"text": "two\n"}])
    path.write_text(path.read_text() + "\n   \n", encoding="utf-8")
    assert read_documents(str(path)) == ["one", "two\n"]


def test_jsonl_custom_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"sentence": "a b"}, {"sentence": "c"}])
    assert read_documents(str(path), text_field="sentence") == ["a b", "c"]


def test_jsonl_missing_field_names_line_and_keys(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, {"ctx": "x", "label": 1}])
    with pytest.raises(CompactLMError, match=r"line 2 has no field 'text'; it has 'ctx', 'label'.*--text-field"):
        read_documents(str(path))


def test_jsonl_bad_rows_name_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(CompactLMError, match=r"line 2 is not valid JSON"):
        read_documents(str(tmp_path / "bad.jsonl"))
    write_jsonl(tmp_path / "num.jsonl", [{"text": 3}])
    with pytest.raises(CompactLMError, match=r"line 1: field 'text' is a JSON int"):
        read_documents(str(tmp_path / "num.jsonl"))
    write_jsonl(tmp_path / "list.jsonl", [["text"]])
    with pytest.raises(CompactLMError, match=r"line 1 is a JSON list"):
        read_documents(str(tmp_path / "list.jsonl"))


# --- folders ---------------------------------------------------------------------------------

def test_folder_reads_text_files_recursively_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("B", encoding="utf-8")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "z.utf8").write_text("AZ", encoding="utf-8")
    write_jsonl(tmp_path / "a" / "rows.jsonl", [{"text": "R1"}, {"text": "R2"}])
    (tmp_path / "c.raw").write_text("C", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")   # skipped with a warning
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("ignored", encoding="utf-8")
    assert read_documents(str(tmp_path)) == ["R1", "R2", "AZ", "B", "C"]


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "notes.md").write_text("not a text source", encoding="utf-8")
    with pytest.raises(CompactLMError, match=r"has no text files; expected \.txt"):
        read_documents(str(tmp_path))


def test_folder_of_blank_files_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("", encoding="utf-8")
    write_jsonl(tmp_path / "b.jsonl", [{"text": "  "}])
    with pytest.raises(CompactLMError, match=r"contains no text"):
        read_documents(str(tmp_path))


# --- missing sources -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["./nope.txt", "missing/data.jsonl", "/no/such/folder", "a/b/c"])
def test_missing_path_fails_without_asking_the_hub(name, tmp_path, monkeypatch):
    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("asked the Hub"))
    with pytest.raises(CompactLMError, match=rf"Text source '{name}' does not exist.*Check the path"):
        read_documents(name)


# --- datasets ------------------------------------------------------------------------------

def test_saved_dataset_is_loaded_from_disk(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": ["alpha", "", "beta"], "n": [1, 2, 3]}).save_to_disk(str(tmp_path / "ds"))
    assert read_documents(str(tmp_path / "ds")) == ["alpha", "beta"]
    with pytest.raises(CompactLMError, match=r"no column 'body'; it has 'text', 'n'"):
        read_documents(str(tmp_path / "ds"), text_field="body")


def test_saved_dataset_dict_uses_split(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"text": ["t"]}), "validation": Dataset.from_dict({"text": ["v"]})}
                ).save_to_disk(str(tmp_path / "dd"))
    assert read_documents(str(tmp_path / "dd")) == ["t"]
    assert read_documents(str(tmp_path / "dd"), split="validation") == ["v"]
    with pytest.raises(CompactLMError, match=r"no split 'test'; available: train, validation"):
        read_documents(str(tmp_path / "dd"), split="test")


def test_folder_of_data_files_goes_through_load_dataset(tmp_path):
    # .json files only: not text files, so datasets.load_dataset(folder) reads them (offline).
    write_jsonl(tmp_path / "part-0.json", [{"text": "from"}, {"text": "load_dataset"}])
    assert read_documents(str(tmp_path)) == ["from", "load_dataset"]


def test_data_files_go_through_their_datasets_builder(tmp_path):
    from datasets import Dataset

    (tmp_path / "rows.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}]), encoding="utf-8")
    assert read_documents(str(tmp_path / "rows.json")) == ["a", "b"]
    Dataset.from_dict({"body": ["p", "q"]}).to_parquet(str(tmp_path / "rows.parquet"))
    assert read_documents(str(tmp_path / "rows.parquet"), text_field="body") == ["p", "q"]
    (tmp_path / "rows.csv").write_text("text,n\nc,1\nd,2\n", encoding="utf-8")
    assert read_documents(str(tmp_path / "rows.csv")) == ["c", "d"]
    (tmp_path / "broken.json").write_text('[{"text": "a"},', encoding="utf-8")
    with pytest.raises(CompactLMError, match=r"Cannot read '.*broken\.json' as json data"):
        read_documents(str(tmp_path / "broken.json"))


def test_hub_name_is_passed_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"content": ["x", "y"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert read_documents("org/corpus", text_field="content", dataset_config="en", split="validation") == ["x", "y"]
    assert calls == [("org/corpus", "en", "validation")]


@pytest.mark.parametrize("error, expected", [
    (ConnectionError("Couldn't reach 'org/corpus' on the Hub"), r"could not be reached.*Check the path"),
    (FileNotFoundError("Dataset 'org/corpus' doesn't exist on the Hub"), r"neither a local file.*nor a dataset"),
    (ValueError('Unknown split "dev"'), r"Cannot load dataset 'org/corpus'.*--data-split"),
])
def test_hub_failures_become_one_clear_error(error, expected, monkeypatch):
    import datasets

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(CompactLMError, match=expected):
        read_documents("org/corpus")


# --- the shipped calibration files -----------------------------------------------------------

def test_shared_calibration_files_split_as_documented(shared_data):
    wiki = read_documents(str(shared_data / "text" / "wiki.utf8"))
    raw = (shared_data / "text" / "wiki.utf8").read_text(encoding="utf-8")
    assert len(wiki) == raw.count("<doc ") and not any("<doc" in d or "</doc>" in d for d in wiki)
    tiny = read_documents(str(shared_data / "text" / "tiny.utf8"))
    assert len(tiny) > 100 and not any("<|endoftext|>" in d for d in tiny)
    assert len(read_documents(str(shared_data / "text" / "c4.utf8"))) == 1
