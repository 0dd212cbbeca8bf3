"""Every bad input a hostile new user tried (issues 10 and 23): exit 2, one line naming the problem, nothing written or deleted.

Each row of ``CASES`` is a command line (``{name}`` fills in a path from the shared tiny files or
from the row's own ``setup``), the fragment its one-line message must hold, and the directory that
must be absent afterwards — or, when the row's setup created it, unchanged to the byte. Commands
run in-process through ``compactlm.cli.main``; the signal test alone needs its own process group
handling, and runs in-process too by sending the signal to ourselves. ``test_readers_never_crash``
feeds random bytes to every file reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from helpers import make_char_tokenizer, make_tiny_model
from recipes.run_fixtures import write_tiny_recipe

from compactlm.cli import main
from compactlm.errors import CompactLMError

TEXT = ("The quick brown fox jumps over the lazy dog. Pruning keeps the important neurons. "
        "Distillation teaches the student with the teacher's logits.\n\n") * 60


def _checkpoint(path: Path, **overrides) -> Path:
    make_tiny_model("llama", dtype=torch.float32, **overrides).save_pretrained(path)
    make_char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Shared, never modified: a tiny model, text, its scores and a pruned student."""
    root = tmp_path_factory.mktemp("world")
    w = {"model": _checkpoint(root / "model"), "small": _checkpoint(root / "small", num_hidden_layers=2, seed=3),
         "text": root / "text.txt"}
    w["text"].write_text(TEXT)
    common = ["--data", str(w["text"]), "--samples", "4", "--seq-len", "32", "--batch-size", "2",
              "--layer-loss-samples", "0"]
    for name, model in (("scores", "model"), ("small_scores", "small")):
        assert main(["-q", "importance", "--model", str(w[model]), *common, "--out", str(root / name)]) == 0
        w[name] = root / name
    assert main(["-q", "prune", "--model", str(w["model"]), "--scores", str(w["scores"]), "--intermediate-size", "64",
                 "--out", str(root / "student")]) == 0
    w["student"] = root / "student"
    return w


# ---- what each row's setup builds (in the row's own directory d) --------------------------------------

def _copy_model(w, d, name="m") -> Path:
    return Path(shutil.copytree(w["model"], d / name))


def truncated_weights(w, d):
    m = _copy_model(w, d)
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 3])
    return {"m": m}


def empty_weights(w, d):
    m = _copy_model(w, d)
    (m / "model.safetensors").write_bytes(b"")
    return {"m": m}


def pickle_only(w, d):
    m = _copy_model(w, d)
    from safetensors.torch import load_file

    torch.save(load_file(m / "model.safetensors"), m / "pytorch_model.bin")
    (m / "model.safetensors").unlink()
    return {"m": m}


def edit_config(**changes):
    def setup(w, d):
        m = _copy_model(w, d)
        config = json.loads((m / "config.json").read_text())
        (m / "config.json").write_text(json.dumps({**config, **changes}))
        return {"m": m}
    return setup


def config_without(*keys: str):
    """The shared model's config.json alone, with ``keys`` left out (for ``plan``, which reads configs only)."""
    def setup(w, d):
        config = json.loads((w["model"] / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in keys}))
        return {"cfg": d / "config.json"}
    return setup


def moe_checkpoint(**changes):
    """A tiny Qwen3-MoE checkpoint (4 experts, top-2) with config.json keys replaced."""
    def setup(w, d):
        make_tiny_model("qwen3_moe", dtype=torch.float32).save_pretrained(d / "m")
        config = json.loads((d / "m" / "config.json").read_text())
        (d / "m" / "config.json").write_text(json.dumps({**config, **changes}))
        return {"m": d / "m"}
    return setup


def random_gguf(w, d):
    (d / "m.gguf").write_bytes(random.Random(0).randbytes(4096))
    return {"gguf": d / "m.gguf"}


def truncated_gguf(w, d):
    from compactlm.models import resolve_model

    source = resolve_model("smollm2-135m")   # a real GGUF header, cut after 64 KB
    with open(Path(source.path) / source.gguf_file, "rb") as fh:
        (d / "cut.gguf").write_bytes(fh.read(1 << 16))
    return {"gguf": d / "cut.gguf"}


