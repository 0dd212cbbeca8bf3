"""One self-contained ``report.html`` per run: tables plus PNG figures embedded as base64.

Everything is read back from the run directory (:class:`~compactlm.recipes.run_dir.RunLayout`) and
its records (:mod:`compactlm.recipes.records`), so a report can be re-rendered at any time
(``compactlm report RUN_DIR``) without the models in memory; the software and hardware shown are
those the run recorded, not those of the machine rendering the report.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from ..config import DEFAULT_AGGREGATION
from ..distill.metrics import METRICS_FILE
from ..errors import CompactLMError
from ..importance import ImportanceScores
from ..io import write_text_atomic
from ..prune.plan import PrunePlan
from ..readers import read_json_object
from ..recipes.records import (
    DISTILL,
    EXPORT,
    SEARCH,
    DistillRecord,
    EvalRecord,
    EvalRow,
    ExportRecord,
    GGUFFile,
    MeasuredRecord,
    RunState,
    SearchRecord,
    Session,
    stage_key,
)
from ..recipes.run_dir import REPORT_FILE, RunLayout, StepLayout
from . import plots

__all__ = ["REPORT_FILE", "render_report"]

NOT_RECORDED = "not recorded"
STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}.sel{background:#e6f0ff}"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(header: list[str], rows: list[list], selected: list[bool] | None = None) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return html.escape("" if v is None else str(v))

    body = "".join(f"<tr{' class=sel' if selected and selected[i] else ''}>" +
                   "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for i, row in enumerate(rows))
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{body}</table>"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _eval_section(evaluation: EvalRecord) -> str:
    rows = evaluation.rows
    metrics = list(dict.fromkeys(k for r in rows for k in r.metrics))
    teacher = rows[0]
    out = [f"<p>Held-out perplexity over {evaluation.heldout_blocks} held-out blocks of the run's data (also "
           f"used by the search, so slightly optimistic for the chosen student); tasks: "
           f"{html.escape(', '.join(evaluation.tasks) or 'none')}, limit {evaluation.limit}, "
           f"perplexity window {evaluation.window}.</p>"]
    out.append(_table(["model", "parameters", "vs teacher", *metrics],
                      [[r.model, r.parameters, f"{r.parameters / teacher.parameters:.1%}",
                        *[r.metrics.get(m) for m in metrics]] for r in rows]))
    parts = list(teacher.breakdown)
    out.append("<h3>Parameter breakdown</h3>" + _table(["model", *parts],
                                                        [[r.model, *[r.breakdown.get(p) for p in parts]] for r in rows]))
    axes = list(teacher.architecture)
    out.append("<h3>Architecture</h3>" + _table(["model", *axes],
                                                 [[r.model, *[r.architecture.get(a) for a in axes]] for r in rows]))
    out.append(_continuations_section(rows))
    return "".join(out)


def _continuations_section(rows: list[EvalRow]) -> str:
    """Greedy continuations of the eval prompts, one row per prompt, one column per model."""
    shown = [r for r in rows if r.continuations]
    if not shown:
        return ""
    body = [[item["prompt"], *[r.continuations[i]["text"] for r in shown]] for i, item in enumerate(shown[0].continuations)]
    return ("<h3>Greedy continuations</h3><p>Each model continues the same prompts greedily (no sampling); "
            "<code>distinct_2</code> in the table above is the share of distinct bigrams in each continuation, "
            "averaged over the prompts (a loop drives it toward 0).</p>"
            + _table(["prompt", *[r.model for r in shown]], body))


def _gguf_section(files: list[GGUFFile], rows: list[EvalRow]) -> str:
    """The exported GGUF files: size, type, and held-out perplexity next to the HF student's."""
    student = next((r for r in reversed(rows) if not r.is_gguf), None)
    base = student.metrics.get("heldout_ppl") if student else None
    table = []
    for f in files:
        row = next((r for r in rows if r.path == f.path), None)
        ppl = row.metrics.get("heldout_ppl") if row else None
        table.append([f.quant, f.path, round(f.bytes / 1e6, 1), len(f.f16_fallback),
                      ppl, f"{ppl / base - 1:+.2%}" if ppl and base else "not scored", f.tokenizer])
    return ("<h3>Deployment: GGUF files (llama.cpp, Ollama, LM Studio)</h3>"
            + _table(["type", "file", "MB", "tensors kept f16", "held-out ppl", "vs HF student", "tokenizer"], table))


