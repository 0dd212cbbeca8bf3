"""Memory per device of every stage, term by term, for each parallel strategy (analytic: no weights).

Every count is bytes on **one** device. N = parameters (exact, :mod:`compactlm.arch.params`),
M = the matmul weights among them (linear layers and the LM head), n = tokens of one
micro-batch (micro-batch x sequence length), L/h/f/q/kv/V = layers, hidden size, MLP size,
query width (heads x head_dim), key/value width (KV groups x head_dim) and vocabulary; W = world
size (devices). ``b(dtype)`` is 4 for float32, 2 for bfloat16/float16.

Distillation (student S trained, teacher T frozen):

- ``weights``      4 N_S: the student is trained in fp32, which are also its master weights
  (bf16 autocast runs the matmuls in bf16 and leaves the parameters fp32).
- ``autocast``     2 M_S under bf16: autocast caches one bf16 copy of each trainable matmul weight per
  step (the frozen teacher's weights are recast every forward and not cached).
- ``gradients``    4 N_S (fp32, like the parameters).
- ``optimizer``    8 N_S: AdamW's exp_avg and exp_avg_sq, fp32.
- ``ddp_buckets``  4 N_S under DDP: the reducer's flat copy of the gradients (``gradient_as_bucket_view``
  is off).
- ``activations``  L_S x n x (6h x 4 + (2(q + 2kv) + 2q + 4f) x b(precision)) bytes: what autograd keeps
  per layer and token without activation checkpointing (:func:`layer_activation_bytes`).
- ``kd_loss``      the chunked KD loss (``distill/losses.py``): 5 x chunk x V fp32 (student and teacher
  logits of one chunk, both softmaxes, the gradient) + 4 n (h_S + h_T) for the stored hidden-state
  gradient and the teacher's final states; without chunking, chunk = n. With the intermediate-state
  loss (fewer student than teacher layers) + 4 n h_T L_S for the recorded teacher states.
- ``teacher``      N_T x b(teacher dtype): replicated in full, sharded /W plus one gathered unit (FSDP),
  or 0 when offloaded to the host; + the live tensors of one teacher layer (forward only).
- FSDP divides weights + autocast + gradients + optimizer by W and adds one gathered unit: the
  largest FSDP unit (a decoder layer, or the root: embeddings, final norm and LM head) in fp32.

Importance (the teacher, forward only): weights N_T x b(dtype) (under bf16 autocast with fp32 weights,
one transient bf16 copy of the weight being multiplied, bounded by 2 x the largest FSDP unit: the
forward passes run in ``torch.inference_mode``, where autocast caches nothing — measured: caching
2 M_T overpredicted importance by 27% on a 0.5B model), the live tensors of
one layer of a batch, the hook accumulators (sum and sum of squares in float64 of every neuron, head
channel and hidden channel: 16 x k x L (f + q + 2h) bytes for k sequence aggregations, the (L+1)²
block cosines and every 8th token's states of every layer for Block Importance), and, when the
"LM loss with layer i removed" metric runs, the logits of one chunk of at most ``logit_chunk_tokens(V)``
tokens of a batch (fp32, twice: logits and log-softmax; + a bf16 copy under bf16).

Search proxy: the teacher and one pruned candidate (the largest) held at once, the candidate's
forward of one batch with the logits of one chunk. Evaluation: the model, one batch's live tensors and the
logits of one window (perplexity) or one chunk (held-out loss).

Every total adds ``runtime``: the process itself (CPU: the torch libraries, Python, tokenizer and
data, ~0.6 GiB resident; CUDA: the context and cuBLAS workspace, ~1 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..arch import Architecture, logit_chunk_tokens
from ..arch.params import ParamLayout, parameter_counts
from ..errors import CompactLMError

GiB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
RUNTIME_BYTES = {"cpu": int(0.6 * GiB), "cuda": 1 * GiB}
KD_CHUNK_COPIES = 5          # student + teacher logits of a chunk, both softmaxes, the gradient
BLOCK_STRIDE = 8             # importance/hooks.py: Block Importance keeps every 8th token's states
STAGES = ("importance", "search proxy", "distillation", "eval")


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise CompactLMError(f"dtype '{dtype}': expected one of {', '.join(DTYPE_BYTES)}.")
    return DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class ModelShape:
    """An architecture with its exact parameter counts."""

    arch: Architecture
    layout: ParamLayout = field(default_factory=ParamLayout)

    @property
    def parts(self) -> dict[str, int]:
        return parameter_counts(self.arch, self.layout)

    @property
    def params(self) -> int:
        return self.parts["total"]

    @property
    def widths(self) -> tuple[int, int, int, int]:
        """(h, f, q, kv): hidden, MLP, query and key/value widths.

        For an MoE model f is the MLP width one token passes through: its top-k experts' widths plus
        the shared expert's (the activations and FLOPs per token; every expert's weights are in ``parts``).
        """
        a = self.arch
        f = a.intermediate_size or a.num_experts_per_tok * a.moe_intermediate_size + a.shared_expert_intermediate_size
        return a.hidden_size, f, a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim

    @property
    def head_params(self) -> int:
        return self.arch.vocab_size * self.arch.hidden_size

    @property
    def matmul_params(self) -> int:
        """Weights of every linear layer and the LM head (biases and norms excluded; the embedding lookup too)."""
        h, f, q, kv = self.widths
        per_layer = 2 * h * q + 2 * h * kv + 3 * h * f
        return self.arch.num_hidden_layers * per_layer + self.head_params

    @property
    def layer_params(self) -> int:
        return (self.parts["attention"] + self.parts["mlp"]) // self.arch.num_hidden_layers + 2 * self.arch.hidden_size

    @property
    def largest_unit(self) -> int:
        """Parameters of the largest FSDP unit: a decoder layer, or the root (embeddings, final norm, LM head)."""
        return max(self.layer_params, self.parts["embeddings"] + self.arch.hidden_size)


def layer_activation_bytes(shape: ModelShape, bf16: bool) -> int:
    """Bytes autograd keeps per layer and token in training (no activation checkpointing).

    6h fp32 (each of the two RMSNorms keeps its input, its fp32 normalised value and its output),
    2(q + 2kv) (the q/k/v projections and their rotated/transposed copies), 2q (the attention
    output and the o_proj input), 4f (gate and up outputs, SiLU(gate) and the product fed to
    down_proj); all but the norms' 6h are bf16 under autocast.
    """
    h, f, q, kv = shape.widths
    low = 2 if bf16 else 4
    return 6 * h * 4 + (2 * (q + 2 * kv) + 2 * q + 4 * f) * low


def layer_forward_bytes(shape: ModelShape, bytes_per: int) -> int:
    """Bytes per token alive during one layer's forward without autograd: residual, norm, q/k/v, attention, MLP."""
    h, f, q, kv = shape.widths
    return (4 * h + 2 * (q + 2 * kv) + 3 * f) * bytes_per