def small_vocab(w, d):
    return {"m": _checkpoint(d / "m", vocab_size=40)}   # the char tokenizer's ids reach 99


def foreign_dir(w, d):
    (d / "out").mkdir()
    (d / "out" / "thesis.tex").write_text("years of work")
    return {}


def our_run_dir(w, d):
    (d / "out").mkdir()
    (d / "out" / "run_state.json").write_text(json.dumps({"recipe": {}, "stages": {}}))
    return {}


def a_file(w, d):
    (d / "file").write_text("x")
    return {"file": d / "file"}


def copy_student(w, d):
    return {"stu": Path(shutil.copytree(w["student"], d / "out"))}


def scores_with(tensors: bytes | None = None, meta: bytes | None = None):
    def setup(w, d):
        s = Path(shutil.copytree(w["scores"], d / "s"))
        if tensors is not None:
            (s / "importance.safetensors").write_bytes(tensors)
        if meta is not None:
            (s / "importance.json").write_bytes(meta)
        return {"s": s}
    return setup


def truncated_scores(w, d):
    s = Path(shutil.copytree(w["scores"], d / "s"))
    data = (s / "importance.safetensors").read_bytes()
    (s / "importance.safetensors").write_bytes(data[:200])
    return {"s": s}


def plan_with(edit: Callable[[dict], None] | None = None, raw: bytes | None = None):
    def setup(w, d):
        path = d / "plan.json"
        if raw is not None:
            path.write_bytes(raw)
        else:
            plan = json.loads((w["student"] / "prune_plan.json").read_text())
            edit(plan)
            path.write_text(json.dumps(plan))
        return {"plan": path}
    return setup


def first_layer(key: str, fn) -> Callable[[dict], None]:
    def edit(plan):
        table = plan["kept"][key]
        first = next(iter(table))
        table[first] = fn(table[first])
    return edit


def task_file(content: bytes):
    def setup(w, d):
        (d / "tasks" / "arc_easy").mkdir(parents=True)
        (d / "tasks" / "arc_easy" / "test.jsonl").write_bytes(content)
        return {"tasks": d / "tasks"}
    return setup


def text_file(content: bytes, name="t.txt"):
    def setup(w, d):
        (d / name).write_bytes(content)
        return {"t": d / name}
    return setup


def recipe(**changes):
    """The tiny recipe of tests/recipes with top-level keys replaced."""
    def setup(w, d):
        path = write_tiny_recipe(d, w["model"], w["text"])
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **changes}, sort_keys=False))
        return {"recipe": path}
    return setup


def recipe_text(text: str):
    return recipe_bytes(text.encode())


def recipe_bytes(content: bytes):
    def setup(w, d):
        (d / "r.yaml").write_bytes(content)
        return {"recipe": d / "r.yaml"}
    return setup


def step(**fields):
    return [{"name": "student", "target_params": 0.8, **fields}]


BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "teacher: *i\n"


def run_dir_with(**files: bytes):
    def setup(w, d):
        (d / "run").mkdir()
        for name, content in files.items():
            (d / "run" / name.replace("_json", ".json")).write_bytes(content)
        return {"run": d / "run"}
    return setup


@dataclass
class Case:
    id: str
    argv: list[str]
    fragment: str
    setup: Callable | None = None
    watch: str = "{out}"   # must be absent afterwards, or byte-identical if setup made it


IMP = ["importance", "--data", "{text}", "--samples", "4", "--seq-len", "32", "--batch-size", "2",
       "--layer-loss-samples", "0", "--out", "{out}"]
DIST = ["distill", "--teacher", "{model}", "--student", "{student}", "--data", "{text}", "--tokens", "256",
        "--seq-len", "32", "--heldout-samples", "2", "--batch-size", "2", "--micro-batch-size", "2", "--out", "{out}"]
FT = ["finetune", "--model", "{model}", "--data", "{text}", "--tokens", "256", "--seq-len", "32",
      "--heldout-samples", "2", "--batch-size", "2", "--micro-batch-size", "2", "--out", "{out}"]
