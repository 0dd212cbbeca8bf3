"""``compactlm run``: a recipe end to end, resumable stage by stage.

teacher ─ (correction) ─ for each step: importance ─ search | fixed architecture ─ prune ─ distill
        ─ export (GGUF) ─ eval (teacher, every step's prune and student, the GGUF files) ─ report

Every stage writes into the run directory and is recorded in ``run_state.json`` when it
finishes; ``resume=True`` skips finished stages, continues a search where it stopped and a
distillation from its newest checkpoint. The run directory::

    recipe.yaml  run_state.json  eval.json  report.html
    correction/                     teacher correction (a distillation run dir), if enabled
    <step>/scores/                  activation importance of this step's teacher
    <step>/search/                  candidates.csv/json, one short distillation per top candidate
    <step>/pruned/                  the chosen architecture, pruned, not retrained (HF checkpoint)
    <step>/distilled/               the student: HF checkpoint + metrics.jsonl + checkpoints/
    student.<type>.gguf             the final student for llama.cpp, one file per export.gguf type
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..data import load_blocks
from ..distill import TrainArgs, distill, finetune
from ..distill.checkpoint import latest_checkpoint
from ..distill.config import steps_for_tokens
from ..distill.validate import check_blocks_fit
from ..errors import CompactLMError
from ..evaluate import evaluate
from ..export import save_student
from ..hardware import precision_for
from ..importance import ImportanceScores, estimate_importance, lm_loss
from ..io import check_output_dir, write_json_atomic, write_text_atomic
from ..models import load_model, load_tokenizer
from ..prune import prune
from ..readers import clip, read_json_object
from ..search import AXES, search
from ..summary import describe
from .gguf_stage import export_stage, gguf_entries, loader_mismatch
from .schema import Recipe

logger = logging.getLogger(__name__)

STATE_FILE = "run_state.json"
RECIPE_FILE = "recipe.yaml"
# Per-task numbers that describe the protocol rather than score the model.
NOT_SCORES = ("windows", "tokens", "window", "stride", "nll")


@dataclass
class RunResult:
    run_dir: Path
    student: Path
    eval: dict
    report: Path | None
    exports: list[dict] = dataclasses.field(default_factory=list)   # GGUF files: path, quant, bytes


class _Models:
    """Loads models on demand. The trainer casts a teacher to bf16 in place, so a model whose
    dtype changed is reloaded before it is pruned or evaluated again."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self._cache: tuple[str, object] | None = None

    def get(self, path: str | Path):
        from ..models import parse_dtype

        want = parse_dtype(self.recipe.dtype)
        key = str(path)
        if self._cache is not None and self._cache[0] == key and next(self._cache[1].parameters()).dtype == want:
            return self._cache[1]
        self._cache = None
        gc.collect()
        self._cache = (key, self.fresh(key))
        return self._cache[1]

    def forget(self) -> None:
        self._cache = None
        gc.collect()

    def fresh(self, path: str | Path):
        """A model nobody else holds (it will be trained in place)."""
        return load_model(str(path), dtype=self.recipe.dtype, device=self.recipe.device,
                          trust_remote_code=self.recipe.trust_remote_code, with_tokenizer=False)


