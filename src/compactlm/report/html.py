"""One self-contained ``report.html`` per run: tables plus PNG figures embedded as base64.

Everything is read back from the run directory, so a report can be re-rendered at any time
(``compactlm report RUN_DIR``) without the models in memory.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib.pyplot as plt

from ..distill.metrics import METRICS_FILE
from ..errors import CompactLMError
from ..export.save import software_versions
from ..importance import ImportanceScores
from ..io import write_text_atomic
from ..recipes.gguf_stage import LABEL as GGUF_LABEL
from . import plots

REPORT_FILE = "report.html"
STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}.sel{background:#e6f0ff}"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
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


def _eval_section(evaluation: dict) -> str:
    rows = evaluation["rows"]
    metrics = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    teacher = rows[0]
    out = [f"<p>Held-out perplexity over {evaluation['heldout_blocks']} held-out blocks of the run's data (also "
           f"used by the search, so slightly optimistic for the chosen student); tasks: "
           f"{html.escape(', '.join(evaluation['tasks']) or 'none')}, limit {evaluation['limit']}, "
           f"perplexity window {evaluation['window']}.</p>"]
    out.append(_table(["model", "parameters", "vs teacher", *metrics],
                      [[r["model"], r["parameters"], f"{r['parameters'] / teacher['parameters']:.1%}",
                        *[r["metrics"].get(m) for m in metrics]] for r in rows]))
    parts = list(teacher["breakdown"])
    out.append("<h3>Parameter breakdown</h3>" + _table(["model", *parts],
                                                        [[r["model"], *[r["breakdown"].get(p) for p in parts]] for r in rows]))
    axes = list(teacher["architecture"])
    out.append("<h3>Architecture</h3>" + _table(["model", *axes],
                                                 [[r["model"], *[r["architecture"].get(a) for a in axes]] for r in rows]))
    return "".join(out)


def _gguf_section(files: list[dict], rows: list[dict]) -> str:
    """The exported GGUF files: size, type, and held-out perplexity next to the HF student's."""
    student = next((r for r in reversed(rows) if GGUF_LABEL not in r["model"]), None)
    base = student["metrics"].get("heldout_ppl") if student else None
    table = []
    for f in files:
        row = next((r for r in rows if r["path"] == f["path"]), None)
        ppl = row["metrics"].get("heldout_ppl") if row else None
        table.append([f["quant"], f["path"], round(f["bytes"] / 1e6, 1), len(f.get("f16_fallback", [])),
                      ppl, f"{ppl / base - 1:+.2%}" if ppl and base else "not scored", f["tokenizer"]])
    return ("<h3>Deployment: GGUF files (llama.cpp, Ollama, LM Studio)</h3>"
            + _table(["type", "file", "MB", "tensors kept f16", "held-out ppl", "vs HF student", "tokenizer"], table))


