"""Every option of compactlm in one module: the ``*Args`` of the API and the sections of a recipe.

Each option is a field of a pydantic dataclass (``extra="forbid"``): its type validates YAML
recipes, ``--set`` overrides and Python callers alike, and its docstring is its ``--help`` (the
CLI flags are derived from these fields by :mod:`compactlm.cli.flags`). The classes stay
dataclasses, so ``dataclasses.replace``/``asdict``/``fields`` work on them (and validate).

Why pydantic v2 rather than jsonargparse (litgpt's choice): recipes have lists of sections
(``steps``) and keys that must be refused with the key path, the value and what was expected;
pydantic reports exactly that (``loc``, ``input``, ``msg``) for nested lists and dataclasses,
and is already installed with the evaluation extras, while argparse stays the CLI engine the
verbs already use.

Types: integers are strict (``seq_len: fast``, ``limit: 1K`` and ``true`` are refused); only
token-count fields (:data:`Tokens`) read ``256K``/``2M``. The architecture axes carry the
Hugging Face config names (:data:`AXES`) everywhere: API, YAML, CLI flags and JSON.
The field types are in :mod:`.fields`, the validation with key-path errors in :mod:`.validation`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, Strict
from pydantic.dataclasses import dataclass

from .fields import (
    CONFIG,
    DEFAULT_AGGREGATION,
    DEFAULT_MODEL,
    DEFAULT_PROMPTS,
    Bool,
    Bytes,
    Count,
    Fraction,
    Int,
    NonNegative,
    ParamTarget,
    PathText,
    Positive,
    Precision,
    Steps,
    Tokens,
)

# ---- distillation -----------------------------------------------------------------------------------

@dataclass(config=CONFIG)
class LossArgs:
    """What the student learns from."""

    loss: str = "forward_kl"
    """logit loss: forward_kl (KL(teacher||student), the paper's best), reverse_kl, js, mse, cosine"""
    temperature: Positive = 1.0
    """softmax temperature τ of the logit loss (the loss is multiplied by τ²)"""
    top_k: Count | None = None
    """use only the teacher's K largest logits (forward_kl only; the paper finds K <= 100 hurts)"""
    js_beta: NonNegative = 0.5
    """β of the Jensen–Shannon loss"""
    clm_weight: NonNegative = 0.0
    """weight of the student's next-token cross-entropy added to the logit loss (paper: 0)"""
    chunk_size: Steps = 512
    """tokens per chunk of LM head + loss, bounding the fp32 (tokens x vocab) memory; 0 = no chunking"""
    intermediate: Literal["auto", "on", "off"] = "auto"
    """intermediate-state loss: auto (on when the student has fewer layers than the teacher), on, off"""
    layer_map: list[Int] | None = None
    """teacher layer index of every student layer (default: prune_plan.json kept.layers)"""


@dataclass(config=CONFIG)
class TrainArgs:
    """How the student is optimised; defaults follow docs/method.md §4, scaled to short runs."""

    lr: Positive = 1e-4
    """peak learning rate (AdamW, cosine schedule)"""
    min_lr: NonNegative = 1e-5
    """learning rate at the end of the cosine decay"""
    warmup_steps: Steps | None = None
    """linear warm-up steps (default: min(40, 10% of the steps))"""
    weight_decay: NonNegative = 0.0
    """AdamW weight decay"""
    batch_size: Count = 8
    """global batch in sequences per optimizer step (all processes, all accumulation steps)"""
    micro_batch_size: Count = 4
    """sequences per forward/backward on one process; gradient accumulation makes up the rest"""
    max_steps: Count | None = None
    """optimizer steps (default: as many as the token budget buys, or one pass over the training blocks)"""
    grad_clip: NonNegative = 1.0
    """clip the global gradient norm to this value (0 = off)"""
    precision: Precision = "auto"
    """auto (bf16 where the device runs it natively and a micro-benchmark of this model's GEMMs finds it faster,
    else fp32), bf16 (autocast, fp32 master weights) or fp32"""
    teacher_dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """teacher weights: auto (the teacher's own dtype, run under the training autocast), bf16 or fp32 (a converted
    copy when the teacher is held in another dtype; the given teacher is never changed)"""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (the local rank's GPU if any)"""
    seed: Int = 0
    """seed of the data order and of any random initialisation"""
    val_every: Steps = 50
    """validate on the held-out blocks every N steps (and at start and end; 0 = start and end only)"""
    checkpoint_every: Steps = 50
    """write a checkpoint every N steps (and on SIGINT/SIGTERM; 0 = only then and at the end)"""
    keep_checkpoints: Count = 2
    """number of newest checkpoints kept"""
    export_checkpoints: Bool = False
    """also write a loadable Hugging Face export inside every checkpoint"""
    log_to: str = ""
    """extra metric loggers besides metrics.jsonl: tensorboard, wandb (comma-separated)"""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """data parallelism over several processes (torchrun / accelerate launch): ddp (a whole student, optimizer and
    teacher on every device; gradients all-reduced), fsdp (FSDP2: student sharded per decoder layer with fp32 master
    weights, bf16 compute under bf16 precision; checkpoints as DCP shards; the export gathered on rank 0) or auto
    (ddp where `compactlm plan`'s memory model finds the replicated run fits each device, else fsdp). One process
    always trains the plain model"""
    teacher_placement: Literal["shard", "replicate", "offload"] = "shard"
    """the frozen teacher under --strategy fsdp: shard (per decoder layer, a copy; its LM head whole on every device),
    replicate (whole on every device, as under ddp; --teacher-dtype bf16 halves it) or offload (sharded and held in
    CPU memory, copied to the device layer by layer); ddp always replicates"""

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, min(40, total_steps // 10))


# ---- architecture and search ------------------------------------------------------------------------

@dataclass(config=CONFIG)
class ArchitectureArgs:
    """Target sizes by their Hugging Face config names; an axis left out keeps the source size."""

    hidden_size: Count | None = None
    """hidden (embedding) channels"""
    intermediate_size: Count | None = None
    """MLP neurons per layer"""
    num_attention_heads: Count | None = None
    """query heads (a multiple of the KV groups)"""
    num_key_value_heads: Count | None = None
    """KV groups (whole groups are dropped)"""
    num_hidden_layers: Count | None = None
    """decoder layers"""
    num_experts: Count | None = None
    """experts per MoE layer (router rows; num_experts_per_tok is kept)"""
    moe_intermediate_size: Count | None = None
    """neurons of each expert (the same for every expert)"""
    shared_expert_intermediate_size: Count | None = None
    """neurons of the shared expert (Qwen2-MoE)"""


@dataclass(config=CONFIG)
class SearchSpaceArgs:
    """Sizes to try per axis; an axis left out keeps the teacher's size."""

    hidden_size: list[Count] | None = None
    """hidden sizes to try"""
    intermediate_size: list[Count] | None = None
    """MLP sizes to try"""
    num_attention_heads: list[Count] | None = None
    """query-head counts to try"""
    num_key_value_heads: list[Count] | None = None
    """KV-group counts to try"""
    num_hidden_layers: list[Count] | None = None
    """layer counts to try"""
    num_experts: list[Count] | None = None
    """expert counts to try (MoE)"""
    moe_intermediate_size: list[Count] | None = None
    """expert widths to try (MoE)"""
    shared_expert_intermediate_size: list[Count] | None = None
    """shared-expert widths to try (Qwen2-MoE)"""

    def given(self) -> dict[str, list[int]]:
        return {a: v for a, v in dataclasses.asdict(self).items() if v is not None}


FLOAT_WEIGHTS = ("float32", "bfloat16", "float16")


@dataclass(config=CONFIG)
class MemoryBudget:
    """Deployed memory: the weights in the deployed type, the KV cache at ``seq_len`` x ``batch`` and any recurrent state
    (analytic, docs/search.md)."""

    limit: Bytes
    """the budget: 300MB, 2GB (powers of 1000), 1.5GiB (powers of 1024) or bytes"""
    weights: str = "bfloat16"
    """the deployed type: float32, bfloat16, float16 (transformers) or a GGUF type such as q8_0, q4_0 (llama.cpp)"""
    kv_cache: Literal["float32", "bfloat16", "float16"] | None = None
    """the KV cache's type (default: float16 for a GGUF type, as llama.cpp; else the weights' type)"""
    seq_len: Count = 2048
    """tokens of context the cache holds (prompt + generated)"""
    batch: Count = 1
    """sequences decoded at once"""

    @property
    def gguf(self) -> bool:
        return self.weights not in FLOAT_WEIGHTS

    @property
    def kv_dtype(self) -> str:
        return self.kv_cache or ("float16" if self.gguf else self.weights)


def _memory_shorthand(value):
    """``memory: 300MB`` is ``memory: {limit: 300MB}``."""
    return {"limit": value} if isinstance(value, (str, int)) and not isinstance(value, bool) else value


LATENCY_BOUNDS = ("decode_ms", "decode_tokens_per_s", "prefill_tokens_per_s")


@dataclass(config=CONFIG)
class LatencyBudget:
    """Speed on a target runtime, measured on randomly initialised weights of each candidate's shape (docs/search.md)."""

    runtime: Literal["llamacpp", "hf"] = "llamacpp"
    """llamacpp (a GGUF file of the candidate in llama.cpp, through llama-cpp-python) or hf (transformers' generate)"""
    weights: str | None = None
    """the measured type: a GGUF type for llamacpp (default q8_0), float32/bfloat16/float16 for hf (default float32)"""
    device: str = "cpu"
    """hf: cpu, cuda or cuda:N (llama.cpp runs on the CPU)"""
    threads: Count | None = None
    """CPU threads (default: one per core)"""
    prompt: Count = 128
    """prompt tokens (the prefill)"""
    batch: Count = 1
    """sequences at once (llamacpp: 1)"""
    new_tokens: Count = 32
    """decoded tokens timed after the prefill"""
    repeats: Annotated[int, Strict(), Field(ge=2)] = 5
    """timed runs per candidate (after one warm-up); their spread decides ties"""
    decode_ms: Positive | None = None
    """at most this many milliseconds per decoding step (one token of each sequence)"""
    decode_tokens_per_s: Positive | None = None
    """at least this many decoded tokens per second, all sequences together"""
    prefill_tokens_per_s: Positive | None = None
    """at least this many prompt tokens per second, all sequences together"""

    def __post_init__(self):
        if all(getattr(self, b) is None for b in LATENCY_BOUNDS):
            raise ValueError(f"give at least one bound: {', '.join(LATENCY_BOUNDS)}")
        if self.runtime == "llamacpp" and self.batch != 1:
            raise ValueError(f"batch={self.batch}: the llamacpp runtime decodes one sequence; use runtime hf for "
                             f"batches")
        if self.runtime == "hf" and self.weights is not None and self.weights not in FLOAT_WEIGHTS:
            raise ValueError(f"weights={self.weights!r}: the hf runtime runs {', '.join(FLOAT_WEIGHTS)}; GGUF types "
                             f"are for runtime llamacpp")
        if self.runtime == "llamacpp" and self.weights in FLOAT_WEIGHTS:
            raise ValueError(f"weights={self.weights!r}: the llamacpp runtime measures a GGUF type (f32, f16, q8_0, "
                             f"q4_0, ...)")

    @property
    def measured_type(self) -> str:
        return self.weights or ("q8_0" if self.runtime == "llamacpp" else "float32")

    @property
    def metric(self) -> str:
        """The bound the frontier is drawn against: the first one given."""
        return next(b for b in LATENCY_BOUNDS if getattr(self, b) is not None)


@dataclass(config=CONFIG)
class SearchArgs:
    """What to search and how to rank."""

    target_params: ParamTarget | None = "0.667"
    """parameter budget: a count (90M, 1.5B) or a fraction of the teacher (0.667); None with a memory budget: the
    largest candidates that fit it"""
    tolerance: Fraction = 0.05
    """candidates lie within target x (1 ± tolerance) (paper: 5%)"""
    active_params: ParamTarget | None = None
    """MoE models: also a budget of parameters touched per token (a count, or a fraction of the teacher's), ± tolerance"""
    memory: Annotated[MemoryBudget | None, BeforeValidator(_memory_shorthand)] = None
    """deployed-memory budget: 300MB, or {limit: 2GB, weights: q4_0, seq_len: 8192, batch: 4}"""
    latency: LatencyBudget | None = None
    """speed budget measured on a runtime: {runtime: llamacpp, weights: q4_0, decode_ms: 10, prompt: 128}"""
    space: SearchSpaceArgs | None = None
    """explicit sizes per axis ({hidden_size: [...], ...}); axes left out keep the teacher's size; None derives one"""
    max_depth_cut: Fraction = 0.2
    """derived space: remove at most this fraction of the layers"""
    prune_kv_heads: Bool = False
    """derived space: also try fewer KV groups"""
    max_candidates: Count | None = 24
    """keep at most this many candidates, each hidden size's nearest the target in turn (bounds the proxy's cost)"""
    top_k: Annotated[int, Strict(), Field(ge=0)] = 3
    """candidates, best by proxy, that get the short distillation; 0 picks the best proxy"""
    distill_tokens: Tokens = 65536
    """tokens of the short distillation each of the top_k candidates gets (the same for all)"""
    aggregation: str = DEFAULT_AGGREGATION
    """batch,seq aggregation of the activation scores used to prune each candidate"""
    depth_metric: str = "bi"
    """layers to drop: bi, loss or block (or task:<name> when the scores hold that task)"""


# ---- evaluation ---------------------------------------------------------------------------------------

@dataclass(config=CONFIG)
class EvalArgs:
    """How a model is evaluated: the flags of ``compactlm eval`` and the options of :func:`compactlm.evaluate.evaluate`,
    passed whole (a recipe's ``eval`` section is :class:`EvalSection`, this with a run's defaults)."""

    tasks: list[str] = dataclasses.field(default_factory=lambda: [
        "wikitext2", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "piqa", "lambada", "boolq", "mmlu"])
    """comma-separated task names, or ppl:FILE / ppl:DATASET:CONFIG:SPLIT"""
    limit: Count | None = None
    """examples per task (per subject for mmlu, windows for perplexity)"""
    first_n: Bool = False
    """with --limit take the first N examples, as lm-eval --limit does, instead of a seeded random subset"""
    seed: Int = 1234
    """subsampling seed for --limit"""
    batch_size: Count = 16
    """sequences per forward pass"""
    precision: Precision = "auto"
    """auto | bf16 | fp32: bf16 autocast where the device runs it natively and it is measured faster at this
    model's shapes (auto), always, or never"""
    window: Annotated[int, Strict(), Field(ge=2)] = 2048
    """perplexity window length in tokens"""
    stride: Count | None = None
    """perplexity window step (default: the window, i.e. no overlap)"""
    share_prefix: Bool = True
    """score the shared context of a question's options once (--no-share-prefix: every option in full, in the
    harness's order; slower, for cross-checks)"""
    data_dir: PathText | None = None
    """folder with local task files (default: $COMPACTLM_DATA_DIR)"""


# ---- recipe sections ---------------------------------------------------------------------------------

@dataclass(config=CONFIG)
class DataSection:
    source: str = "exllamav2:wiki"
    """text: .txt/.jsonl file or folder, saved dataset, Hugging Face datasets name, exllamav2:<corpus>"""
    config: str | None = None
    """datasets config name (e.g. wikitext-2-raw-v1)"""
    split: str = "train"
    """datasets split"""
    text_field: str = "text"
    """text column / jsonl field"""
    seq_len: Annotated[int, Strict(), Field(ge=2)] = 512
    """tokens per block"""
    heldout_samples: Count = 16
    """blocks kept out of training: search proxy, validation and held-out perplexity"""
    seed: Int = 0
    """seed of the train/held-out split"""


@dataclass(config=CONFIG)
class CorrectionSection:
    tokens: Tokens = 0
    """teacher correction: fine-tune the teacher on the data for this many tokens first (0 = off)"""
    lr: float = 2e-5
    """peak learning rate of the correction (the follow-up paper: 1/5 of the original)"""
    batch_size: Count = 8
    micro_batch_size: Count = 4


@dataclass(config=CONFIG)
class ImportanceSection:
    """How the importance pass scores a model: the recipe's ``importance`` section, the flags of ``compactlm importance``,
    and the options of :func:`compactlm.importance.estimate_importance`, passed whole."""

    samples: Count = 64
    """training blocks for the activation statistics"""
    batch_size: Count = 8
    """sequences per forward pass"""
    layer_loss_samples: Int = 8
    """blocks for the 'LM loss with layer i removed' metric (0 skips it)"""
    seq_aggregations: str = "mean"
    """sequence statistics to record: mean serves every BATCH,mean aggregation at prune time; mean,l2,var all nine"""
    criterion: str = "activation"
    """width importance: activation (hook statistics), magnitude (L2 norm of each unit's weights), taylor
    (first-order |w * dL/dw| per unit, one backward pass over the data) or random (seeded); layer metrics are
    recorded either way"""
    seed: Int = 0
    """seed of the random criterion"""
    depth_tasks: list[str] = dataclasses.field(default_factory=list)
    """zero-shot tasks scored with every contiguous block of layers removed, for depth_metric task:NAME
    (e.g. [winogrande])"""
    depth_task_examples: Count = 64
    """examples per task and block: the seeded subset of `compactlm eval --limit N`"""
    depth_task_lengths: list[Count] | None = None
    """block lengths to score, e.g. [8, 16] (default: every length 1..L-1, L(L+1)/2 - 1 evaluations)"""


@dataclass(config=CONFIG)
class DistillSection:
    tokens: Tokens = 262144
    """distillation tokens of the chosen student"""
    init: Literal["search", "pruned"] = "search"
    """start from the search's short distillation of the winner (search) or from the plain prune (pruned)"""
    loss: LossArgs = dataclasses.field(default_factory=LossArgs)
    train: TrainArgs = dataclasses.field(default_factory=TrainArgs)


@dataclass(config=CONFIG)
class StepSection:
    name: str = "student"
    """folder of this step in the run directory"""
    target_params: ParamTarget | None = "0.667"
    """parameter budget of the search: a count (90M) or a fraction of this step's teacher (0.667)"""
    architecture: ArchitectureArgs | None = None
    """a fixed architecture instead of a search ({hidden_size: 512, num_hidden_layers: 24, ...})"""
    search: SearchArgs = dataclasses.field(default_factory=SearchArgs)
    distill: DistillSection = dataclasses.field(default_factory=DistillSection)


@dataclass(config=CONFIG)
class EvalSection(EvalArgs):
    """A recipe's ``eval`` section: :class:`EvalArgs` (every option of ``compactlm eval``) with the defaults of a run
    (a few perplexity windows of held-out text at the run's usual block length), plus the greedy continuations."""

    tasks: list[str] = dataclasses.field(default_factory=lambda: ["ppl:exllamav2:c4"])
    """compactlm eval task names (ppl:<text> for perplexity of other text)"""
    limit: Count | None = 32
    """examples (or perplexity windows) per task"""
    batch_size: Count = 8
    """sequences per forward pass"""
    precision: Precision | None = None
    """auto | bf16 | fp32 (default: the recipe's precision)"""
    window: Annotated[int, Strict(), Field(ge=2)] = 512
    """perplexity window in tokens"""
    prompts: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_PROMPTS))
    """prompts every model continues greedily (report, final printout, distinct-2 in the table); [] = none"""
    max_new_tokens: Count = 32
    """tokens of each greedy continuation"""


@dataclass(config=CONFIG)
class ExportSection:
    gguf: list[str] = dataclasses.field(default_factory=list)
    """GGUF files of the final student for llama.cpp, one per type (e.g. [q8_0] or [f16, q8_0, q4_0]); [] = none"""
    tokenizer_pre: str | None = None
    """llama.cpp pre-tokenizer name, only needed when the teacher is not a GGUF file (its tokenizer is then converted)"""
    evaluate: Bool = True
    """score each GGUF file too (held-out perplexity and the eval tasks, through transformers' GGUF loader)"""


@dataclass(config=CONFIG)
class Recipe:
    teacher: str = DEFAULT_MODEL
    """built-in name, local checkpoint dir, .gguf file or Hugging Face id"""
    dtype: str = "float32"
    device: str = "cpu"
    precision: Precision = "auto"
    """importance and evaluation: auto (bf16 where native and measured faster), bf16 or fp32; distillation and the
    search's short distillations have their own steps[i].distill.train.precision (also auto by default), and
    eval.precision overrides this one for the evaluation"""
    trust_remote_code: Bool = False
    data: DataSection = dataclasses.field(default_factory=DataSection)
    correction: CorrectionSection = dataclasses.field(default_factory=CorrectionSection)
    importance: ImportanceSection = dataclasses.field(default_factory=ImportanceSection)
    steps: list[StepSection] = dataclasses.field(default_factory=lambda: [StepSection()])
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    export: ExportSection = dataclasses.field(default_factory=ExportSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
