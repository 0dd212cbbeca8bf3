"""Rank candidates: zero-shot proxy for all, the same short distillation for the best few (docs/method.md §5).

Every candidate is pruned from the saved scores and scored by its held-out LM loss without
retraining (the proxy). The ``top_k`` best by proxy each get the same short distillation; the
winner has the lowest held-out LM loss after it. Progress is kept in ``search_state.json``
(rewritten atomically after every unit of work), so a killed search resumes where it stopped:
scored candidates are not rescored and a half-done distillation continues from its checkpoint.

Under ``torchrun`` (``parallel``) every process prunes every candidate and scores a share of
the held-out batches (:func:`~compactlm.importance.lm_loss`: the one-process loss bit for bit);
the short distillations run data-parallel in the trainer; only rank 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..arch import adapter_for
from ..arch.params import count_parameters, parameter_layout
from ..config import LossArgs, SearchArgs, TrainArgs
from ..deploy import Latency, deployed_memory, measure, meets, pareto, shortfall, tied_ranks
from ..deploy.latency import UNITS
from ..distill import distill
from ..distill.checkpoint import latest_checkpoint
from ..distill.config import steps_for_tokens
from ..errors import CompactLMError
from ..hardware import precision_for
from ..importance import ImportanceScores, lm_loss
from ..io import write_json_atomic, write_text_atomic
from ..parallel import DistInfo, barrier, broadcast_object
from ..progress import progress
from ..prune import PruneTarget, apply_plan, check_depth_metric, make_plan
from ..readers import read_json_object
from .search_dir import SearchLayout
from .space import AXES, Candidate, candidates_of

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ("name", *AXES, "params", "params_fraction", "active_params", "memory_bytes", "latency_median",
                 "latency_q1", "latency_q3", "latency_rank", "pareto", "proxy_loss", "proxy_rank", "retrained_loss",
                 "retrained_rank", "selected")
BUDGET_COLUMNS = ("memory_bytes", "latency_median", "latency_q1", "latency_q3", "latency_rank", "pareto")


@dataclass
class SearchResult:
    rows: list[dict]
    winner: dict
    out_dir: Path
    rank_correlation: float | None = None   # Spearman, proxy vs retrained ranks of the retrained candidates
    precision: str | None = None            # what the proxy ran in (bf16 or fp32)
    latency_metric: str | None = None       # the measured speed in the table (a latency budget's first bound)


def candidates_for(scores: ImportanceScores, teacher_config, args: SearchArgs) -> tuple[list[Candidate], int]:
    """The candidates of ``args`` for the scored teacher, and the target parameter count."""
    _, candidates, target, _ = candidates_of(args, scores.architecture, parameter_layout(teacher_config),
                                             teacher_config.model_type, config=teacher_config)
    return candidates, target


def plan_candidate(scores: ImportanceScores, candidate: Candidate, args: SearchArgs):
    return make_plan(scores, PruneTarget(**candidate.sizes()), aggregation=args.aggregation,
                     depth_metric=args.depth_metric)


def prune_candidate(teacher, scores: ImportanceScores, candidate: Candidate, args: SearchArgs):
    """(student, plan) for one candidate architecture."""
    plan = plan_candidate(scores, candidate, args)
    return apply_plan(teacher, plan), plan


def _ranks(values: list[float | None]) -> list[int | None]:
    order = sorted((v, i) for i, v in enumerate(values) if v is not None)
    ranks: list[int | None] = [None] * len(values)
    for rank, (_, i) in enumerate(order, 1):
        ranks[i] = rank
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation of two equally long lists (None for fewer than 2 items)."""
    if len(a) < 2:
        return None
    ra, rb = (torch.tensor(_ranks(x), dtype=torch.float64) for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denominator) if denominator else None


def table_text(rows: list[dict], latency_metric: str | None = None) -> str:
    """The search table as aligned text (what the CLI prints); deployed memory and measured speed when budgeted."""
    memory = any("memory_bytes" in r for r in rows)
    head = f"{'candidate':<28} {'params':>8}"
    head += f" {'memory':>9}" if memory else ""
    head += f" {latency_metric + ' (q1-q3)':>26} {'speed':>5}" if latency_metric else ""
    lines = [head + f" {'proxy':>8} {'rank':>4} {'retrained':>9} {'rank':>4}"]
    for r in rows:
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        line = f"{r['name']:<28} {r['params'] / 1e6:>7.2f}M"
        line += f" {r['memory_bytes'] / 1e6:>7.1f}MB" if memory else ""
        if latency_metric:
            line += (f" {r['latency_median']:>9.2f} ({r['latency_q1']:.2f}-{r['latency_q3']:.2f})".rjust(27)
                     + f" {r['latency_rank']:>4}{'*' if r['pareto'] else ' '}")
        lines.append(line + f" {fmt(r['proxy_loss'], '8.4f'):>8} {fmt(r['proxy_rank'], 'd'):>4} "
                     f"{fmt(r['retrained_loss'], '9.4f'):>9} {fmt(r['retrained_rank'], 'd'):>4}"
                     f"{'  <- selected' if r['selected'] else ''}")
    if latency_metric:
        lines.append(f"speed: rank by measured {latency_metric} ({UNITS[latency_metric]}); candidates whose runs overlap "
                     f"share a rank; * on the quality/speed frontier (proxy loss)")
    return "\n".join(lines)