SEARCH = ["search", "--model", "{model}", "--scores", "{scores}", "--target-params", "0.8", "--data", "{text}",
          "--seq-len", "32", "--heldout-samples", "2", "--top-k", "0", "--out", "{out}"]
PRUNE = ["prune", "--model", "{model}", "--out", "{out}"]
EVAL = ["eval", "--model", "{model}", "--tasks", "arc_easy", "--limit", "2"]
RUN = ["run", "{recipe}", "--out", "{out}"]

CASES = [
    # -- model files: every verb reads them through one loader --------------------------------------------
    Case("missing-model", ["importance", "--model", "./no/such/model", *IMP[1:]], "./no/such/model"),
    Case("truncated-safetensors", ["importance", "--model", "{m}", *IMP[1:]], "damaged", truncated_weights),
    Case("empty-safetensors", ["importance", "--model", "{m}", *IMP[1:]], "damaged", empty_weights),
    Case("random-bytes-gguf", ["importance", "--model", "{gguf}", *IMP[1:]], "GGUF", random_gguf),
    Case("truncated-gguf", ["importance", "--model", "{gguf}", *IMP[1:]], "GGUF", truncated_gguf),
    Case("pickle-only", ["importance", "--model", "{m}", *IMP[1:]], "--allow-pickle", pickle_only),
    Case("config-6-layers-weights-4", ["importance", "--model", "{m}", *IMP[1:]], "missing keys",
         edit_config(num_hidden_layers=6)),
    Case("auto-map", ["importance", "--model", "{m}", *IMP[1:]], "--trust-remote-code",
         edit_config(model_type="custom_lm", auto_map={"AutoModelForCausalLM": "x.Y"})),
    Case("config-wrong-type", ["importance", "--model", "{m}", *IMP[1:]], "has the wrong type",
         edit_config(hidden_size="sixty-four")),
    Case("info-truncated", ["info", "{m}"], "damaged", truncated_weights, watch=""),
    Case("info-pickle-only", ["info", "{m}"], "--allow-pickle", pickle_only, watch=""),
    Case("finetune-pickle-only", ["finetune", "--model", "{m}", *FT[3:]], "--allow-pickle", pickle_only),
    Case("eval-truncated", ["eval", "--model", "{m}", "--tasks", "ppl:{text}"], "damaged", truncated_weights, watch=""),
    Case("info-moe-top-k-beyond-experts", ["info", "{m}"], "num_experts_per_tok=8 experts, but has only",
         moe_checkpoint(num_experts_per_tok=8), watch=""),
    # -- data ----------------------------------------------------------------------------------------------
    Case("missing-data", ["importance", "--model", "{model}", "--data", "{d}/none.txt", *IMP[3:]], "does not exist"),
    Case("binary-data", ["importance", "--model", "{model}", "--data", "{t}", *IMP[3:]], "not UTF-8",
         text_file(b"\xff\xfe\x00\x81" * 64)),
    Case("bad-jsonl-data", ["importance", "--model", "{model}", "--data", "{t}", *IMP[3:]], "not valid JSON",
         text_file(b'{"text": "a"}\n{oops\n', "t.jsonl")),
    Case("samples-beyond-the-text", ["importance", "--model", "{model}", *IMP[1:4], "1000000000000000000", *IMP[5:]],
         "Too little text"),
    Case("seq-len-beyond-positions", ["importance", "--model", "{model}", *IMP[1:6], "5000", *IMP[7:]], "positions"),
    Case("ids-beyond-vocab", ["importance", "--model", "{m}", *IMP[1:]], "vocabulary", small_vocab),
    Case("importance-batch-0", ["importance", "--model", "{model}", *IMP[1:7], "--batch-size", "0", *IMP[9:]],
         "--batch-size"),
    # -- outputs: never the root, the cwd, an input, or someone else's directory ---------------------------
    Case("out-root", ["importance", "--model", "{model}", *IMP[1:-1], "/"], "filesystem root", watch=""),
    Case("out-dot", ["importance", "--model", "{model}", *IMP[1:-1], "."], "current directory", watch=""),
    Case("out-under-a-file", ["importance", "--model", "{model}", *IMP[1:-1], "{file}/sub"], "is a file", a_file,
         watch="{file}"),
    Case("out-is-the-model", ["importance", "--model", "{m}", *IMP[1:-1], "{m}", "--overwrite"], "is the input",
         lambda w, d: {"m": _copy_model(w, d)}, watch="{m}"),
    Case("out-contains-the-model", ["importance", "--model", "{m}", *IMP[1:-1], "{d}/in", "--overwrite"],
         "contains the input", lambda w, d: {"m": _copy_model(w, d, "in/m")}, watch="{m}"),
    Case("overwrite-foreign-dir", ["importance", "--model", "{model}", *IMP[1:], "--overwrite"],
         "not written by compactlm", foreign_dir),
    Case("existing-out", ["importance", "--model", "{model}", *IMP[1:]], "--overwrite", foreign_dir),
    Case("out-in-proc", ["importance", "--model", "{model}", *IMP[1:-1], "/proc/x"], "Cannot write '/proc/x'",
         watch=""),
    # -- prune: scores and plans ---------------------------------------------------------------------------
    Case("scores-truncated", [*PRUNE, "--scores", "{s}", "--intermediate-size", "64"], "damaged", truncated_scores),
    Case("scores-empty-tensors", [*PRUNE, "--scores", "{s}", "--intermediate-size", "64"], "damaged", scores_with(b"")),
    Case("scores-json-not-json", [*PRUNE, "--scores", "{s}", "--intermediate-size", "64"], "damaged",
         scores_with(meta=b"{not json")),
    Case("scores-json-a-list", [*PRUNE, "--scores", "{s}", "--intermediate-size", "64"], "expected an object",
         scores_with(meta=b"[1, 2]")),
    Case("scores-missing", [*PRUNE, "--scores", "{d}/none", "--intermediate-size", "64"], "not an importance-scores"),
    Case("scores-of-smaller-model", [*PRUNE, "--scores", "{small_scores}", "--num-hidden-layers", "3"], "computed for"),
    Case("scores-of-another-model", [*PRUNE, "--scores", "{small_scores}", "--num-hidden-layers", "1"], "fingerprint"),
    Case("target-too-big", [*PRUNE, "--scores", "{scores}", "--hidden-size", "1000"], "larger than"),
    Case("neither-scores-nor-plan", PRUNE, "exactly one"),
    Case("plan-out-of-range", [*PRUNE, "--plan", "{plan}"], "Invalid prune plan",
         plan_with(first_layer("neurons", lambda v: v[:-1] + [999]))),
    Case("plan-duplicate", [*PRUNE, "--plan", "{plan}"], "Invalid prune plan",
         plan_with(first_layer("neurons", lambda v: [v[0]] + v[:-1]))),
    Case("plan-negative", [*PRUNE, "--plan", "{plan}"], "Invalid prune plan",
         plan_with(first_layer("heads", lambda v: [-1] + v[1:]))),
    Case("plan-wrong-length", [*PRUNE, "--plan", "{plan}"], "the target has",
         plan_with(lambda p: p["kept"].update(layers=p["kept"]["layers"][:-1]))),
    Case("plan-not-json", [*PRUNE, "--plan", "{plan}"], "damaged", plan_with(raw=b"\x00\x01garbage")),
    Case("plan-missing-keys", [*PRUNE, "--plan", "{plan}"], "damaged", plan_with(raw=b'{"format": "compactlm.prune_plan/1"}')),
    Case("prune-out-is-scores", ["prune", "--model", "{model}", "--scores", "{s}", "--intermediate-size", "64",
                                 "--out", "{s}", "--overwrite"], "is the input", scores_with(), watch="{s}"),
    # -- distill / finetune: options, resume, the student itself -------------------------------------------
    Case("tokens-negative", [*DIST[:8], "-5", *DIST[9:]], "not a token count"),
    Case("tokens-word", [*DIST[:8], "abc", *DIST[9:]], "not a token count"),
    Case("tokens-1e30", [*DIST[:8], "1e30", *DIST[9:]], "more than"),
    Case("lr-nan", [*DIST, "--lr", "nan"], "lr nan"),
    Case("checkpoint-every-negative", [*DIST, "--checkpoint-every", "-1", "--keep-checkpoints", "0"],
         "--checkpoint-every"),
    Case("keep-checkpoints-0", [*DIST, "--keep-checkpoints", "0"], "--keep-checkpoints"),
    Case("distill-seq-len-beyond-positions", [*DIST[:10], "5000", *DIST[11:], "--tokens", "10240"], "positions"),
    Case("unknown-loss", [*DIST, "--loss", "kl"], "Unknown"),
    Case("distill-out-is-student", [*DIST[:4], "{stu}", *DIST[5:], "--overwrite"], "is the input", copy_student),
    Case("distill-resume-nothing", [*DIST, "--resume"], "no checkpoint"),
    Case("distill-overwrite-foreign", [*DIST, "--overwrite"], "not written by compactlm", foreign_dir),
    Case("finetune-grad-clip-negative", [*FT, "--grad-clip", "-1"], "--grad-clip"),
    Case("finetune-bad-int", [*FT, "--batch-size", "two"], "invalid int value"),
    # -- search --------------------------------------------------------------------------------------------
    Case("target-params-2.0", [*SEARCH[:6], "2.0", *SEARCH[7:]], "ambiguous"),
    Case("tolerance-nan", [*SEARCH, "--tolerance", "nan"], "--tolerance"),
    Case("search-overwrite-foreign", [*SEARCH, "--overwrite"], "not written by compactlm", foreign_dir),
    Case("search-scores-truncated", [*SEARCH[:3], "--scores", "{s}", *SEARCH[5:]], "damaged", truncated_scores),
    # -- eval ----------------------------------------------------------------------------------------------
    Case("json-under-a-file", [*EVAL, "--json", "{file}/r.json"], "is a file", a_file, watch="{file}"),
    Case("json-in-proc", [*EVAL, "--json", "/proc/r.json"], "Cannot write '/proc/r.json'", watch=""),
    Case("json-is-the-model-config", ["eval", "--model", "{m}", *EVAL[3:], "--json", "{m}/config.json", "--overwrite"],
         "inside the input directory", lambda w, d: {"m": _copy_model(w, d)}, watch="{m}"),
    Case("json-is-the-ppl-text", [*EVAL[:3], "--tasks", "ppl:{t}", "--json", "{t}", "--overwrite"], "is the input",
         text_file(b"Some text to score.\n"), watch="{t}"),
    Case("task-file-not-json", [*EVAL, "--data-dir", "{tasks}"], "damaged", task_file(b"{nope\n")),
    Case("task-file-binary", [*EVAL, "--data-dir", "{tasks}"], "damaged", task_file(bytes(range(256)) * 4)),
    Case("task-file-empty", [*EVAL, "--data-dir", "{tasks}"], "no rows", task_file(b"")),
    Case("task-file-not-objects", [*EVAL, "--data-dir", "{tasks}"], "not JSON objects", task_file(b"[1]\n[2]\n")),
    Case("unknown-task", [*EVAL[:3], "--tasks", "arc_eazy"], "Did you mean"),
    Case("limit-0", [*EVAL[:-1], "0"], "--limit"),
    Case("ppl-empty-file", [*EVAL[:3], "--tasks", "ppl:{t}"], "empty", text_file(b"")),
    # -- run: recipes --------------------------------------------------------------------------------------
    Case("yaml-bomb", RUN, "alias", recipe_text(BOMB)),
    Case("recipe-not-yaml", RUN, "not valid YAML", recipe_text("teacher: [unclosed\n")),
    Case("recipe-binary", RUN, "damaged", recipe_bytes(b"\xff\xfe\x00")),
    Case("set-bad-yaml", [*RUN, "--set", "eval.limit=[1,"], "not valid YAML", recipe()),
    Case("set-no-equals", [*RUN, "--set", "eval.limit"], "KEY=VALUE", recipe()),
    Case("set-unknown-key", [*RUN, "--set", "eval.limt=3"], "Did you mean 'limit'", recipe()),
    Case("set-huge-value", [*RUN, "--set", "dtype=[" + "1," * 5000 + "1]"], "characters)", recipe()),
    Case("step-name-dotdot", RUN, "plain name", recipe(steps=step(name="../../victim"))),
    Case("step-name-absolute", RUN, "plain name", recipe(steps=step(name="/tmp/victim"))),
    Case("step-name-nul", RUN, "name=a\\x00b:", recipe(steps=step(name="a\x00b"))),
    Case("step-name-right-to-left-override", RUN, "name=evil\\u202etxt.exe:",
         recipe(steps=step(name="evil\u202etxt.exe"))),
    Case("recipe-trust-remote-code", RUN, "--trust-remote-code", recipe(trust_remote_code=True)),
    Case("architecture-negative-layers", RUN,
         "recipe key 'steps[0].architecture.num_hidden_layers': expected greater than or equal to 1, got -4",
         recipe(steps=[{"name": "s", "architecture": {"num_hidden_layers": -4}}])),
    Case("recipe-wrong-type", RUN, "expected a float", recipe(correction={"lr": "fast"})),
    Case("recipe-bad-int", RUN, "expected an integer", recipe(data={"source": "x", "seq_len": "long"})),
    Case("recipe-not-shipped", ["run", "tiny", "--out", "{out}"], "neither a file nor a shipped recipe"),
    Case("run-overwrite-foreign", [*RUN, "--overwrite"], "not written by compactlm",
         lambda w, d: {**foreign_dir(w, d), **recipe()(w, d)}),
    Case("run-overwrite-bad-teacher", [*RUN, "--overwrite"], "./no/such", lambda w, d: {
        **our_run_dir(w, d), **recipe(teacher="./no/such/teacher")(w, d)}),
    Case("run-resume-nothing", [*RUN, "--resume"], "holds no run_state.json", recipe()),
    Case("run-out-root", [*RUN[:2], "--out", "/"], "filesystem root", recipe(), watch=""),
    # -- export (GGUF) ----------------------------------------------------------------------------------------
    Case("export-unknown-type", ["export", "{model}", "--gguf", "{out}", "--quant", "q9"], "Unknown GGUF type"),
    Case("export-truncated-model", ["export", "{m}", "--gguf", "{out}"], "damaged", truncated_weights),
    Case("export-random-gguf", ["export", "{gguf}", "--gguf", "{out}"], "GGUF", random_gguf),
    Case("export-out-is-input", ["export", "{gguf}", "--gguf", "{gguf}", "--overwrite"], "is the input", random_gguf,
         watch="{gguf}"),
    Case("export-into-the-model", ["export", "{m}", "--gguf", "{m}/x.gguf"], "inside the input directory",
         lambda w, d: {"m": _copy_model(w, d)}, watch="{m}"),
    Case("export-under-a-file", ["export", "{model}", "--gguf", "{file}/x.gguf"], "is a file", a_file, watch="{file}"),
    # -- plan (reads configs only, writes nothing) ------------------------------------------------------------
    Case("plan-config-lacks-fields", ["plan", "--model", "{cfg}", "--device", "H100"],
         "does not give vocab_size, intermediate_size", config_without("vocab_size", "intermediate_size"), watch=""),
    Case("plan-student-bigger-than-teacher", ["plan", "--model", "{model}", "--hidden-size", "99999", "--device", "H100"],
         "--hidden-size=99999 is larger than the source model's hidden_size=64", watch=""),
    Case("plan-mfu-7", ["plan", "--model", "{model}", "--device", "H100", "--mfu", "7"], "--mfu 7.0: expected", watch=""),
    # -- report --------------------------------------------------------------------------------------------
    Case("report-missing", ["report", "{d}/nonexistent"], "does not exist", watch=""),
    Case("report-not-a-run", ["report", "{run}"], "not a finished", run_dir_with(), watch="{run}"),
    Case("report-eval-corrupt", ["report", "{run}"], "damaged",
         run_dir_with(run_state_json=b'{"recipe": {}, "stages": {}}', eval_json=b"{\x00"), watch="{run}"),
    Case("report-eval-a-list", ["report", "{run}"], "expected an object",
         run_dir_with(run_state_json=b'{"recipe": {}, "stages": {}}', eval_json=b"[]"), watch="{run}"),
    Case("report-eval-wrong-shape", ["report", "{run}"], "compactlm run directory",
         run_dir_with(run_state_json=b'{"recipe": {}, "stages": {}}', eval_json=b'{"rows": 3}'), watch="{run}"),
]


