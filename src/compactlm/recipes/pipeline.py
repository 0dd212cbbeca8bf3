"""``compactlm run``: a recipe end to end, resumable stage by stage.

teacher ─ (correction) ─ for each step: importance ─ search | fixed architecture ─ prune ─ distill
        ─ export (GGUF) ─ eval (teacher, every step's prune and student, the GGUF files) ─ report

Every stage writes into the run directory (:class:`~.run_dir.RunLayout`) and its typed record
(:mod:`.records`) into ``run_state.json`` when it finishes; ``resume=True`` skips finished
stages, continues a search where it stopped and a distillation from its newest checkpoint, and
refuses a recipe changed where a started stage would see it (:mod:`.resume`) or other data. The
whole run holds :func:`~compactlm.lock.output_lock` on its directory: a second process is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data import load_blocks
from ..deploy import tokenizer_source
from ..distill import TrainArgs, distill, finetune
from ..distill.checkpoint import latest_checkpoint
from ..distill.checks import blocks_fingerprint, check_blocks_fit
from ..distill.config import steps_for_tokens
from ..errors import CompactLMError
from ..export import save_student
from ..importance import ImportanceScores, calibration_blocks, estimate_importance
from ..io import check_output_dir, write_json_atomic, write_text_atomic
from ..lock import output_lock
from ..models import load_model, load_tokenizer
from ..prune import prune
from ..readers import clip, read_json_object, reading
from ..search import AXES, search
from .eval_stage import eval_stage
from .gguf_stage import export_stage
from .records import (
    CORRECTION,
    DISTILL,
    EVAL,
    EXPORT,
    IMPORTANCE,
    PRUNE,
    SEARCH,
    CorrectionRecord,
    DistillRecord,
    ImportanceRecord,
    PruneRecord,
    RunState,
    SearchRecord,
    Session,
    StageRecord,
    stage_key,
)
from .resume import check_resume
from .run_dir import RunLayout, StepLayout
from .schema import SET_BY_PIPELINE, Recipe

logger = logging.getLogger(__name__)



@dataclass
class RunResult:
    run_dir: Path
    student: Path
    eval: dict
    report: Path | None
    exports: list[dict] = dataclasses.field(default_factory=list)   # GGUF files: path, quant, bytes


class _Models:
    """Loads models on demand and keeps the last one: a step's teacher serves importance, search,
    prune and distillation, none of which changes it (the trainer hands the caller's teacher back
    as it got it, ``distill/teacher.py``)."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self._cache: tuple[str, object] | None = None

    def get(self, path: str | Path):
        key = str(path)
        if self._cache is None or self._cache[0] != key:
            self.forget()   # one model at a time
            self._cache = (key, self.fresh(key))
        return self._cache[1]

    def forget(self) -> None:
        self._cache = None
        gc.collect()

    def fresh(self, path: str | Path):
        """A model nobody else holds (it will be trained in place)."""
        return load_model(str(path), dtype=self.recipe.dtype, device=self.recipe.device,
                          trust_remote_code=self.recipe.trust_remote_code, with_tokenizer=False)


def _read_state(run_dir: Path) -> RunState:
    """The saved ``run_state.json`` of a run directory, typed."""
    path, fix = RunLayout(run_dir).state, "Start the run afresh with --overwrite."
    saved = read_json_object(path, "run state file", fix)
    with reading(path, "run state file", fix):
        return RunState.from_dict(saved)


class _State:
    """``run_state.json`` (:class:`~.records.RunState`): finished stages with their records, written atomically.

    On a resume the saved stages are read back and ``recipe`` replaces the saved one: :func:`_check_run_dir` has
    refused every change a started stage would see (:func:`.resume.check_resume`)."""

    def __init__(self, run_dir: Path, recipe: dict, resume: bool) -> None:
        self.path = RunLayout(run_dir).state
        self.data = RunState(recipe=recipe)
        if resume:
            self.data = _read_state(run_dir)
            self.data.recipe = recipe

    def started(self, device: str) -> None:
        """Record the software and hardware of this session (a new run, or a resumed one)."""
        self.data.sessions.append(Session.here(device))
        write_json_atomic(self.path, self.data.to_dict())

    def stage(self, name: str, work: Callable[[], StageRecord]) -> StageRecord:
        done = self.data.stages.get(name)
        if done is not None:
            logger.info("[%s] done before (%.0f s); skipped", name, done.seconds)
            return done
        logger.info("[%s] ...", name)
        start = time.time()
        record = work()
        record.seconds = round(time.time() - start, 1)
        self.data.stages[name] = record
        write_json_atomic(self.path, self.data.to_dict())
        logger.info("[%s] finished in %.0f s", name, record.seconds)
        return record