@dataclass(frozen=True)
class Strategy:
    """How a stage is laid out: ``parallel`` single | ddp | fsdp, the teacher replicate | shard | offload.

    ``strategy`` and ``teacher_placement`` are the values of :class:`compactlm.config.TrainArgs`.
    """

    name: str
    parallel: str
    teacher: str

    @property
    def strategy(self) -> str:
        return "fsdp" if self.parallel == "fsdp" else "ddp"

    @property
    def teacher_placement(self) -> str:
        return self.teacher


STRATEGIES = {
    "single": Strategy("single", "single", "replicate"),
    "ddp": Strategy("ddp", "ddp", "replicate"),
    "fsdp": Strategy("fsdp", "fsdp", "shard"),
    "offload": Strategy("offload", "fsdp", "offload"),
}
STRATEGY_ORDER = ("single", "ddp", "fsdp", "offload")   # cheapest (fastest, simplest) first


@dataclass(frozen=True)
class Workload:
    """What one micro-batch of each stage holds: sizes, precision and dtypes."""

    micro_batch: int = 4                 # distillation sequences per forward/backward and device
    seq_len: int = 512
    precision: str = "bf16"              # what the matmuls run in: bf16 (autocast) or fp32
    dtype: str = "float32"               # how importance/proxy/eval hold the models
    teacher_dtype: str = "float32"       # the teacher during distillation
    chunk_size: int = 512                # KD loss tokens per chunk; 0 = none
    intermediate: bool = False           # intermediate-state loss on
    importance_batch: int = 8
    seq_aggregations: int = 1            # k: sequence statistics recorded
    layer_loss: bool = True              # importance's "LM loss with layer i removed" pass
    proxy_batch: int = 8
    eval_batch: int = 8
    eval_window: int = 512
    device_type: str = "cpu"             # cpu | cuda: the runtime overhead

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"


@dataclass
class StageMemory:
    """Bytes per device of one stage under one strategy, by term."""

    stage: str
    strategy: Strategy
    terms: dict[str, int]
    world_size: int

    @property
    def total(self) -> int:
        return sum(self.terms.values())