def _snapshot(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPACTLM_NO_PROGRESS", "1")
    out = tmp_path / ("out.gguf" if case.argv[0] == "export" else "out")
    places = {**{k: str(v) for k, v in world.items()}, "d": str(tmp_path), "out": str(out)}
    if case.setup is not None:
        places.update({k: str(v) for k, v in case.setup(world, tmp_path).items()})
    watched = Path(case.watch.format(**places)) if case.watch else None
    before = _snapshot(watched) if watched else None
    world_before = _snapshot(world["model"])
    code = main(["-q", *(a.format(**places) for a in case.argv)])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("compactlm"), err[-3000:]
    assert case.fragment in lines[0], lines[0]
    assert len(lines[0]) < 1200, f"{len(lines[0])} characters"
    if watched is not None:
        assert _snapshot(watched) == before, "the watched path changed"
        assert not [p for p in watched.parent.iterdir() if p.name.startswith(f".{watched.name}.")], "temp dir left"
    assert _snapshot(world["model"]) == world_before


def test_sigterm_exits_143_and_leaves_nothing(world, tmp_path, capsys, monkeypatch):
    """SIGTERM unwinds like Ctrl-C (the atomic writer removes its temp dir) and exits 128 + 15."""
    import compactlm.importance.scores as scores_module

    def killed(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(scores_module, "save_file", killed)
    out, handler = tmp_path / "out", signal.getsignal(signal.SIGTERM)
    places = {**{k: str(v) for k, v in world.items()}, "out": str(out)}
    code = main(["-q", "importance", "--model", str(world["model"]), *(a.format(**places) for a in IMP[1:])])
    assert code == 143, capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert signal.getsignal(signal.SIGTERM) == handler   # main restores the handler it replaced


def test_rerun_after_an_interrupt_before_the_first_checkpoint(world, tmp_path, capsys):
    """What a double Ctrl-C before the first checkpoint leaves (metrics.jsonl) does not block a plain rerun."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0, "val_ppl": 1.0}\n')
    places = {**{k: str(v) for k, v in world.items()}, "out": str(out)}
    code = main(["-q", *(a.format(**places) for a in DIST), "--max-steps", "1", "--val-every", "0"])
    assert code == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file()


def test_prune_writes_through_a_symlinked_out(world, tmp_path, capsys):
    """--out a symlink to an empty directory: the student lands in the target, the link stays a link, nothing is left
    beside either (no .NAME.old-* or .NAME.tmp-*)."""
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target", target_is_directory=True)
    code = main(["-q", "prune", "--model", str(world["model"]), "--scores", str(world["scores"]),
                 "--intermediate-size", "64", "--out", str(tmp_path / "link")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link").resolve() == (tmp_path / "target").resolve()
    assert (tmp_path / "target" / "config.json").is_file() and (tmp_path / "target" / "prune_plan.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


def test_auto_map_on_a_stock_family_is_named_when_loaded(world, tmp_path, caplog):
    """A config.json with auto_map but a model_type transformers knows loads the stock class without
    --trust-remote-code; one warning names the classes that were skipped and the class used instead."""
    from compactlm.models import load_model

    m = edit_config(auto_map={"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XLM"})(
        world, tmp_path)["m"]
    with caplog.at_level("WARNING", logger="compactlm.models"):
        model = load_model(str(m), with_tokenizer=False)
    assert type(model).__name__ == "LlamaForCausalLM"
    [record] = [r for r in caplog.records if "auto_map" in r.getMessage()]
    assert all(part in record.getMessage() for part in ("configuration_x.XConfig", "modeling_x.XLM",
                                                          "model_type 'llama'", "--trust-remote-code"))


# ---- fuzz: random bytes into every file reader -----------------------------------------------------------

def _readers(world, d: Path):
    """(name, file to fill with bytes, call that reads it) for every reader of a file compactlm opens."""
    from argparse import Namespace

    from compactlm.cli.run import run_report
    from compactlm.data import read_documents
    from compactlm.distill.checkpoint import load_checkpoint
    from compactlm.distill.intermediate import read_prune_plan
    from compactlm.distill.metrics import JsonlLogger
    from compactlm.evaluate import get_task
    from compactlm.evaluate.task_data import read_local_rows
    from compactlm.importance import ImportanceScores
    from compactlm.models import load_model
    from compactlm.prune import PrunePlan
    from compactlm.recipes import load_recipe
    from compactlm.recipes.pipeline import _State

    def in_model(name):
        m = d / f"m-{name}"
        if not m.exists():
            shutil.copytree(world["model"], m)
        return m / name

    def in_scores(name):
        s = d / f"s-{name}"
        if not s.exists():
            shutil.copytree(world["scores"], s)
        return s / name

    ckpt = d / "ckpt"
    task = get_task("arc_easy")
    for name in ("run_state.json", "eval.json"):   # the report's other file is valid
        (d / f"report-{name}").mkdir()
        (d / f"report-{name}" / ({"run_state.json", "eval.json"} - {name}).pop()).write_text('{"rows": []}')
    yield "model.safetensors", in_model("model.safetensors"), lambda p: load_model(str(p.parent))
    yield "config.json", in_model("config.json"), lambda p: load_model(str(p.parent))
    yield "tokenizer.json", in_model("tokenizer.json"), lambda p: load_model(str(p.parent))
    yield "gguf", d / "x.gguf", lambda p: load_model(str(p))
    yield "importance.safetensors", in_scores("importance.safetensors"), lambda p: ImportanceScores.load(p.parent)
    yield "importance.json", in_scores("importance.json"), lambda p: ImportanceScores.load(p.parent)
    yield "prune_plan.json", d / "plan.json", PrunePlan.load
    yield "recipe", d / "r.yaml", load_recipe
    yield "text", d / "t.txt", lambda p: read_documents(str(p))
    yield "jsonl", d / "t.jsonl", lambda p: read_documents(str(p))
    yield "task file", d / "task.jsonl", lambda p: read_local_rows("arc_easy", task.source, p)
    yield "metrics.jsonl on resume", d / "run" / "metrics.jsonl", lambda p: JsonlLogger(p.parent, resume_step=3).close()
    yield "student prune_plan.json", d / "stu" / "prune_plan.json", lambda p: read_prune_plan(p.parent)
    yield "run_state.json on resume", d / "state" / "run_state.json", lambda p: _State(p.parent, {}, resume=True)
    for name in ("run_state.json", "eval.json"):
        yield f"report {name}", d / f"report-{name}" / name, lambda p: run_report(Namespace(run_dir=str(p.parent)))
    for name in ("trainer_state.json", "rng.safetensors", "rng.json", "student.safetensors", "optimizer.pt"):
        yield f"checkpoint {name}", ckpt / name, lambda p: load_checkpoint(
            p.parent, modules={"student": make_tiny_model("llama", dtype=torch.float32)}, optimizer=None)


def _valid_checkpoint(d: Path) -> None:
    from compactlm.distill.checkpoint import encode_rng, save_checkpoint
    from compactlm.distill.sampler import rng_state

    model = make_tiny_model("llama", dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(d, 1, modules={"student": model}, optimizer=opt, state={"settings": {}}, rng=[rng_state()],
                           keep=1)
    shutil.copytree(path, d / "ckpt")
    assert encode_rng   # the files the fuzz overwrites one at a time


@pytest.mark.parametrize("seed", [0, 1])
def test_readers_never_crash(world, tmp_path, seed, monkeypatch):
    """Each reader either succeeds (random bytes can be valid text) or raises CompactLMError: never anything else."""
    monkeypatch.setenv("COMPACTLM_NO_PROGRESS", "1")
    rng = random.Random(seed)
    _valid_checkpoint(tmp_path)
    for name, path, read in list(_readers(world, tmp_path)):
        for size in (0, 5, 300):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(size))
            try:
                read(path)
            except CompactLMError as err:
                assert len(str(err)) < 1200, (name, size)
            except Exception as err:  # noqa: BLE001 - the point of the test
                pytest.fail(f"{name} with {size} random bytes raised {type(err).__name__}: {err}")