def _prune_section(step: StepLayout, plan: PrunePlan) -> list[str]:
    """Teacher vs student sizes, the criteria, and the importance figures of the scored teacher."""
    source, target = plan.source.to_dict(), plan.target.to_dict()
    out = [_table(["", *source], [["teacher", *source.values()], ["student", *target.values()]]),
           f"<p>Criteria: {html.escape(json.dumps(plan.criteria))}; removed layers: "
           f"{[i for i in range(plan.source.num_hidden_layers) if i not in plan.layers] or 'none'}.</p>"]
    scores = ImportanceScores.load(step.scores)
    aggregation = tuple(plan.criteria.get("aggregation", DEFAULT_AGGREGATION).split(","))
    out.append("<h3>Importance</h3>")
    if plan.source.is_moe:
        out.append(_png(plots.importance_heatmaps(scores.expert_neurons(aggregation).mean(1), scores.heads(aggregation),
                                                  plan.layers, "expert neuron importance (mean over experts)")))
        out += _routing_section(scores, plan)
    else:
        out.append(_png(plots.importance_heatmaps(scores.neurons(aggregation), scores.heads(aggregation), plan.layers)))
    out.append(_png(plots.channel_importance(scores.channels(aggregation), plan.hidden)))
    loss = scores.layer_loss() if "layers.loss" in scores.tensors else None
    out.append(_png(plots.layer_importance(scores.block_importance(1), loss, scores.base_loss, plan.layers)))
    return out


def _routing_section(scores: ImportanceScores, plan: PrunePlan) -> list[str]:
    """Tokens per expert and expert importance per layer (what to look at before choosing how many experts to keep)."""
    tokens, importance = scores.expert_tokens(), scores.experts()
    rows = []
    for layer in range(tokens.shape[0]):
        share = tokens[layer] / tokens[layer].sum().clamp_min(1)
        kept = plan.experts.get(layer)
        rows.append([layer, int(tokens[layer].sum()), f"{float(share.min()):.1%}", f"{float(share.max()):.1%}",
                     int((tokens[layer] == 0).sum()), f"{float(importance[layer].min()):.4g}",
                     f"{float(importance[layer].max()):.4g}", "dropped" if kept is None else f"{len(kept)} of {len(share)}"])
    return ["<h3>Routing</h3><p>Calibration tokens routed to each expert (top-k slots) and expert importance "
            "(router-weighted output norm per token, docs/method.md §2); red crosses mark removed experts.</p>",
            _png(plots.expert_routing(importance, tokens, plan.experts)),
            _table(["layer", "routed slots", "least-used expert", "most-used expert", "experts never routed",
                    "min importance", "max importance", "experts kept"], rows)]


def _search_section(search: dict) -> list[str]:
    """The candidate table of ``candidates.json`` and the proxy-vs-retrained scatter."""
    rows = search["candidates"]
    retrained = sum(r["retrained_loss"] is not None for r in rows)
    rho = search["rank_correlation"]
    columns = ["name", "params", *(c for c in ("memory_bytes", "latency_median", "latency_rank", "pareto")
                                    if any(c in r for r in rows)),
               "proxy_loss", "proxy_rank", "retrained_loss", "retrained_rank"]
    return [f"<h3>Search</h3><p>{len(rows)} candidates within {search['tolerance']:.0%} of "
            f"{search['target_params'] / 1e6:.2f}M parameters (teacher {search['teacher_params'] / 1e6:.2f}M); "
            f"proxy = held-out LM loss after pruning, no retraining; the best "
            f"{retrained} by proxy got the same short distillation "
            f"({search['distill_tokens']:,} tokens). Spearman rank correlation proxy vs retrained: "
            f"{format(rho, '.3f') if rho is not None else 'n/a'}"
            f"{' (±1 by definition with two retrained candidates)' if retrained == 2 else ''}.</p>",
            *_budgets(search),
            _table(columns, [[r[c] for c in columns] for r in rows], [r["selected"] for r in rows]),
            _png(plots.search_scatter(rows)),
            *([_png(plots.speed_frontier(rows, search["latency"]["metric"], search["latency"]["unit"]))]
              if search.get("latency") else [])]


def _budgets(search: dict) -> list[str]:
    """The deployment budgets of the search, in words (docs/search.md)."""
    out = []
    if search.get("memory"):
        m = search["memory"]
        out.append(f"deployed memory at most {m['limit'] / 1e6:,.1f} MB: {m['weights']} weights + a "
                   f"{m['kv_cache'] or ('float16' if m['weights'] not in ('float32', 'bfloat16', 'float16') else m['weights'])} "
                   f"KV cache of {m['seq_len']:,} tokens x {m['batch']} (memory_bytes)")
    if search.get("latency"):
        b = search["latency"]
        bounds = ", ".join(f"{k} {'<=' if k == 'decode_ms' else '>='} {b[k]:,}" for k in
                           ("decode_ms", "decode_tokens_per_s", "prefill_tokens_per_s") if b.get(k) is not None)
        out.append(f"{bounds} measured on {b['runtime']} ({b['weights'] or 'default type'}, prompt {b['prompt']}, batch "
                   f"{b['batch']}, {b['new_tokens']} decoded tokens, median of {b['repeats']} runs on random weights of "
                   f"each shape; latency_median in {b['unit']}; candidates whose middle halves of runs overlap share "
                   f"a latency_rank; pareto: on the quality/speed frontier by proxy loss)")
    return [f"<p>Budgets: {html.escape('; '.join(out))}.</p>"] if out else []


