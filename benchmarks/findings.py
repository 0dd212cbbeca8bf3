"""Reproduce the Minitron papers' findings at small scale, one experiment at a time.

    python -m benchmarks.findings [--experiments aggregation,criteria,axes,depth,losses,intermediate,ranking,scratch]
        [--model smollm2-135m] [--data exllamav2:wiki] [--tokens 32768] [--seq-len 256] [--eval-windows 32]
        [--eval-data wikitext2|FILE|exllamav2:c4] [--seed 0 | --seeds 0,1,2] [--lr 1e-4] [--quick]
        [--scale cpu|device] [--device cpu|cuda]
        [--out benchmarks/results/findings.json] [--markdown docs/findings.md]

Every arm of an experiment starts from the same full-precision teacher (SmolLM2-135M by
default), trains on the same ``--tokens`` of ``--data`` with the same seed, and is scored by
the same evaluation: mean next-token loss (nats) over the first ``--eval-windows``
non-overlapping windows of ``--seq-len`` tokens of WikiText-2 (raw, test; the
``compactlm.evaluate.perplexity`` protocol), or of ``--eval-data`` when given. Two width
targets are used throughout: ``mlp/2`` (MLP intermediate size halved, nothing else) and
``width`` (hidden x3/4, MLP x1/2, query heads x2/3 rounded to a multiple of the KV groups).

  aggregation   the nine (batch, seq) activation aggregations, both width targets, no retraining (Table 13)
  criteria      activation vs random vs weight magnitude vs first-order Taylor, both targets, before/after KD
  axes          width-only vs depth-only vs depth+width at the depth-only student's parameter count (Table 1)
  depth         depth metrics bi / loss / block removing L//4 layers, before/after KD
  losses        forward_kl, reverse_kl, mse, cosine, KL+LM, LM only on the `width` student (Table 15)
  intermediate  logit-only vs logit+intermediate states for a depth-pruned (L//2 layers) and the `width` student
  ranking       up to 6 search candidates at 2/3 of the teacher, Spearman of rankings during KD vs the final one
  scratch       pruned+distilled `width` student vs the same architecture randomly initialised, LM loss

Each experiment prints a table, replaces its own entry in ``--out`` (JSON) and regenerates
``--markdown`` from the whole JSON. ``--quick`` shrinks every budget (2 steps of 2 sequences,
2 eval windows, 3 candidates) for a smoke test on a tiny model. Timings are recorded, never asserted.
``--seeds`` runs each experiment once per seed (data order, training, random scores) and reports
every arm's mean ± standard deviation over the seeds, with each seed's verdict; ``--scale device``
is the GPU preset (1M tokens per arm, 128 evaluation windows, seeds 0,1,2).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import DOCS, RESULTS, data_dir, fmt, run_script
from compactlm import load_model
from compactlm.arch import Architecture, adapter_for
from compactlm.config import ImportanceSection
from compactlm.data import load_blocks
from compactlm.data.packaged import is_packaged, packaged_path
from compactlm.distill import LossArgs, TrainArgs, distill, finetune
from compactlm.distill.config import parse_tokens, steps_for_tokens
from compactlm.errors import CompactLMError, unknown_name
from compactlm.evaluate import MissingData, get_task, windows
from compactlm.evaluate.task_data import load_rows
from compactlm.importance import AGGREGATIONS, CRITERIA, CriterionOptions, estimate_importance, lm_loss
from compactlm.io import write_json_atomic, write_text_atomic
from compactlm.prune import PrunePlan, PruneTarget, apply_plan, make_plan, select_units
from compactlm.search import SearchArgs, SearchSpace, count_parameters, enumerate_candidates, parameter_layout, spearman
from compactlm.search.ranking import candidates_for, prune_candidate


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    run: Callable[["Context"], dict]


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(name: str, claim: str):
    """Register ``fn(ctx) -> {"rows", "verdict", "summary"?}`` under ``name``."""
    def register(fn):
        EXPERIMENTS[name] = Experiment(name, claim, fn)
        return fn
    return register


@dataclass
class Budget:
    steps: int
    batch_size: int
    micro_batch_size: int
    eval_windows: int
    calibration_blocks: int
    layer_loss_samples: int
    taylor_batches: int
    candidates: int
    lr: float


# ---- shared helpers ---------------------------------------------------------------------------------

def arch_name(arch: Architecture) -> str:
    return (f"h{arch.hidden_size}-f{arch.intermediate_size}-a{arch.num_attention_heads}"
            f"-kv{arch.num_key_value_heads}-l{arch.num_hidden_layers}")


def ppl(loss: float | None) -> float | None:
    return None if loss is None else math.exp(min(loss, 50.0))


def claim_word(checks: list[bool]) -> str:
    return "yes" if all(checks) else "no" if not any(checks) else "partly"


def verdict(word: str, detail: str) -> str:
    return f"paper claim held here: {word} ({detail})"


def width_targets(a: Architecture) -> dict[str, PruneTarget]:
    """The two width targets every width experiment uses (sizes in steps of 8, heads in KV groups)."""
    eighths = lambda x: max(8, int(x) // 8 * 8)  # noqa: E731
    groups = a.num_key_value_heads
    heads = groups * max(1, round(a.num_attention_heads * 2 / 3 / groups))
    return {"mlp/2": PruneTarget(intermediate_size=eighths(a.intermediate_size / 2)),
            "width": PruneTarget(hidden_size=eighths(a.hidden_size * 3 / 4),
                                 intermediate_size=eighths(a.intermediate_size / 2), num_attention_heads=heads)}


def eval_text(spec: str | None) -> tuple[str, str]:
    """(text, description): WikiText-2 test by default (local copy, Hub or bundle), else a file or packaged corpus."""
    if spec in (None, "wikitext2"):
        task = get_task("wikitext2")
        try:
            rows, where = load_rows("wikitext2", task.source, data_dir())
            return task.text(rows), f"wikitext2 test ({where})"
        except MissingData:
            text, where = eval_text("exllamav2:c4")
            return text, f"{where} (fallback: WikiText-2 not found offline)"
    path = packaged_path(spec) if is_packaged(spec) else Path(spec).expanduser()
    if not path.is_file():
        raise CompactLMError(f"--eval-data '{spec}' is not a file, a packaged corpus (exllamav2:c4) or 'wikitext2'.")
    if path.suffix == ".jsonl":
        text = "\n\n".join(json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    else:
        text = path.read_text(encoding="utf-8")
    return text, spec


class Context:
    """Teacher, data, evaluation windows and budgets shared by every experiment of one run."""

    def __init__(self, args: argparse.Namespace):
        q = args.quick
        self.args = args
        batch = args.batch_size or (2 if q else 8)
        steps = 2 if q and args.tokens is None else steps_for_tokens(parse_tokens(args.tokens or "32768"), batch, args.seq_len)
        self.budget = Budget(steps=steps, batch_size=batch, micro_batch_size=min(batch, 2 if q else 4),
                             eval_windows=args.eval_windows or (2 if q else 32), calibration_blocks=4 if q else 32,
                             layer_loss_samples=2 if q else 8, taylor_batches=1 if q else 4,
                             candidates=3 if q else 6, lr=args.lr)
        self.device = getattr(args, "device", "cpu")
        self.teacher, self.tok = load_model(args.model)   # distill() borrows it and hands it back unchanged
        self.teacher.to(self.device)
        self.adapter = adapter_for(self.teacher.config)
        self.source = self.adapter.architecture(self.teacher.config)
        self.layout = parameter_layout(self.teacher.config)
        self.targets = width_targets(self.source)
        b = self.budget
        blocks = load_blocks(args.data, self.tok, seq_len=args.seq_len, num_samples=b.steps * b.batch_size,
                             heldout_samples=b.calibration_blocks, seed=args.seed)
        self.train, self.calibration = blocks.train, blocks.heldout                # (N, T), (C, T)
        text, self.eval_source = eval_text(args.eval_data)
        ids = torch.tensor(self.tok(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
        spans = windows(len(ids), args.seq_len)[:b.eval_windows]
        if not spans:
            raise CompactLMError(f"The evaluation text has {len(ids)} tokens, fewer than one window of {args.seq_len}.")
        self.eval_ids = torch.stack([ids[w.begin:w.end] for w in spans])           # (W, T)
        self.teacher_loss = self.evaluate(self.teacher)
        self._scores = None

    @property
    def scores(self):
        """Activation importance, once per run, with all three sequence aggregations recorded."""
        if self._scores is None:
            options = ImportanceSection(batch_size=4, layer_loss_samples=self.budget.layer_loss_samples,
                                        seq_aggregations="mean,l2,var")
            self._scores = estimate_importance(self.teacher, self.calibration, options, show_progress=False)
        return self._scores

    def prune(self, plan: PrunePlan):
        return apply_plan(self.teacher, plan)

    def plan(self, target: PruneTarget, **kwargs) -> PrunePlan:
        return make_plan(self.scores, target, **kwargs)

    def evaluate(self, model) -> float:
        """Mean next-token loss (nats) over the evaluation windows."""
        was_training = model.training
        loss = lm_loss(model.eval(), self.eval_ids, batch_size=4)
        model.train(was_training)
        return loss

    def retrain(self, student, plan: PrunePlan | None, loss: LossArgs | None = None, *, teacher: bool = True,
                on_step: Callable[[int], None] | None = None) -> tuple[float, float, int]:
        """The same short run for every arm; returns (loss after, seconds, tokens)."""
        b = self.budget
        args = TrainArgs(lr=b.lr, min_lr=b.lr / 10, batch_size=b.batch_size, micro_batch_size=b.micro_batch_size,
                         max_steps=b.steps, precision="bf16", val_every=0, checkpoint_every=0, keep_checkpoints=1,
                         device=self.device, seed=self.args.seed)
        torch.manual_seed(self.args.seed)
        with tempfile.TemporaryDirectory(prefix="findings-") as tmp:
            if plan is not None:
                plan.save(tmp)  # prune_plan.json: the layer map of the intermediate-state loss
            start = time.perf_counter()
            if teacher:
                result = distill(student, self.teacher, self.train, Path(tmp) / "run", loss=loss or LossArgs(),
                                 args=args, student_dir=tmp if plan is not None else None, overwrite=True,
                                 on_step=on_step)
            else:
                result = finetune(student, self.train, Path(tmp) / "run", loss=loss, args=args, overwrite=True,
                                  on_step=on_step)
            seconds = time.perf_counter() - start
        return self.evaluate(student), seconds, result.tokens

    def row(self, arm: str, model, *, before: float | None = None, after: float | None = None, tokens: int = 0,
            seconds: float = 0.0, **extra) -> dict:
        return {"arm": arm, "architecture": arch_name(self.adapter.architecture(model.config)),
                "parameters": sum(p.numel() for p in model.parameters()),
                "loss_before": before, "ppl_before": ppl(before), "loss_after": after, "ppl_after": ppl(after),
                "tokens": tokens, "seconds": round(seconds, 2), **extra}

    def prune_and_retrain(self, arm: str, plan: PrunePlan, loss: LossArgs | None = None, **extra) -> dict:
        student = self.prune(plan)
        before = self.evaluate(student)
        after, seconds, tokens = self.retrain(student, plan, loss)
        return self.row(arm, student, before=before, after=after, tokens=tokens, seconds=seconds, **extra)

    def setup(self) -> dict:
        b, a = self.budget, self.args
        return {"model": a.model, "data": a.data, "eval": self.eval_source, "eval_windows": len(self.eval_ids),
                "window": a.seq_len, "seq_len": a.seq_len, "tokens_per_arm": b.steps * b.batch_size * a.seq_len,
                "steps": b.steps, "batch_size": b.batch_size, "lr": b.lr, "precision": "bf16",
                "calibration_blocks": len(self.calibration), "seeds": {"data": a.seed, "train": a.seed, "random": a.seed},
                "quick": a.quick, "teacher_loss": self.teacher_loss, "teacher_ppl": ppl(self.teacher_loss),
                "teacher_parameters": sum(p.numel() for p in self.teacher.parameters())}


def _best(rows: list[dict], key: str = "loss_after") -> dict:
    return min(rows, key=lambda r: r[key])


def _loss(rows: list[dict], arm: str, key: str = "loss_after") -> float:
    return next(r[key] for r in rows if r["arm"] == arm)


# ---- the experiments --------------------------------------------------------------------------------

@experiment("aggregation", "(batch l2, seq mean) is the best of the nine activation aggregations "
            "(Table 13, LM loss with no retraining; best practice #2)")
def aggregation(ctx: Context) -> dict:
    rows, ranks, best = [], {}, {}
    for tname, target in ctx.targets.items():
        arms = []
        for batch in AGGREGATIONS:
            for seq in AGGREGATIONS:
                start = time.perf_counter()
                student = ctx.prune(ctx.plan(target, aggregation=(batch, seq)))
                arms.append(ctx.row(f"{tname} {batch},{seq}", student, before=ctx.evaluate(student),
                                    seconds=time.perf_counter() - start, target=tname, aggregation=f"{batch},{seq}"))
        order = [r["aggregation"] for r in sorted(arms, key=lambda r: r["loss_before"])]
        ranks[tname] = order.index("l2,mean") + 1
        best[tname] = order[0]
        rows += arms
    detail = "; ".join(f"{t}: l2,mean ranks #{r} of 9, best {best[t]}" for t, r in ranks.items())
    return {"rows": rows, "verdict": verdict(claim_word([r == 1 for r in ranks.values()]), detail),
            "summary": {"l2_mean_rank": ranks, "note": "arms are 'target batch,seq'; no retraining"}}


@experiment("criteria", "activation-based importance beats random, weight magnitude and first-order Taylor "
            "(LLM-Pruner-style) importance, before and after retraining")
def criteria(ctx: Context) -> dict:
    teacher = ctx.teacher
    s, b = ctx.source, ctx.budget
    calibration = ctx.calibration[:b.taylor_batches * b.micro_batch_size]
    options = CriterionOptions(batch_size=b.micro_batch_size, seed=ctx.args.seed, show_progress=False)
    random, magnitude, taylor = (CRITERIA[name](teacher, calibration, options) for name in ("random", "magnitude", "taylor"))
    agg = ("l2", "mean")
    activation = (ctx.scores.neurons(agg), ctx.scores.heads(agg), ctx.scores.channels(agg))
    criteria_scores = {"activation": activation, "random": random, "magnitude": magnitude, "taylor": taylor}
    rows, checks, lines = [], [], []
    for tname, target in ctx.targets.items():
        arch = target.resolve(s)
        arms = []
        for name, (neurons, heads, channels) in criteria_scores.items():
            plan = select_units(s, arch, layers=list(range(s.num_hidden_layers)), neurons=neurons, heads=heads,
                                channels=channels)
            plan.criteria = {"criterion": name}
            arms.append(ctx.prune_and_retrain(f"{tname} {name}", plan, target=tname, criterion=name))
        rows += arms
        for key in ("loss_before", "loss_after"):
            best = _best(arms, key)["criterion"]
            checks.append(best == "activation")
            lines.append(f"{tname} {key.split('_')[1]}: best {best}")
    return {"rows": rows, "verdict": verdict(claim_word(checks), "; ".join(lines))}


def match_width(ctx: Context, target_params: int, layers: int) -> PruneTarget:
    """Hidden/MLP sizes (heads kept) at ``layers`` layers within a few % of ``target_params``, shrunk evenly."""
    s = ctx.source
    space = SearchSpace.derive(s)
    space.num_hidden_layers, space.num_attention_heads = [layers], [s.num_attention_heads]
    for tolerance in (0.03, 0.05, 0.1, 0.2):
        try:
            found = enumerate_candidates(space, s, ctx.layout, ctx.teacher.config.model_type, target_params, tolerance)
        except CompactLMError:
            continue
        even = min(found, key=lambda c: (round(abs(c.arch.hidden_size / s.hidden_size
                                                   - c.arch.intermediate_size / s.intermediate_size), 2),
                                         abs(c.params - target_params)))
        return PruneTarget(**even.sizes())
    raise CompactLMError(f"No width-pruned architecture with {layers} layers comes within 20% of {target_params:,} parameters.")


@experiment("axes", "at the same parameter count, width-only pruning beats depth+width, which beats depth-only, "
            "after retraining (Table 1, best practice #4)")
def axes(ctx: Context) -> dict:
    L = ctx.source.num_hidden_layers
    cut = max(1, L // 2)
    depth = PruneTarget(num_hidden_layers=L - cut)
    target_params = count_parameters(ctx.source.replace(num_hidden_layers=L - cut), ctx.layout)
    arms = {"width only": match_width(ctx, target_params, L), "depth only": depth,
            "depth+width": match_width(ctx, target_params, L - max(1, cut // 2))}
    rows = [ctx.prune_and_retrain(arm, ctx.plan(target), target_params=target_params) for arm, target in arms.items()]
    width, deep, both = (_loss(rows, arm) for arm in arms)
    return {"rows": rows, "verdict": verdict(claim_word([width < both, width < deep]),
                                             f"after retraining: width {width:.3f}, depth+width {both:.3f}, "
                                             f"depth {deep:.3f} nats"),
            "summary": {"target_parameters": target_params, "depth_only_layers_removed": cut,
                        "note": "intermediate-state loss on (auto) for the students with fewer layers"}}


@experiment("depth", "dropping layers non-contiguously by Block Importance or by single-layer LM loss gives lower "
            "LM loss than dropping the best contiguous block (the follow-up prefers the block only for downstream accuracy)")
def depth(ctx: Context) -> dict:
    L = ctx.source.num_hidden_layers
    cut = max(1, L // 4)
    rows = []
    for metric in ("bi", "loss", "block"):
        plan = ctx.plan(PruneTarget(num_hidden_layers=L - cut), depth_metric=metric)
        removed = sorted(set(range(L)) - set(plan.layers))
        rows.append(ctx.prune_and_retrain(metric, plan, removed_layers=removed, note=f"removed {removed}"))
    checks = [_loss(rows, m, k) < _loss(rows, "block", k) for m in ("bi", "loss") for k in ("loss_before", "loss_after")]
    detail = ", ".join(f"{r['arm']} {r['loss_before']:.3f} -> {r['loss_after']:.3f}" for r in rows)
    return {"rows": rows, "verdict": verdict(claim_word(checks), f"before -> after retraining: {detail} nats"),
            "summary": {"layers_removed": cut}}


@experiment("losses", "forward KL on the logits alone is the best retraining loss (Table 15, best practice #5; "
            "the paper's other arms add the LM loss to each, here each logit loss stands alone)")
def losses(ctx: Context) -> dict:
    plan = ctx.plan(ctx.targets["width"])
    pruned = ctx.prune(plan)
    before = ctx.evaluate(pruned)
    arms = {"forward_kl": (LossArgs(intermediate="off"), True), "reverse_kl": (LossArgs("reverse_kl", intermediate="off"), True),
            "mse": (LossArgs("mse", intermediate="off"), True), "cosine": (LossArgs("cosine", intermediate="off"), True),
            "kl+lm": (LossArgs(clm_weight=1.0, intermediate="off"), True),
            "lm only": (LossArgs(clm_weight=1.0, intermediate="off"), False)}
    rows = []
    for arm, (loss, with_teacher) in arms.items():
        student = copy.deepcopy(pruned)
        after, seconds, tokens = ctx.retrain(student, plan, loss, teacher=with_teacher)
        rows.append(ctx.row(arm, student, before=before, after=after, tokens=tokens, seconds=seconds))
    kl = _loss(rows, "forward_kl")
    return {"rows": rows, "verdict": verdict(claim_word([kl <= r["loss_after"] for r in rows]),
                                             f"best {_best(rows)['arm']}; forward_kl {kl:.3f} nats")}


@experiment("intermediate", "intermediate-state (hidden-state) distillation helps a depth-pruned student; a width-pruned "
            "student gains nothing from it (best practice #6)")
def intermediate(ctx: Context) -> dict:
    L = ctx.source.num_hidden_layers
    students = {"depth": ctx.plan(PruneTarget(num_hidden_layers=L - max(1, L // 2))), "width": ctx.plan(ctx.targets["width"])}
    rows = [ctx.prune_and_retrain(f"{kind} {mode}", plan, LossArgs(intermediate=mode), student=kind, intermediate=mode)
            for kind, plan in students.items() for mode in ("off", "on")]
    gain = {k: _loss(rows, f"{k} off") - _loss(rows, f"{k} on") for k in students}
    return {"rows": rows, "summary": {"gain_nats": {k: round(v, 4) for k, v in gain.items()}},
            "verdict": verdict(claim_word([gain["depth"] > 0, gain["width"] < gain["depth"]]),
                               f"gain from intermediate states: depth {gain['depth']:+.3f}, width {gain['width']:+.3f} nats")}


def _spread(candidates: list, k: int) -> list:
    """k candidates spread over the space (sorted by sizes), not the k nearest twins."""
    ordered = sorted(candidates, key=lambda c: (c.arch.num_hidden_layers, c.arch.hidden_size,
                                                c.arch.intermediate_size, c.arch.num_attention_heads))
    if len(ordered) <= k:
        return ordered
    return [ordered[round(i * (len(ordered) - 1) / (k - 1))] for i in range(k)] if k > 1 else ordered[:1]


@experiment("ranking", "the ranking of candidate architectures by validation loss settles early in the short "
            "retraining (~300 steps in the paper; best practice #9)")
def ranking(ctx: Context) -> dict:
    for tolerance in (0.05, 0.1):
        search_args = SearchArgs(target_params="0.667", tolerance=tolerance, max_candidates=None)
        try:
            candidates, target_params = candidates_for(ctx.scores, ctx.teacher.config, search_args)
            break
        except CompactLMError:
            if tolerance == 0.1:
                raise
    n = ctx.budget.steps
    marks = sorted({0, n // 4, n // 2, n})
    rows, curves = [], {}
    for candidate in _spread(candidates, ctx.budget.candidates):
        student, plan = prune_candidate(ctx.teacher, ctx.scores, candidate, search_args)
        curve = {0: ctx.evaluate(student)}

        def on_step(step: int, student=student, curve=curve) -> None:
            if step in marks and step != n:
                curve[step] = ctx.evaluate(student)

        after, seconds, tokens = ctx.retrain(student, plan, on_step=on_step)
        curve[n] = after
        curves[candidate.name] = curve
        rows.append(ctx.row(candidate.name, student, before=curve[0], after=after, tokens=tokens, seconds=seconds,
                            losses_at_steps={str(k): v for k, v in curve.items()},
                            note=" · ".join(f"@{k} {v:.3f}" for k, v in sorted(curve.items()))))
    final = [c[n] for c in curves.values()]
    rho = {str(m): spearman([c[m] for c in curves.values()], final) for m in marks}
    rho = {m: None if r is None else round(r, 3) for m, r in rho.items()}
    half = rho[str(n // 2)]
    word = "n/a" if half is None else "yes" if half >= 0.8 else "partly" if half >= 0.4 else "no"
    detail = ", ".join(f"step {m}: {'-' if r is None else f'{r:+.2f}'}" for m, r in rho.items())
    return {"rows": rows, "summary": {"target_parameters": target_params, "spearman_vs_final": rho, "steps": marks},
            "verdict": verdict(word, f"Spearman vs the final ranking at {detail} (held = >= 0.8 by step {n // 2})")}


@experiment("scratch", "pruning + distillation beats training the same architecture from random initialisation "
            "(Table 1: random init LM loss 3.95 vs 2.05)")
def scratch(ctx: Context) -> dict:
    from transformers import AutoModelForCausalLM

    plan = ctx.plan(ctx.targets["width"])
    pruned = ctx.prune_and_retrain("pruned + distilled (forward_kl)", plan)
    torch.manual_seed(ctx.args.seed)
    config = ctx.adapter.pruned_config(ctx.teacher.config, plan.target, plan.layers)
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    before = ctx.evaluate(student)
    after, seconds, tokens = ctx.retrain(student, None, LossArgs(clm_weight=1.0, intermediate="off"), teacher=False)
    rows = [pruned, ctx.row("random init + LM loss", student, before=before, after=after, tokens=tokens, seconds=seconds)]
    return {"rows": rows, "verdict": verdict(claim_word([rows[0]["loss_after"] < after]),
                                             f"{rows[0]['loss_after']:.3f} vs {after:.3f} nats after the same tokens")}


# ---- output: tables, JSON, Markdown -----------------------------------------------------------------

def _params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def table(rows: list[dict]) -> list[str]:
    lines = ["| arm | architecture | params | loss before | ppl before | loss after | ppl after | tokens | s | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]

    def pm(r: dict, key: str) -> str:
        std = r.get(f"{key}_std")
        return fmt(r[key], ".4f") + (f" ± {std:.4f}" if std is not None else "")

    for r in rows:
        lines.append(f"| {r['arm']} | {r['architecture']} | {_params(r['parameters'])} | {pm(r, 'loss_before')} "
                     f"| {fmt(r['ppl_before'], '.2f')} | {pm(r, 'loss_after')} | {fmt(r['ppl_after'], '.2f')} "
                     f"| {fmt(r['tokens'] or None, ',')} | {r['seconds']:.1f} | {r.get('note', '')} |")
    return lines


SEED_MEANS = ("loss_before", "loss_after", "seconds")


def over_seeds(entries: list[dict], seeds: list[int]) -> dict:
    """One experiment's per-seed entries as one: each arm's mean ± std over the seeds, every seed's verdict.

    Arms are matched by name; an arm that not every seed produced (a search candidate that only one
    seed's calibration ranked) keeps its first seed's numbers and says so.
    """
    if len(entries) == 1:
        return entries[0]
    rows = []
    for row in entries[0]["rows"]:
        group = [r for e in entries for r in e["rows"] if r["arm"] == row["arm"]]
        merged = dict(row)
        if len(group) < len(entries):
            merged["note"] = (row.get("note", "") + f" (seed {seeds[0]} only)").strip()
            rows.append(merged)
            continue
        for key in SEED_MEANS:
            values = [g[key] for g in group]
            if all(v is not None for v in values):
                merged[key] = statistics.mean(values)
                if key != "seconds":
                    merged[f"{key}_std"] = statistics.stdev(values)
        merged["ppl_before"], merged["ppl_after"] = ppl(merged["loss_before"]), ppl(merged["loss_after"])
        rows.append(merged)
    words = [e["verdict"].removeprefix("paper claim held here: ").split(" ", 1)[0] for e in entries]
    held = sum(w == "yes" for w in words)
    detail = "; ".join(f"seed {s}: {e['verdict'].removeprefix('paper claim held here: ')}" for s, e in zip(seeds, entries))
    return {**entries[0], "rows": rows, "seeds_run": seeds,
            "wall_seconds": sum(e["wall_seconds"] for e in entries),
            "verdict": f"paper claim held in {held} of {len(entries)} seeds ({detail})",
            "per_seed": [{"seed": s, "rows": e["rows"], "verdict": e["verdict"]} for s, e in zip(seeds, entries)]}


def setup_line(e: dict) -> str:
    return (f"Setup: model `{e['model']}`, training data `{e['data']}`, evaluation {e['eval']} "
            f"({e['eval_windows']} windows of {e['window']} tokens); {e['tokens_per_arm']:,} tokens per retrained arm "
            f"({e['steps']} steps x {e['batch_size']} sequences x {e['seq_len']} tokens, lr {e['lr']:g}, {e['precision']}); "
            f"{e['calibration_blocks']} calibration blocks; "
            + (f"seeds {e['seeds_run']}, mean ± std over them" if e.get("seeds_run") else f"seed {e['seeds']['train']}")
            + " (data, training, random scores); "
            f"retraining loss forward KL unless an arm says otherwise; teacher loss {e['teacher_loss']:.4f} "
            f"(ppl {e['teacher_ppl']:.2f}); wall time {e['wall_seconds']:.1f} s" + (" (--quick)" if e["quick"] else "") + ".")


INTRO = """# Minitron findings at small scale

Generated by `benchmarks/findings.py` from `{json}`; re-run an experiment to refresh its section.

These are small-scale measurements: a 135M-parameter teacher (SmolLM2-135M unless a section says
otherwise), tens of thousands of training tokens per arm instead of billions, on a 2-core CPU. They are
indicative of direction only; differences of a few hundredths of a nat are within run-to-run noise.
"Loss" is the mean next-token cross-entropy (nats) on the evaluation windows, "ppl" is exp(loss);
"before" is the pruned model with no retraining, "after" the same model after the section's retraining.
The verdict compares the numbers with the paper's claim and is computed by the script.
"""


def markdown(data: dict, json_path: Path) -> str:
    out = [INTRO.format(json=json_path.name)]
    known = [n for n in EXPERIMENTS if n in data["experiments"]]
    for i, name in enumerate(known + [n for n in data["experiments"] if n not in EXPERIMENTS], 1):
        e = data["experiments"][name]
        out += [f"## {i}. {name}", "", f"Paper claim: {e['claim']}.", "", setup_line(e), ""]
        for key, value in (e.get("summary") or {}).items():
            out.append(f"- {key}: {json.dumps(value) if not isinstance(value, str) else value}")
        out += ([""] if e.get("summary") else []) + table(e["rows"]) + ["", f"**Verdict:** {e['verdict']}", ""]
    return "\n".join(out)


def save(entries: dict, json_path: Path, md_path: Path) -> None:
    """Merge ``entries`` into the JSON (other experiments kept) and rewrite the Markdown from all of it."""
    data = json.loads(json_path.read_text()) if json_path.is_file() else {"experiments": {}}
    data["experiments"].update(entries)
    data["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomic(json_path, data)
    write_text_atomic(md_path, markdown(data, json_path))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", default=",".join(EXPERIMENTS), help=f"comma-separated: {', '.join(EXPERIMENTS)}")
    p.add_argument("--model", default="smollm2-135m", help="teacher: built-in name, directory or hub id")
    p.add_argument("--data", default="exllamav2:wiki", help="training and calibration text")
    p.add_argument("--tokens", default=None, help="training tokens per retrained arm (default 32768; --quick: 2 steps)")
    p.add_argument("--seq-len", type=int, default=256, help="block and evaluation window length")
    p.add_argument("--eval-windows", type=int, default=None, help="evaluation windows (default 32; --quick: 2)")
    p.add_argument("--eval-data", default=None, help="evaluation text: wikitext2 (default), a file, or exllamav2:c4")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 8; --quick: 2)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of every retraining (cosine to lr/10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="comma-separated seeds: each experiment per seed, mean ± std "
                                                 "(default: --seed; device scale 0,1,2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (teacher, students and training)")
    p.add_argument("--scale", choices=("cpu", "device"), default="cpu",
                   help="budget preset: cpu (the defaults) or device (1M tokens per arm, 128 eval windows, seeds 0,1,2)")
    p.add_argument("--quick", action="store_true", help="tiny budgets for a smoke test")
    p.add_argument("--out", type=Path, default=RESULTS / "findings.json")
    p.add_argument("--markdown", type=Path, default=DOCS / "findings.md")
    args = p.parse_args(argv)
    if args.scale == "device":
        args.tokens = args.tokens or "1M"
        args.eval_windows = args.eval_windows or 128
        args.seeds = args.seeds or "0,1,2"
    args.seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    for name in names:
        if name not in EXPERIMENTS:
            raise unknown_name("experiment", name, EXPERIMENTS)
    contexts = {}
    for seed in args.seeds:   # one context (calibration, data order) per seed, built once
        args.seed = seed
        contexts[seed] = Context(copy.copy(args))
    for name in names:
        exp, per_seed = EXPERIMENTS[name], []
        for seed, ctx in contexts.items():
            start = time.perf_counter()
            torch.manual_seed(seed)
            result = exp.run(ctx)
            per_seed.append({"experiment": name, "claim": exp.claim, **ctx.setup(),
                             "wall_seconds": time.perf_counter() - start, **result})
        entry = over_seeds(per_seed, args.seeds)
        for row in entry["rows"]:
            row["experiment"] = name
        print(f"\n== {name}: {exp.claim}\n" + "\n".join(table(entry["rows"])) + f"\n{entry['verdict']}", flush=True)
        save({name: entry}, args.out, args.markdown)
    print(f"\nwrote {args.out} and {args.markdown}")
    return 0


if __name__ == "__main__":
    run_script(main)
