"""The YAML recipe of ``compactlm run``: dataclasses, validated on load with errors that name the key.

A recipe is teacher + data + (teacher correction) + one or more compression steps + evaluation.
Each step prunes the previous model (the teacher, then the previous step's student) to a
parameter budget, found by search or given as a fixed architecture, and distills it. Several
steps make iterative compression (teacher → medium → small, METHOD.md best practice #1).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..distill import LossArgs, TrainArgs
from ..errors import CompactLMError
from ..models import DEFAULT_MODEL
from ..readers import MAX_YAML_BYTES, clip, load_yaml, reading
from ..search import AXES, SearchArgs

SHIPPED = Path(__file__).resolve().parent
STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED_NAMES = ("correction",)   # folders of the run directory that are not steps


@dataclass
class DataSection:
    source: str = "exllamav2:wiki"
    """text: .txt/.jsonl file or folder, saved dataset, Hugging Face datasets name, exllamav2:<corpus>"""
    config: str | None = None
    """datasets config name (e.g. wikitext-2-raw-v1)"""
    split: str = "train"
    """datasets split"""
    text_field: str = "text"
    """text column / jsonl field"""
    seq_len: int = 512
    """tokens per block"""
    heldout_samples: int = 16
    """blocks kept out of training: search proxy, validation and held-out perplexity"""
    seed: int = 0
    """seed of the train/held-out split"""


@dataclass
class CorrectionSection:
    tokens: int = 0
    """teacher correction: fine-tune the teacher on the data for this many tokens first (0 = off)"""
    lr: float = 2e-5
    """peak learning rate of the correction (the follow-up paper: 1/5 of the original)"""
    batch_size: int = 8
    micro_batch_size: int = 4


@dataclass
class ImportanceSection:
    samples: int = 64
    """training blocks for the activation statistics"""
    batch_size: int = 8
    layer_loss_samples: int = 8
    """blocks for the 'LM loss with layer i removed' metric (0 skips it)"""
    seq_aggregations: str = "mean"
    """sequence statistics to record (mean serves every BATCH,mean aggregation)"""


@dataclass
class DistillSection:
    tokens: int = 262144
    """distillation tokens of the chosen student"""
    init: str = "search"
    """start from the search's short distillation of the winner (search) or from the plain prune (pruned)"""
    loss: LossArgs = field(default_factory=LossArgs)
    train: TrainArgs = field(default_factory=TrainArgs)


@dataclass
class StepSection:
    name: str = "student"
    """folder of this step in the run directory"""
    target_params: str | None = "0.667"
    """parameter budget of the search: a count (90M) or a fraction of this step's teacher (0.667)"""
    architecture: dict | None = None
    """a fixed architecture instead of a search ({hidden_size: 512, num_hidden_layers: 24, ...})"""
    search: SearchArgs = field(default_factory=SearchArgs)
    distill: DistillSection = field(default_factory=DistillSection)


@dataclass
class EvalSection:
    tasks: list[str] = field(default_factory=lambda: ["ppl:exllamav2:c4"])
    """compactlm eval task names (ppl:<text> for perplexity of other text)"""
    limit: int | None = 32
    """examples (or perplexity windows) per task"""
    window: int = 512
    """perplexity window in tokens"""
    batch_size: int = 8


@dataclass
class ExportSection:
    gguf: list[str] = field(default_factory=list)
    """GGUF files of the final student for llama.cpp, one per type (e.g. [q8_0] or [f16, q8_0, q4_0]); [] = none"""
    tokenizer_pre: str | None = None
    """llama.cpp pre-tokenizer name, only needed when the teacher is not a GGUF file (its tokenizer is then converted)"""
    evaluate: bool = True
    """score each GGUF file too (held-out perplexity and the eval tasks, through transformers' GGUF loader)"""


@dataclass
class Recipe:
    teacher: str = DEFAULT_MODEL
    """built-in name, local checkpoint dir, .gguf file or Hugging Face id"""
    dtype: str = "float32"
    device: str = "cpu"
    precision: str = "auto"
    """importance, search proxy and evaluation: auto (bf16 where native and measured faster), bf16 or fp32;
    distillation has its own steps[i].distill.train.precision (also auto by default)"""
    trust_remote_code: bool = False
    data: DataSection = field(default_factory=DataSection)
    correction: CorrectionSection = field(default_factory=CorrectionSection)
    importance: ImportanceSection = field(default_factory=ImportanceSection)
    steps: list[StepSection] = field(default_factory=lambda: [StepSection()])
    eval: EvalSection = field(default_factory=EvalSection)
    export: ExportSection = field(default_factory=ExportSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- loading -------------------------------------------------------------------------------------

def _check_scalar(value, kind, where: str):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, str):   # 262144, 256K, 1M
        from ..distill.config import parse_tokens

        try:
            return parse_tokens(value)
        except CompactLMError:
            raise CompactLMError(f"recipe key '{where}': expected an integer (e.g. 262144 or 256K), "
                                 f"got {clip(value)}.") from None
    if kind is float and isinstance(value, str):
        try:
            return float(value)                     # YAML reads 1e-4 as a string
        except ValueError:
            pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CompactLMError(f"recipe key '{where}': expected {kind.__name__}, got {clip(value)}.")
    return value