class _State:
    """``run_state.json``: finished stages with their outputs and seconds, written atomically."""

    def __init__(self, run_dir: Path, recipe: dict, resume: bool) -> None:
        self.path = run_dir / STATE_FILE
        self.data = {"recipe": recipe, "stages": {}}
        if resume:
            saved = read_json_object(self.path, "run state file", "Start the run afresh with --overwrite.")
            if saved.get("recipe") != recipe or not isinstance(saved.get("stages"), dict):
                raise CompactLMError(
                    f"Cannot resume '{run_dir}': the recipe changed "
                    f"({clip(_differences(saved.get('recipe') or {}, recipe), 600)}). "
                    f"Resume with the original recipe, or start a new run directory.")
            self.data = saved

    def stage(self, name: str, work: Callable[[], dict | None]) -> dict:
        done = self.data["stages"].get(name)
        if done is not None:
            logger.info("[%s] done before (%.0f s); skipped", name, done["seconds"])
            return done
        logger.info("[%s] ...", name)
        start = time.time()
        record = work() or {}
        record["seconds"] = round(time.time() - start, 1)
        self.data["stages"][name] = record
        write_json_atomic(self.path, self.data)
        logger.info("[%s] finished in %.0f s", name, record["seconds"])
        return record


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            a, b = dict(enumerate(a)), dict(enumerate(b))
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.append(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(d for d in diffs if d)


def _check_run_dir(run_dir: Path, recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Everything about the run directory that can be refused, before any work and without deleting anything."""
    if resume:
        if not (run_dir / STATE_FILE).is_file():
            raise CompactLMError(f"--resume: '{run_dir}' holds no {STATE_FILE}. Run without --resume to start it.")
        return
    check_output_dir(run_dir, overwrite=True, inputs=[recipe.teacher, recipe.data.source])
    if run_dir.is_dir() and not overwrite and any(run_dir.iterdir()):
        raise CompactLMError(f"Run directory '{run_dir}' already exists. Continue it with --resume, replace it with "
                             f"--overwrite, or choose another --out.")


def _open_run_dir(run_dir: Path, recipe: Recipe, resume: bool) -> _State:
    """The run's state; a new run (validated by :func:`_check_run_dir`) replaces the directory only now."""
    recipe_dict = json.loads(json.dumps(recipe.to_dict()))
    if resume:
        return _State(run_dir, recipe_dict, resume=True)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_text_atomic(run_dir / RECIPE_FILE, yaml.safe_dump(recipe_dict, sort_keys=False))
    state = _State(run_dir, recipe_dict, resume=False)
    write_json_atomic(state.path, state.data)
    return state


def inside_run_dir(run_dir: Path, name: str) -> Path:
    """``<run>/<name>``, refused unless it resolves inside the run directory (no ``..``, no absolute path, no symlink out)."""
    path = run_dir / name
    if not path.resolve().is_relative_to(run_dir.resolve()) or path.resolve() == run_dir.resolve():
        raise CompactLMError(f"Step name {clip(name, 60)} would write outside the run directory '{run_dir}'. "
                             f"Use a plain name such as 'student'.")
    return path


def _train_args(train: TrainArgs, tokens: int, seq_len: int, device: str) -> TrainArgs:
    """``train`` with the steps for ``tokens`` and the recipe's device unless ``train`` names one."""
    return dataclasses.replace(train, max_steps=steps_for_tokens(tokens, train.batch_size, seq_len),
                               device=train.device if train.device != "auto" else device)


def _resuming(run_dir: Path, resume: bool) -> dict:
    again = resume and latest_checkpoint(run_dir) is not None
    return {"resume": again, "overwrite": not again}


def run(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        report: bool = True) -> RunResult:
    """Run ``recipe`` into ``run_dir`` (see the module docstring)."""
    run_dir = Path(run_dir)
    step_dirs = {step.name: inside_run_dir(run_dir, step.name) for step in recipe.steps}
    _check_run_dir(run_dir, recipe, resume, overwrite)
    if recipe.trust_remote_code:
        logger.warning("trust_remote_code is on: the Python code shipped with '%s' will run", recipe.teacher)
    # Inputs first (teacher, tokenizer, data); the run directory is replaced only once they all load.
    models = _Models(recipe)
    tokenizer = load_tokenizer(recipe.teacher, trust_remote_code=recipe.trust_remote_code)
    d = recipe.data
    blocks = load_blocks(d.source, tokenizer, seq_len=d.seq_len, heldout_samples=d.heldout_samples, seed=d.seed,
                         text_field=d.text_field, dataset_config=d.config, split=d.split)
    train_blocks, heldout = blocks.train, blocks.heldout
    problems = check_blocks_fit(train_blocks, models.get(recipe.teacher).config, "teacher")
    if problems:
        raise CompactLMError(f"Recipe data and teacher do not fit: {'; '.join(problems)}.")
    state = _open_run_dir(run_dir, recipe, resume)
    logger.info("data: %d training + %d held-out blocks of %d tokens from %s", train_blocks.shape[0],
                heldout.shape[0], d.seq_len, d.source)
    teacher_path: str | Path = recipe.teacher

    if recipe.correction.tokens:
        c = recipe.correction

        def correct() -> dict:
            out = run_dir / "correction"
            args = _train_args(TrainArgs(lr=c.lr, min_lr=c.lr / 10, batch_size=c.batch_size,
                                         micro_batch_size=c.micro_batch_size), c.tokens, d.seq_len, recipe.device)
            models.forget()   # the corrected copy is trained in place; do not hold two teachers
            finetune(models.fresh(teacher_path), train_blocks, out, tokenizer=tokenizer, heldout=heldout, args=args,
                     **_resuming(out, resume)).stop_if_interrupted()
            return {"model": str(out)}

        teacher_path = state.stage("correction", correct)["model"]

    for step in recipe.steps:
        teacher_path = _compress(step, teacher_path, step_dirs[step.name], state, models, tokenizer, train_blocks,
                                 heldout, recipe, resume)

    exports = []
    if recipe.export.gguf:
        exports = state.stage("export", lambda: export_stage(recipe, run_dir, Path(teacher_path)))["files"]

    results = state.stage("eval", lambda: _evaluate(recipe, run_dir, state, models, tokenizer, heldout))
    report_path = None
    if report:
        from ..report import render_report

        report_path = render_report(run_dir)
    return RunResult(run_dir=run_dir, student=Path(teacher_path), eval=results, report=report_path, exports=exports)


def _compress(step, teacher_path, step_dir: Path, state: _State, models: _Models, tokenizer, train_blocks, heldout,
              recipe: Recipe, resume: bool) -> Path:
    """One compression step: importance → search or fixed → prune → distill. Returns the student's path."""
    imp, name = recipe.importance, step.name

    def importance() -> dict:
        teacher = models.get(teacher_path)
        scores = estimate_importance(teacher, train_blocks[:imp.samples], batch_size=imp.batch_size,
                                     layer_loss_samples=imp.layer_loss_samples,
                                     seq_aggregations=imp.seq_aggregations, precision=recipe.precision,
                                     meta={"data": {"source": recipe.data.source, "seq_len": recipe.data.seq_len,
                                                    "blocks": min(imp.samples, train_blocks.shape[0])}})
        scores.save(step_dir / "scores", overwrite=True)
        return {"scores": str(step_dir / "scores"), "teacher": str(teacher_path),
                "precision": scores.meta["precision"]["precision"], "tokens_per_second": scores.meta["tokens_per_second"],
                "mfu": scores.meta["mfu"]}

    state.stage(f"{name}/importance", importance)
    scores = ImportanceScores.load(step_dir / "scores")
    train = step.distill.train

    if step.architecture is not None:
        sizes = {a: step.architecture.get(a) for a in AXES}
        init_dir = None
    else:
        def run_search() -> dict:
            args = dataclasses.replace(step.search, target_params=step.target_params)
            result = search(models.get(teacher_path), scores, heldout, step_dir / "search", args=args,
                            train_blocks=train_blocks, tokenizer=tokenizer,
                            train_args=dataclasses.replace(train, device=train.device if train.device != "auto"
                                                           else recipe.device),
                            loss=step.distill.loss, resume=resume)
            winner = result.winner
            retrained = step_dir / "search" / winner["name"] / "retrained"
            return {"winner": {a: winner[a] for a in AXES}, "name": winner["name"], "params": winner["params"],
                    "rank_correlation": result.rank_correlation,
                    "retrained": str(retrained) if (retrained / "config.json").is_file() else None}

        found = state.stage(f"{name}/search", run_search)
        sizes, init_dir = found["winner"], found.get("retrained")

    def do_prune() -> dict:
        student, plan = prune(models.get(teacher_path), scores, **sizes, aggregation=step.search.aggregation,
                              depth_metric=step.search.depth_metric)
        save_student(student, tokenizer, step_dir / "pruned", plan=plan, overwrite=True,
                     provenance={"teacher": str(teacher_path), "step": name})
        return {"model": str(step_dir / "pruned"), "architecture": plan.target.to_dict()}

    state.stage(f"{name}/prune", do_prune)

    def do_distill() -> dict:
        tokens = step.distill.tokens
        if tokens == 0:
            return {"model": str(step_dir / "pruned"), "tokens": 0}
        start = init_dir if step.distill.init == "search" and init_dir else step_dir / "pruned"
        out = step_dir / "distilled"
        args = _train_args(train, tokens, recipe.data.seq_len, recipe.device)
        student = models.fresh(start).float()
        result = distill(student, models.get(teacher_path), train_blocks, out, tokenizer=tokenizer, heldout=heldout,
                         loss=step.distill.loss, args=args, student_dir=step_dir / "pruned",
                         provenance={"teacher": str(teacher_path), "initialised_from": str(start)},
                         **_resuming(out, resume))
        result.stop_if_interrupted()
        return {"model": str(out), "initialised_from": str(start), "tokens": result.tokens,
                "precision": result.precision.get("precision"), "tokens_per_second": result.tokens_per_second,
                "mfu": result.mfu, "gemm_gflops": result.precision.get("gflops")}

    return Path(state.stage(f"{name}/distill", do_distill)["model"])


def _evaluate(recipe: Recipe, run_dir: Path, state: _State, models: _Models, tokenizer, heldout) -> dict:
    """Teacher, then every step's prune (not retrained) and student: held-out perplexity and the recipe's tasks."""
    stages = state.data["stages"]
    entries = [("teacher", recipe.teacher)]
    if "correction" in stages:
        entries.append(("teacher (corrected)", stages["correction"]["model"]))
    for step in recipe.steps:
        entries += [(f"{step.name}: pruned", stages[f"{step.name}/prune"]["model"]),
                    (f"{step.name}: distilled", stages[f"{step.name}/distill"]["model"])]
    entries += gguf_entries(recipe, stages)
    e = recipe.eval
    rows = []
    for label, path in entries:
        if any(r["path"] == path for r in rows):   # distill.tokens 0: the student is the prune
            continue
        model = models.get(path)
        info = describe(model)
        skip = loader_mismatch(label, info, rows)
        if skip:
            logger.warning("eval %s: skipped: %s", label, skip)
            continue
        precision = precision_for(recipe.precision, model)
        loss = lm_loss(model, heldout, e.batch_size, precision.bf16)
        metrics = {"heldout_ppl": math.exp(min(loss, 50.0))}
        tasks = evaluate(model, tokenizer, e.tasks, e.limit, batch_size=e.batch_size, window=e.window,
                         bf16=precision.bf16) if e.tasks else {"results": {}}
        for task, out in tasks["results"].items():
            for metric, value in out["metrics"].items():
                if isinstance(value, (int, float)) and metric not in NOT_SCORES and not metric.endswith("_stderr"):
                    metrics[f"{task} {metric}"] = value
        rows.append({"model": label, "path": path, "parameters": info["parameters"]["total"],
                     "breakdown": info["parameters"], "architecture": info["architecture"], "metrics": metrics,
                     "precision": precision.precision})
        logger.info("eval %s: %s", label, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    result = {"rows": rows, "heldout_blocks": heldout.shape[0], "tasks": e.tasks, "limit": e.limit, "window": e.window}
    write_json_atomic(run_dir / "eval.json", result)
    return result