def _step_section(run_dir: Path, name: str, stages: dict) -> str:
    step_dir = run_dir / name
    out = [f"<h2>Step '{html.escape(name)}'</h2>"]
    plan = json.loads((step_dir / "pruned" / "prune_plan.json").read_text())
    kept = plan["kept"]
    layers = kept["layers"]
    source, target = plan["source"], plan["target"]
    out.append(_table(["", *source], [["teacher", *source.values()], ["student", *target.values()]]))
    out.append(f"<p>Criteria: {html.escape(json.dumps(plan.get('criteria', {})))}; removed layers: "
               f"{[i for i in range(source['num_hidden_layers']) if i not in layers] or 'none'}.</p>")
    scores = ImportanceScores.load(step_dir / "scores")
    aggregation = tuple(plan.get("criteria", {}).get("aggregation", "l2,mean").split(","))
    out.append("<h3>Importance</h3>")
    out.append(_png(plots.importance_heatmaps(scores.neurons(aggregation), scores.heads(aggregation), layers)))
    out.append(_png(plots.channel_importance(scores.channels(aggregation), kept.get("hidden"))))
    loss = scores.layer_loss() if "layers.loss" in scores.tensors else None
    out.append(_png(plots.layer_importance(scores.block_importance(1), loss, scores.base_loss, layers)))
    candidates = step_dir / "search" / "candidates.json"
    runs = {}
    if candidates.is_file():
        search = json.loads(candidates.read_text())
        rows = search["candidates"]
        retrained = sum(r["retrained_loss"] is not None for r in rows)
        out.append(f"<h3>Search</h3><p>{len(rows)} candidates within {search['tolerance']:.0%} of "
                   f"{search['target_params'] / 1e6:.2f}M parameters (teacher {search['teacher_params'] / 1e6:.2f}M); "
                   f"proxy = held-out LM loss after pruning, no retraining; the best "
                   f"{retrained} by proxy got the same short distillation "
                   f"({search['distill_tokens']:,} tokens). Spearman rank correlation proxy vs retrained: "
                   f"{format(search['rank_correlation'], '.3f') if search['rank_correlation'] is not None else 'n/a'}"
                   f"{' (±1 by definition with two retrained candidates)' if retrained == 2 else ''}.</p>")
        columns = ["name", "params", "proxy_loss", "proxy_rank", "retrained_loss", "retrained_rank"]
        out.append(_table(columns, [[r[c] for c in columns] for r in rows], [r["selected"] for r in rows]))
        out.append(_png(plots.search_scatter(rows)))
        for r in rows:
            records = _records(step_dir / "search" / r["name"] / "retrained" / METRICS_FILE)
            if records:
                runs[f"search: {r['name']}"] = (records, 0)
    distilled = stages.get(f"{name}/distill", {})
    if distilled.get("tokens"):
        out.append(f"<p>Distillation: {distilled['tokens']:,} tokens, starting from "
                   f"<code>{html.escape(distilled['initialised_from'])}</code>.</p>")
    records = _records(step_dir / "distilled" / METRICS_FILE)
    if records:
        started = stages.get(f"{name}/distill", {}).get("initialised_from", "")
        offset = search["distill_tokens"] if candidates.is_file() and "/search/" in started else 0
        runs["student" + (" (continues its search run)" if offset else "")] = (records, offset)
    if runs:
        out.insert(-1 if distilled.get("tokens") else len(out), "<h3>Training</h3>")
        out.append(_png(plots.training_curves(runs)))
    return "".join(out)


def render_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from the files of a finished run; returns its path."""
    run_dir = Path(run_dir)
    state_path = run_dir / "run_state.json"
    if not state_path.is_file() or not (run_dir / "eval.json").is_file():
        raise CompactLMError(f"'{run_dir}' is not a finished compactlm run (needs run_state.json and eval.json). "
                             f"Finish it with `compactlm run RECIPE --out {run_dir} --resume`.")
    state = json.loads(state_path.read_text())
    evaluation = json.loads((run_dir / "eval.json").read_text())
    recipe = state["recipe"]
    student = next(r for r in reversed(evaluation["rows"]) if GGUF_LABEL not in r["model"])
    body = [f"<h1>compactlm run: {html.escape(str(recipe['teacher']))} → "
            f"{html.escape(student['path'])}</h1>", "<h2>Teacher vs student</h2>",
            _eval_section(evaluation)]
    if "export" in state["stages"]:
        body.append(_gguf_section(state["stages"]["export"]["files"], evaluation["rows"]))
    for step in recipe["steps"]:
        body.append(_step_section(run_dir, step["name"], state["stages"]))
    stage_rows = [[name, record.get("seconds"), record.get("precision"), record.get("tokens_per_second"),
                   f"{record['mfu']:.1%}" if record.get("mfu") else None] for name, record in state["stages"].items()]
    total = sum(r[1] or 0 for r in stage_rows)
    body.append("<h2>Stages</h2><p>MFU: model FLOPs per token (2N forward, 6N training, N = matmul weights; a "
                "distillation step 2N<sub>teacher</sub> + 6N<sub>student</sub>) × tokens/s over the GEMM rate measured "
                "at the model's shapes in the precision used (compactlm.hardware).</p>"
                + _table(["stage", "seconds", "precision", "tokens/s", "MFU"], stage_rows + [["total", total, None, None, None]]))
    versions = software_versions()
    body.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(recipe, indent=1)) + "</pre>")
    body.append("<h2>Software</h2>" + _table(["package", "version"], [[k, v] for k, v in versions.items()]))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>compactlm report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
    path = run_dir / REPORT_FILE
    write_text_atomic(path, page)
    return path