def _step_section(layout: RunLayout, name: str, state: RunState) -> str:
    step = layout.step(name)
    out = [f"<h2>Step '{html.escape(name)}'</h2>", *_prune_section(step, PrunePlan.load(step.pruned))]
    runs = {}
    search = None
    if state.get(stage_key(name, SEARCH), SearchRecord) is not None and step.search.candidates_json.is_file():
        search = read_json_object(step.search.candidates_json, "search table")
        out += _search_section(search)
        for r in search["candidates"]:
            records = _records(step.search.retrained(r["name"]) / METRICS_FILE)
            if records:
                runs[f"search: {r['name']}"] = (records, 0)
    distilled = state.get(stage_key(name, DISTILL), DistillRecord)
    if distilled is not None and distilled.tokens:
        out.append(f"<p>Distillation: {distilled.tokens:,} tokens, starting from "
                   f"<code>{html.escape(str(distilled.initialised_from))}</code>"
                   f"{' (the search run of the winner)' if distilled.continues_search else ''}.</p>")
    records = _records(step.distill_metrics)
    if records:
        offset = search["distill_tokens"] if search and distilled and distilled.continues_search else 0
        runs["student" + (" (continues its search run)" if offset else "")] = (records, offset)
    if runs:
        out.insert(-1 if distilled is not None and distilled.tokens else len(out), "<h3>Training</h3>")
        out.append(_png(plots.training_curves(runs)))
    return "".join(out)


def _stages_section(state: RunState) -> str:
    """Seconds, precision actually used, tokens/s and MFU of every stage."""
    rows = []
    for name, record in state.stages.items():
        measured = record if isinstance(record, MeasuredRecord) else None
        precision = measured.precision if measured else None
        if isinstance(record, EvalRecord):
            precision = ", ".join(sorted({r.precision for r in record.rows if r.precision})) or None
        rows.append([name, record.seconds, precision, measured.tokens_per_second if measured else None,
                     f"{measured.mfu:.1%}" if measured and measured.mfu else None])
    total = sum(r[1] or 0 for r in rows)
    return ("<h2>Stages</h2><p>MFU: model FLOPs per token (2N forward, 6N training, N = matmul weights; a "
            "distillation step 2N<sub>teacher</sub> + 6N<sub>student</sub>) × tokens/s over the GEMM rate measured "
            "at the model's shapes in the precision used (compactlm.hardware).</p>"
            + _table(["stage", "seconds", "precision", "tokens/s", "MFU"], rows + [["total", total, None, None, None]]))


def _machine_section(sessions: list[Session]) -> str:
    """The software and hardware the run recorded, one column per session (start, then each resume)."""
    if not sessions:
        return (f"<h2>Software</h2><p>{NOT_RECORDED} (this run was made before compactlm recorded it)</p>"
                f"<h2>Hardware</h2><p>{NOT_RECORDED}</p>")
    header = ["", *(f"{'started' if i == 0 else 'resumed'} {s.started}" for i, s in enumerate(sessions))]
    packages = list(dict.fromkeys(k for s in sessions for k in s.software))
    software = [[k, *(s.software.get(k, NOT_RECORDED) for s in sessions)] for k in packages]
    hw = [s.hardware for s in sessions]
    hardware = [["CPU", *(h.cpu for h in hw)], ["cores", *(h.cores for h in hw)],
                ["torch threads", *(h.threads for h in hw)],
                ["native bf16", *("yes" if h.native_bf16 else "no" for h in hw)],
                ["GPUs", *(", ".join(h.gpus) or "none" for h in hw)], ["device", *(h.device for h in hw)]]
    return ("<h2>Software</h2>" + _table(header, software) + "<h2>Hardware</h2><p>The machine the run ran on; the "
            "precision each stage actually used is in the stage table.</p>" + _table(header, hardware))


def _load(layout: RunLayout) -> tuple[RunState, EvalRecord]:
    if not layout.state.is_file() or not layout.eval.is_file():
        raise CompactLMError(f"'{layout.root}' is not a finished compactlm run (needs {layout.state.name} and "
                             f"{layout.eval.name}). Finish it with `compactlm run RECIPE --out {layout.root} --resume`.")
    try:
        state = RunState.from_dict(read_json_object(layout.state, "run state file"))
        evaluation = EvalRecord.from_dict(read_json_object(layout.eval, "eval file"))
    except CompactLMError as err:
        raise CompactLMError(f"Cannot read the compactlm run directory '{layout.root}': {err}") from err
    return state, evaluation


def render_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from the files of a finished run; returns its path."""
    layout = RunLayout(Path(run_dir))
    state, evaluation = _load(layout)
    recipe = state.recipe
    body = [f"<h1>compactlm run: {html.escape(str(recipe['teacher']))} → "
            f"{html.escape(evaluation.student.path)}</h1>", "<h2>Teacher vs student</h2>",
            _eval_section(evaluation)]
    export = state.get(EXPORT, ExportRecord)
    if export is not None:
        body.append(_gguf_section(export.files, evaluation.rows))
    for step in recipe["steps"]:
        body.append(_step_section(layout, step["name"], state))
    body.append(_stages_section(state))
    body.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(recipe, indent=1)) + "</pre>")
    body.append(_machine_section(state.sessions))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>compactlm report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
    write_text_atomic(layout.report, page)
    return layout.report