def _check_run_dir(run_dir: Path, recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Everything about the run directory that can be refused, before any work and without deleting anything.

    A resume may change only the keys of stages that have not started (:mod:`.resume`)."""
    if resume:
        if not RunLayout(run_dir).state.is_file():
            raise CompactLMError(f"--resume: '{run_dir}' holds no {RunLayout(run_dir).state.name}. Run without "
                                 f"--resume to start it.")
        changes = check_resume(run_dir, _read_state(run_dir), _recipe_dict(recipe))
        if changes:
            logger.warning("resuming with changed settings of stages that have not started: %s",
                           clip("; ".join(str(c) for c in changes), 600))
        return
    check_output_dir(run_dir, overwrite=True, inputs=[recipe.teacher, recipe.data.source])
    if run_dir.is_dir() and not overwrite and any(run_dir.iterdir()):
        raise CompactLMError(f"Run directory '{run_dir}' already exists. Continue it with --resume, replace it with "
                             f"--overwrite, or choose another --out.")


def _recipe_dict(recipe: Recipe) -> dict:
    """The recipe as plain JSON data: what ``run_state.json`` keeps and a resume compares."""
    return json.loads(json.dumps(recipe.to_dict()))


def _recipe_yaml(recipe_dict: dict) -> str:
    """``recipe.yaml`` of the run: the whole recipe, less the keys the pipeline sets (so that it loads again)."""
    data = copy.deepcopy(recipe_dict)
    for step in data.get("steps") or []:
        for path in SET_BY_PIPELINE:
            node = step
            for key in path[:-1]:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(path[-1], None)
    return yaml.safe_dump(data, sort_keys=False)


def _open_run_dir(run_dir: Path, recipe: Recipe, resume: bool, data_fingerprint: str) -> _State:
    """The run's state; a new run (validated by :func:`_check_run_dir`) replaces the directory only now.

    A resume is refused when the token blocks differ from the ones the run was started on."""
    recipe_dict = _recipe_dict(recipe)
    if not resume:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
    state = _State(run_dir, recipe_dict, resume=resume)
    saved = state.data.data_fingerprint
    if saved is not None and saved != data_fingerprint:
        d = recipe.data
        raise CompactLMError(
            f"Cannot resume '{run_dir}': the data changed. The token blocks of data.source '{d.source}' (as the "
            f"teacher's tokenizer cuts them into {d.seq_len}-token blocks) now have fingerprint {data_fingerprint}; "
            f"the run was started on {saved}, and its finished stages were computed on that data. Restore the "
            f"original data, or start again with --overwrite.")
    state.data.data_fingerprint = data_fingerprint
    layout = RunLayout(run_dir)
    if not resume or not layout.recipe.is_file() or layout.recipe.read_text() != _recipe_yaml(recipe_dict):
        write_text_atomic(layout.recipe, _recipe_yaml(recipe_dict))
    state.started(recipe.device)
    return state


def inside_run_dir(run_dir: Path, name: str) -> Path:
    """``<run>/<name>``, refused unless it resolves inside the run directory (see :meth:`RunLayout.step`)."""
    return RunLayout(run_dir).step(name).root


def _train_args(train: TrainArgs, tokens: int, seq_len: int, device: str) -> TrainArgs:
    """``train`` with the steps for ``tokens`` and the recipe's device unless ``train`` names one."""
    return dataclasses.replace(train, max_steps=steps_for_tokens(tokens, train.batch_size, seq_len),
                               device=train.device if train.device != "auto" else device)


def _resuming(run_dir: Path, resume: bool) -> dict:
    again = resume and latest_checkpoint(run_dir) is not None
    return {"resume": again, "overwrite": not again}


def run(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        report: Callable[[Path], Path] | None = None) -> RunResult:
    """Run ``recipe`` into ``run_dir`` (see the module docstring).

    ``report(run_dir)`` renders the run's report last and returns its path: the CLI passes
    :func:`compactlm.report.render_report` (the report reads the run directory, so it stands
    above this package); ``None`` writes no report.
    """
    with output_lock(run_dir):   # one process per run directory: a second one is refused here
        return _run(recipe, Path(run_dir), resume, overwrite, report)


def _run(recipe: Recipe, run_dir: Path, resume: bool, overwrite: bool,
         report: Callable[[Path], Path] | None) -> RunResult:
    layout = RunLayout(run_dir)
    step_dirs = {step.name: layout.step(step.name) for step in recipe.steps}
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
    state = _open_run_dir(run_dir, recipe, resume, blocks_fingerprint(train_blocks, heldout))
    logger.info("data: %d training + %d held-out blocks of %d tokens from %s", train_blocks.shape[0],
                heldout.shape[0], d.seq_len, d.source)
    teacher_path: str | Path = recipe.teacher

    if recipe.correction.tokens:
        c = recipe.correction

        def correct() -> CorrectionRecord:
            out = layout.correction
            args = _train_args(TrainArgs(lr=c.lr, min_lr=c.lr / 10, batch_size=c.batch_size,
                                         micro_batch_size=c.micro_batch_size), c.tokens, d.seq_len, recipe.device)
            models.forget()   # the corrected copy is trained in place; do not hold two teachers
            result = finetune(models.fresh(teacher_path), train_blocks, out, tokenizer=tokenizer, heldout=heldout,
                              args=args, **_resuming(out, resume))
            result.stop_if_interrupted()
            return CorrectionRecord(model=str(out), precision=result.precision.get("precision"),
                                    tokens_per_second=result.tokens_per_second, mfu=result.mfu)

        teacher_path = state.stage(CORRECTION, correct).model

    for step in recipe.steps:
        teacher_path = _compress(step, teacher_path, step_dirs[step.name], state, models, tokenizer, train_blocks,
                                 heldout, recipe, resume)

    exports = []
    if recipe.export.gguf:
        exports = state.stage(EXPORT, lambda: export_stage(recipe, layout, Path(teacher_path))).files

    results = state.stage(EVAL, lambda: eval_stage(recipe, layout, state.data, models, tokenizer, heldout))
    report_path = report(run_dir) if report is not None else None
    return RunResult(run_dir=run_dir, student=Path(teacher_path), eval=results.eval_json(), report=report_path,
                     exports=[f.to_dict() for f in exports])


def _compress(step, teacher_path, step_dir: StepLayout, state: _State, models: _Models, tokenizer, train_blocks,
              heldout, recipe: Recipe, resume: bool) -> Path:
    """One compression step: importance → search or fixed → prune → distill. Returns the student's path."""
    imp, name = recipe.importance, step.name

    def importance() -> ImportanceRecord:
        teacher = models.get(teacher_path)
        scores = estimate_importance(teacher, calibration_blocks(train_blocks, imp.samples), imp, tokenizer=tokenizer,
                                     precision=recipe.precision,
                                     meta={"data": {"source": recipe.data.source, "seq_len": recipe.data.seq_len,
                                                    "blocks": min(imp.samples, train_blocks.shape[0])}})
        scores.save(step_dir.scores, overwrite=True)
        return ImportanceRecord(scores=str(step_dir.scores), teacher=str(teacher_path),
                                precision=scores.meta["precision"]["precision"],
                                tokens_per_second=scores.meta["tokens_per_second"], mfu=scores.meta["mfu"])

    state.stage(stage_key(name, IMPORTANCE), importance)
    scores = ImportanceScores.load(step_dir.scores)
    train = step.distill.train

    if step.architecture is not None:
        sizes = dataclasses.asdict(step.architecture)
        init_dir = None
    else:
        def run_search() -> SearchRecord:
            args = dataclasses.replace(step.search, target_params=step.target_params)
            result = search(models.get(teacher_path), scores, heldout, step_dir.search.root, args=args,
                            train_blocks=train_blocks, tokenizer=tokenizer,
                            train_args=dataclasses.replace(train, device=train.device if train.device != "auto"
                                                           else recipe.device),
                            loss=step.distill.loss, resume=resume,
                            tokenizer_source=tokenizer_source(str(teacher_path)) if args.latency else None)
            winner = result.winner
            retrained = step_dir.search.retrained(winner["name"])
            return SearchRecord(winner={a: winner[a] for a in AXES if a in winner}, name=winner["name"], params=winner["params"],
                                rank_correlation=result.rank_correlation, precision=result.precision,
                                retrained=str(retrained) if (retrained / "config.json").is_file() else None)

        found = state.stage(stage_key(name, SEARCH), run_search)
        sizes, init_dir = found.winner, found.retrained

    def do_prune() -> PruneRecord:
        student, plan = prune(models.get(teacher_path), scores, **sizes, aggregation=step.search.aggregation,
                              depth_metric=step.search.depth_metric)
        save_student(student, tokenizer, step_dir.pruned, plan=plan, overwrite=True,
                     provenance={"teacher": str(teacher_path), "step": name})
        return PruneRecord(model=str(step_dir.pruned), architecture=plan.target.to_dict())

    state.stage(stage_key(name, PRUNE), do_prune)

    def do_distill() -> DistillRecord:
        tokens = step.distill.tokens
        if tokens == 0:
            return DistillRecord(model=str(step_dir.pruned), tokens=0)
        continues = step.distill.init == "search" and init_dir is not None
        start = init_dir if continues else step_dir.pruned
        out = step_dir.distilled
        args = _train_args(train, tokens, recipe.data.seq_len, recipe.device)
        student = models.fresh(start).float()
        result = distill(student, models.get(teacher_path), train_blocks, out, tokenizer=tokenizer, heldout=heldout,
                         loss=step.distill.loss, args=args, student_dir=step_dir.pruned,
                         provenance={"teacher": str(teacher_path), "initialised_from": str(start)},
                         **_resuming(out, resume))
        result.stop_if_interrupted()
        return DistillRecord(model=str(out), initialised_from=str(start), continues_search=continues,
                             tokens=result.tokens, precision=result.precision.get("precision"),
                             tokens_per_second=result.tokens_per_second, mfu=result.mfu,
                             gemm_gflops=result.precision.get("gflops"))

    return Path(state.stage(stage_key(name, DISTILL), do_distill).model)