def _shard(bytes_: int, world: int, parallel: str) -> int:
    return -(-bytes_ // world) if parallel == "fsdp" else bytes_


def distill_memory(teacher: ModelShape, student: ModelShape, work: Workload, strategy: Strategy,
                   world: int) -> StageMemory:
    """Distillation per device (see the module docstring for every term)."""
    n = work.micro_batch * work.seq_len
    p = strategy.parallel
    ns, hs, ht = student.params, student.arch.hidden_size, teacher.arch.hidden_size
    chunk = min(work.chunk_size or n, n)
    tbytes = dtype_bytes(work.teacher_dtype)
    teacher_weights = {"offload": 0, "shard": -(-teacher.params * tbytes // world) + teacher.largest_unit * tbytes,
                       "replicate": teacher.params * tbytes}[strategy.teacher]
    terms = {
        "weights": _shard(4 * ns, world, p),
        "autocast": _shard(2 * student.matmul_params, world, p) if work.bf16 else 0,
        "gradients": _shard(4 * ns, world, p),
        "optimizer": _shard(8 * ns, world, p),
        "ddp_buckets": 4 * ns if p == "ddp" and world > 1 else 0,
        "fsdp_unit": 4 * student.largest_unit if p == "fsdp" else 0,
        "activations": student.arch.num_hidden_layers * n * layer_activation_bytes(student, work.bf16),
        "kd_loss": KD_CHUNK_COPIES * chunk * student.arch.vocab_size * 4 + 4 * n * (hs + ht)
                   + (4 * n * ht * student.arch.num_hidden_layers if work.intermediate else 0),
        "teacher": teacher_weights + n * layer_forward_bytes(teacher, 2 if work.bf16 else 4),
        "runtime": RUNTIME_BYTES[work.device_type],
    }
    return StageMemory("distillation", strategy, terms, world)


def _forward_terms(model: ModelShape, work: Workload, strategy: Strategy, world: int, tokens: int,
                   logit_tokens: int) -> dict[str, int]:
    """Weights (by placement), autocast copies, one layer's live tensors and the fp32 logits of ``logit_tokens``."""
    wbytes = dtype_bytes(work.dtype)
    placement = ("offload" if strategy.teacher == "offload" else "shard" if strategy.parallel == "fsdp"
                 else "replicate")
    weights = {"offload": model.largest_unit * wbytes,
               "shard": -(-model.params * wbytes // world) + model.largest_unit * wbytes,
               "replicate": model.params * wbytes}[placement]
    cast = work.bf16 and wbytes == 4
    return {
        "weights": weights,
        "autocast": 2 * model.largest_unit if cast else 0,   # inference mode: one transient cast, no cache
        "activations": tokens * layer_forward_bytes(model, 2 if work.bf16 else 4),
        "logits": logit_tokens * model.arch.vocab_size * (8 + (2 if work.bf16 else 0)),
    }


def importance_memory(teacher: ModelShape, work: Workload, strategy: Strategy, world: int) -> StageMemory:
    a = teacher.arch
    h, f, q, _ = teacher.widths
    tokens = work.importance_batch * work.seq_len
    logit_tokens = min(tokens, logit_chunk_tokens(a.vocab_size)) if work.layer_loss else 0
    terms = _forward_terms(teacher, work, strategy, world, tokens, logit_tokens)
    terms["accumulators"] = (16 * work.seq_aggregations * a.num_hidden_layers * (f + q + 2 * h)
                             + 8 * (a.num_hidden_layers + 1) ** 2
                             + 4 * (a.num_hidden_layers + 1) * (tokens // BLOCK_STRIDE) * h
                             + 8 * tokens * max(f, q, h))          # row statistics of one site, transient
    terms["runtime"] = RUNTIME_BYTES[work.device_type]
    return StageMemory("importance", strategy, terms, world)


def proxy_memory(teacher: ModelShape, candidate: ModelShape, work: Workload, strategy: Strategy,
                 world: int) -> StageMemory:
    tokens = work.proxy_batch * work.seq_len
    terms = _forward_terms(candidate, work, strategy, world, tokens,
                           min(tokens, logit_chunk_tokens(candidate.arch.vocab_size)))
    terms["teacher"] = _forward_terms(teacher, work, strategy, world, 0, 0)["weights"]
    terms["runtime"] = RUNTIME_BYTES[work.device_type]
    return StageMemory("search proxy", strategy, terms, world)


def eval_memory(model: ModelShape, work: Workload, strategy: Strategy, world: int) -> StageMemory:
    tokens = work.eval_batch * work.eval_window
    # perplexity projects one window at a time, the held-out LM loss a chunk at a time: the larger of the two
    logit_tokens = min(tokens, max(work.eval_window, logit_chunk_tokens(model.arch.vocab_size)))
    terms = _forward_terms(model, work, strategy, world, tokens, logit_tokens)
    terms["runtime"] = RUNTIME_BYTES[work.device_type]
    return StageMemory("eval", strategy, terms, world)


def stage_memory(stage: str, teacher: ModelShape, student: ModelShape, work: Workload, strategy: Strategy,
                 world: int) -> StageMemory:
    """One stage's memory per device; ``world`` is 1 for the single strategy whatever the device count."""
    if strategy.parallel == "single" or world == 1:   # one device: nothing to shard, offload is the only lever
        world = 1
        strategy = Strategy(strategy.name, "single", "offload" if strategy.teacher == "offload" else "replicate")
    if stage == "importance":
        return importance_memory(teacher, work, strategy, world)
    if stage == "search proxy":
        return proxy_memory(teacher, student, work, strategy, world)
    if stage == "distillation":
        return distill_memory(teacher, student, work, strategy, world)
    if stage == "eval":
        return eval_memory(student, work, strategy, world)
    raise CompactLMError(f"Unknown stage '{stage}'. Available: {', '.join(STAGES)}.")