def _convert(value, hint, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _convert(value, hint, where)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            value = [value] if not isinstance(value, str) else [v.strip() for v in value.split(",") if v.strip()]
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise CompactLMError(f"recipe key '{where}': expected a mapping, got {clip(value)}.")
        return value
    return _check_scalar(value, hint, where)


def build(cls: type, values: dict | None, where: str = ""):
    """An instance of dataclass ``cls`` from a mapping; unknown keys and wrong types name the key."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise CompactLMError(f"recipe key '{where or 'top level'}': expected a mapping, got {clip(values)}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        from ..errors import unknown_name

        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise CompactLMError(f"recipe key '{clip(key, 80)}': " + str(unknown_name("key", clip(str(unknown[0]), 80), names)))
    return cls(**{k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()})


def _check(recipe: Recipe) -> None:
    problems = []
    if not recipe.steps:
        problems.append("'steps' is empty: give at least one compression step")
    names = [s.name for s in recipe.steps]
    if len(set(names)) != len(names):
        problems.append(f"step names {clip(names)} repeat: give each step its own 'name'")
    for i, step in enumerate(recipe.steps):
        if not STEP_NAME.fullmatch(step.name) or step.name in RESERVED_NAMES:
            problems.append(f"steps[{i}].name={clip(step.name, 60)}: a step name is a folder of the run directory, so it "
                            f"must be a plain name of letters, digits, '_' and '-' (at most 64, not "
                            f"{'/'.join(RESERVED_NAMES)}), e.g. 'student' or 'step_90m'")
        for axis, size in (step.architecture or {}).items():
            if axis in AXES and size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
                problems.append(f"steps[{i}].architecture.{axis}={clip(size, 40)}: expected a positive integer")
        if step.architecture is None and step.target_params is None:
            problems.append(f"steps[{i}]: give 'target_params' (search) or 'architecture' (fixed)")
        if step.architecture is not None:
            bad = sorted(set(step.architecture) - set(AXES))
            if bad:
                problems.append(f"steps[{i}].architecture has unknown axis {bad}; axes: {', '.join(AXES)}")
        if step.distill.init not in ("search", "pruned"):
            problems.append(f"steps[{i}].distill.init={step.distill.init!r}: expected 'search' or 'pruned'")
        if step.distill.tokens < 0:
            problems.append(f"steps[{i}].distill.tokens={step.distill.tokens}: expected 0 or more")
    if recipe.data.heldout_samples < 1:
        problems.append(f"data.heldout_samples={recipe.data.heldout_samples}: the search and validation need at least 1")
    from ..export.gguf import quant_types
    from ..hardware import PRECISIONS

    if recipe.precision not in PRECISIONS:
        problems.append(f"precision={clip(recipe.precision, 40)}: expected one of {', '.join(PRECISIONS)}")

    for quant in recipe.export.gguf:
        if quant.lower() not in quant_types():
            problems.append(f"export.gguf has {clip(quant, 40)}: expected GGUF types from {', '.join(quant_types())}")
    if len({q.lower() for q in recipe.export.gguf}) != len(recipe.export.gguf):
        problems.append(f"export.gguf={clip(recipe.export.gguf)} repeats a type")
    if problems:
        raise CompactLMError("Invalid recipe: " + "; ".join(problems) + ".")


def _set(tree: dict, dotted: str, value) -> None:
    """Apply one ``--set a.b.0.c=value`` override to a raw recipe mapping."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if isinstance(node, list):
            node = node[int(key)]
        else:
            node = node.setdefault(key, {} if not keys[keys.index(key) + 1].isdigit() else [{}])
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def resolve_path(name: str | None) -> Path | None:
    """A recipe path, or the name of a shipped recipe (``default``, ``iterative``, ``fixed``)."""
    if name is None:
        return SHIPPED / "default.yaml"
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.yaml")))
    raise CompactLMError(f"Recipe '{name}' is neither a file nor a shipped recipe ({available}). "
                         f"Pass the path of a YAML recipe.")


def load_recipe(name: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (``key.path=value``) and validate a recipe."""
    path = resolve_path(str(name) if name is not None else None)
    with reading(path, "recipe file"):
        if path.stat().st_size > MAX_YAML_BYTES:
            raise CompactLMError(f"Recipe '{path}' is {path.stat().st_size:,} bytes; a recipe is at most {MAX_YAML_BYTES:,}.")
        text = path.read_text(encoding="utf-8")
    raw = load_yaml(text, f"Recipe '{path}'")
    if raw is None:
        raw = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CompactLMError(f"--set '{clip(item, 80)}': expected KEY=VALUE, e.g. steps.0.distill.tokens=65536.")
        value = load_yaml(text, f"--set '{clip(item, 80)}'")
        try:
            _set(raw, key.strip(), value)
        except (IndexError, ValueError, TypeError, AttributeError, KeyError) as err:
            raise CompactLMError(f"--set '{clip(item, 80)}': no such place in the recipe ({clip(str(err), 80)}).") from err
    recipe = build(Recipe, raw)
    _check(recipe)
    return recipe