def _write_tables(out_dir: Path, rows: list[dict], summary: dict) -> None:
    buffer = io.StringIO()
    present = [c for c in TABLE_COLUMNS if c not in (*AXES, "active_params") or any(c in r for r in rows)]
    writer = csv.DictWriter(buffer, fieldnames=present, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(SearchLayout(out_dir).candidates_csv, buffer.getvalue())
    write_json_atomic(SearchLayout(out_dir).candidates_json, {**summary, "candidates": rows})


def _open_state(layout: SearchLayout, settings: dict, resume: bool, parallel: DistInfo) -> dict:
    """``search_state.json``: a fresh one, or the saved one when resuming with the same settings."""
    state = {"settings": settings, "proxy": {}, "retrained": {}}
    if resume and layout.state.is_file():
        saved = read_json_object(layout.state, "search state file", "Start the search afresh with --overwrite.")
        if saved.get("settings") != json.loads(json.dumps(settings)) or not all(
                isinstance(saved.get(k), dict) for k in ("proxy", "retrained")):
            raise CompactLMError(f"Cannot resume the search in '{layout.root}': its settings differ from these. "
                                 f"Use the original settings, or start afresh in a new directory.")
        state = saved
    barrier(parallel)   # every process has read the saved state before rank 0 rewrites it
    if parallel.is_main:
        layout.root.mkdir(parents=True, exist_ok=True)
    return state


@dataclass
class _SearchRun:
    """What every unit of search work needs: the teacher, its scores, the held-out blocks, the state file."""

    teacher: nn.Module
    scores: ImportanceScores
    heldout: torch.Tensor
    args: SearchArgs
    layout: SearchLayout
    state: dict
    batch_size: int
    bf16: bool
    parallel: DistInfo = DistInfo()

    def candidate_config(self, candidate: Candidate):
        """The transformers config of ``candidate`` as it would be pruned (its kept layers decide the layer kinds)."""
        plan = plan_candidate(self.scores, candidate, self.args)
        return adapter_for(self.teacher.config).pruned_config(self.teacher.config, candidate.arch, plan.layers), plan

    def deployed(self, candidate: Candidate) -> int:
        """Deployed memory under the budget, with the layers the plan keeps."""
        plan = plan_candidate(self.scores, candidate, self.args)
        return deployed_memory(candidate.arch, self.teacher.config, self.args.memory, plan.layers).total

    def measure_speed(self, candidates: list[Candidate], tokenizer_source: Path | None) -> None:
        """Time every candidate on the latency budget's runtime (rank 0 alone: two processes would time each other)."""
        done = self.state.setdefault("latency", {})
        if self.parallel.is_main:
            with progress(total=len(candidates), initial=sum(c.name in done for c in candidates),
                          desc="search: latency", unit="arch") as bar:
                for candidate in [c for c in candidates if c.name not in done]:
                    config, _ = self.candidate_config(candidate)
                    done[candidate.name] = measure(config, self.args.latency,
                                                   tokenizer_source=tokenizer_source).to_dict()
                    self.save_state()
                    bar.update(1)
        self.state["latency"] = broadcast_object(done, self.parallel)

    def latency(self, name: str) -> Latency | None:
        saved = self.state.get("latency", {}).get(name)
        return None if saved is None else Latency.from_dict(saved, self.args.latency)

    def loss_of(self, student: nn.Module) -> float:
        return lm_loss(student, self.heldout, self.batch_size, self.bf16, self.parallel)

    def save_state(self) -> None:
        if self.parallel.is_main:
            write_json_atomic(self.layout.state, self.state)

    def score_proxies(self, candidates: list[Candidate]) -> None:
        """Held-out LM loss of every candidate, pruned but not retrained; saved after each one."""
        done = self.state["proxy"]
        with progress(total=len(candidates), initial=sum(c.name in done for c in candidates),
                      desc="search: proxy", unit="arch") as bar:
            for candidate in [c for c in candidates if c.name not in done]:
                student, _ = prune_candidate(self.teacher, self.scores, candidate, self.args)
                done[candidate.name] = self.loss_of(student)
                del student
                gc.collect()
                self.save_state()
                bar.update(1)

    def retrain(self, candidate: Candidate, train_blocks: torch.Tensor, train_args: TrainArgs, loss: LossArgs,
                tokenizer, resume: bool) -> None:
        """The short distillation of one candidate (continued from its checkpoint if any), then its held-out loss."""
        student, plan = prune_candidate(self.teacher, self.scores, candidate, self.args)
        run_dir = self.layout.candidate(candidate.name)
        if self.parallel.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            plan.save(run_dir)   # prune_plan.json: layer matching for the intermediate-state loss
        barrier(self.parallel)   # every process's trainer reads it
        retrained_dir = self.layout.retrained(candidate.name)
        again = resume and latest_checkpoint(retrained_dir) is not None
        result = distill(student, self.teacher, train_blocks, retrained_dir, tokenizer=tokenizer, heldout=self.heldout,
                         loss=loss, args=train_args, student_dir=run_dir, resume=again, overwrite=not again)
        result.stop_if_interrupted()   # SIGINT/SIGTERM: the checkpoint is written; resume continues it
        self.state["retrained"][candidate.name] = self.loss_of(student)
        del student
        gc.collect()
        self.save_state()


def _table(candidates: list[Candidate], work: "_SearchRun", source_params: int) -> list[dict]:
    """One row per candidate, sorted by proxy rank; the winner is the best retrained (or best proxy with top_k 0).

    With budgets, each row also has its deployed memory (``memory_bytes``) and its measured speed
    (``latency_*`` in the first bound's metric, ``latency_rank`` with ties, ``pareto``).
    """
    state, top_k = work.state, work.args.top_k
    proxy = [state["proxy"][c.name] for c in candidates]
    retrained = [state["retrained"].get(c.name) for c in candidates]
    proxy_rank, retrained_rank = _ranks(proxy), _ranks(retrained)
    pick = min(range(len(candidates)), key=lambda i: (math.inf if top_k and retrained[i] is None
                                                      else retrained[i] if top_k else proxy[i], proxy[i]))
    rows = [{"name": c.name, **c.sizes(), "params": c.params, "params_fraction": c.params / source_params,
             **({"active_params": c.active_params} if c.active_params is not None else {}),
             "proxy_loss": proxy[i], "proxy_rank": proxy_rank[i], "retrained_loss": retrained[i],
             "retrained_rank": retrained_rank[i], "selected": i == pick} for i, c in enumerate(candidates)]
    if work.args.memory is not None:
        for row, c in zip(rows, candidates):
            row["memory_bytes"] = work.deployed(c)
    if work.args.latency is not None:
        metric = work.args.latency.metric
        latencies = [work.latency(c.name) for c in candidates]
        ranks = tied_ranks(latencies, metric)
        for row, latency, rank, front in zip(rows, latencies, ranks, pareto(proxy, ranks)):
            low, high = latency.range(metric)
            row.update(latency_median=latency.median(metric), latency_q1=low, latency_q3=high, latency_rank=rank,
                       pareto=front)
    return sorted(rows, key=lambda r: r["proxy_rank"])


def _keep_fast(candidates: list[Candidate], work: "_SearchRun", keep: int | None) -> list[Candidate]:
    """Those that meet the latency budget (at most ``keep``, in order); a clear error naming the closest if none does."""
    budget = work.args.latency
    fast = [c for c in candidates if meets(work.latency(c.name), budget)]
    if not fast:
        closest = min(candidates, key=lambda c: shortfall(work.latency(c.name), budget))
        latency = work.latency(closest.name)
        measured = ", ".join(f"{m} {latency.median(m):,.2f} (bound {getattr(budget, m):,})"
                             for m in UNITS if getattr(budget, m) is not None)
        raise CompactLMError(f"No candidate meets the latency budget on {budget.runtime} ({budget.measured_type}, "
                             f"prompt {budget.prompt}, batch {budget.batch}): the closest is {closest.name} with "
                             f"{measured}, over {len(candidates)} measured. Relax the bound, lower target_params, or "
                             f"widen the search space.")
    logger.info("search: %d of %d candidates meet the latency budget", len(fast), len(candidates))
    return fast[:keep] if keep else fast


def search(teacher, scores: ImportanceScores, heldout: torch.Tensor, out_dir: str | Path, *,
           args: SearchArgs | None = None, train_blocks: torch.Tensor | None = None, tokenizer=None,
           train_args: TrainArgs | None = None, loss: LossArgs | None = None, batch_size: int = 8,
           resume: bool = False, parallel: DistInfo | None = None, tokenizer_source: Path | None = None) -> SearchResult:
    """Search the best architecture within the budget of ``args`` (see the module docstring).

    Args:
        teacher: the scored model (``scores.check_matches(teacher)`` must hold); left unchanged.
        heldout: (N, T) held-out token blocks for the proxy and the post-distillation loss.
        train_blocks: (M, T) training blocks for the short distillations (needed when top_k > 0).
        out_dir: receives ``candidates.csv``, ``candidates.json``, ``search_state.json`` and one
            distillation run per retrained candidate.
        resume: continue the search in ``out_dir`` (its settings must match).
        parallel: under ``torchrun``, this process's DistInfo (every process calls ``search`` with
            the same inputs and returns the same result; only rank 0 writes).
        tokenizer_source: the teacher's GGUF file or checkpoint folder, whose tokenizer goes into the
            GGUF files a llamacpp latency budget times.
    """
    parallel = parallel or DistInfo()
    args, train_args, loss = args or SearchArgs(), train_args or TrainArgs(), loss or LossArgs()
    scores.check_matches(teacher)
    check_depth_metric(scores, args.depth_metric)   # before any candidate is pruned
    if train_args.max_steps is not None:
        raise CompactLMError(f"train_args.max_steps={train_args.max_steps}: the search sets the steps of its short "
                             f"distillations from args.distill_tokens ({args.distill_tokens:,}); leave max_steps unset.")
    if args.top_k and train_blocks is None:
        raise CompactLMError("The short distillation of the top candidates needs training blocks; pass train_blocks "
                             "or set top_k to 0.")
    candidates, target = candidates_for(scores, teacher.config, args)
    layout = SearchLayout(Path(out_dir))
    seq_len = heldout.shape[1]
    steps = steps_for_tokens(args.distill_tokens, train_args.batch_size, seq_len)
    settings = {"search": asdict(args), "target_params": target, "distill_steps": steps, "seq_len": seq_len,
                "heldout_blocks": heldout.shape[0], "train": asdict(train_args), "loss": asdict(loss),
                "scores": scores.meta.get("fingerprint")}
    state = _open_state(layout, settings, resume, parallel)
    source_params = count_parameters(scores.architecture, parameter_layout(teacher.config))
    proxy_precision = precision_for(train_args.precision, teacher)
    state["precision"] = proxy_precision.to_dict()
    logger.info("search: %d candidates within %.2fM ±%.0f%%", len(candidates), target / 1e6, args.tolerance * 100)
    work = _SearchRun(teacher, scores, heldout, args, layout, state, batch_size, proxy_precision.bf16, parallel)
    if args.memory is not None:   # the exact layer kinds of each plan (the enumeration assumed the first layers)
        candidates = [c for c in candidates if work.deployed(c) <= args.memory.limit]
        if not candidates:
            raise CompactLMError("No candidate fits the memory budget with the layers its plan keeps; raise the "
                                 "budget slightly or lower target_params.")
    if args.latency is not None:
        work.measure_speed(candidates, tokenizer_source)
        candidates = _keep_fast(candidates, work, args.max_candidates)
    work.score_proxies(candidates)
    # the same short distillation for the top_k by proxy; one student in memory at a time
    short = dataclasses.replace(train_args, max_steps=steps)
    by_proxy = sorted(candidates, key=lambda c: state["proxy"][c.name])
    for candidate in [c for c in by_proxy[:args.top_k] if c.name not in state["retrained"]]:
        logger.info("search: distilling %s for %d steps", candidate.name, steps)
        work.retrain(candidate, train_blocks, short, loss, tokenizer, resume)

    rows = _table(candidates, work, source_params)
    both = [(r["proxy_loss"], r["retrained_loss"]) for r in rows if r["retrained_loss"] is not None]
    rho = spearman([p for p, _ in both], [q for _, q in both])
    summary = {"target_params": target, "teacher_params": source_params, "tolerance": args.tolerance,
               "distill_steps": steps if args.top_k else 0, "distill_tokens": steps * train_args.batch_size * seq_len
               if args.top_k else 0, "rank_correlation": rho, "winner": rows[[r["selected"] for r in rows].index(True)],
               "memory": asdict(args.memory) if args.memory else None,
               "latency": {**asdict(args.latency), "metric": args.latency.metric, "unit": UNITS[args.latency.metric]}
               if args.latency else None}
    if parallel.is_main:
        _write_tables(layout.root, rows, summary)
    barrier(parallel)
    return SearchResult(rows=rows, winner=summary["winner"], out_dir=layout.root, rank_correlation=rho,
                        precision=proxy_precision.precision,
                        latency_metric=args.latency.metric if args.latency else None)


__all__ = ["SearchArgs", "SearchResult", "candidates_for", "plan_candidate", "prune_candidate", "search", "spearman",
           "table_text"]
