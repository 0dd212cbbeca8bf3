"""Everything a training run needs, checked and built once before the first step (litgpt's ``setup``).

:func:`setup` validates the inputs, prepares the run directory, resolves the precision, borrows
the teacher (:func:`~compactlm.distill.teacher.frozen_teacher`), builds the loss modules, the
wrapped model (:func:`~compactlm.distill.sharding.wrap_model`: DDP, or FSDP2 sharding in
place, which is why it comes before the optimizer) and the optimizer, and loads a checkpoint to
resume from. It is a context manager: on exit, also by an exception, the state
hooks are removed, the teacher is handed back as it came and the metric loggers are closed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CompactLMError
from ..export.save import write_model_dir
from ..hardware import PrecisionChoice, autocast, choose_precision, forward_flops_per_token, peak_gflops, train_flops_per_token
from ..io import check_output_dir
from ..models import model_fingerprint
from ..parallel import DistInfo, barrier, setup_distributed
from .checkpoint import latest_checkpoint, nothing_saved, recorded_precision, remove_partial_checkpoints, resume_from
from .checks import blocks_fingerprint, check_training
from .config import LossArgs, TrainArgs, as_dict
from .intermediate import IntermediateStateLoss, layer_map_from_plan, read_prune_plan
from .losses import ChunkedLogitLoss, make_loss
from .metrics import build_loggers
from .sampler import StepSampler, set_rng_state
from .sharding import gathered_student, hand_back, load_shards, resolve_strategy, shard_teacher, wrap_model
from .student import DistillModule
from .teacher import Teacher, frozen_teacher

logger = logging.getLogger(__name__)


@dataclass
class TrainSetup:
    """One run, built once by :func:`setup`; the step, :func:`validate` and :func:`checkpoint` read it."""

    info: DistInfo
    run_dir: Path
    loss: LossArgs
    args: TrainArgs
    train_blocks: torch.Tensor                 # (N, T) token ids
    heldout: torch.Tensor | None               # (M, T) token ids
    student: nn.Module
    teacher: Teacher | None                    # None: plain fine-tuning
    module: DistillModule                      # student + losses, unwrapped: validation, checkpoints, export
    model: nn.Module                           # ``module`` as the step calls it (itself, DDP, or FSDP: ``module``)
    trainable: dict[str, nn.Module]            # what a checkpoint holds
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    sampler: StepSampler
    choice: PrecisionChoice
    settings: dict                             # trainer_state.json "settings"; RESUME_KEYS must match on resume
    total_steps: int
    flops_per_token: int                       # 6N student (+ 2N teacher), see compactlm.hardware
    peak: float | None                         # measured GEMM GFLOP/s of all processes, the MFU yardstick
    tokenizer: object = None
    student_dir: Path | str | None = None
    provenance: dict = field(default_factory=dict)
    loggers: list = field(default_factory=list)
    start_step: int = 0
    elapsed: float = 0.0                       # training seconds of the sessions before this one (resume)
    caller_student: nn.Module | None = None    # FSDP: the caller's plain student; ``student`` is its sharded copy
    handed_back: bool = False                  # FSDP: the trained weights are back in ``caller_student``
    strategy: str = "ddp"                      # ddp (also one process) or fsdp: see sharding.resolve_strategy

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def distilling(self) -> bool:
        return self.teacher is not None

    @property
    def seq_len(self) -> int:
        return self.train_blocks.shape[1]

    @property
    def tokens_per_step(self) -> int:
        return self.args.batch_size * self.seq_len

    @property
    def kd_scale(self) -> float:
        """Weight of the summed logit loss: one over the global token count of a step."""
        return 1.0 / self.tokens_per_step if self.distilling else 0.0

    @property
    def clm_scale(self) -> float:
        """Weight of the summed LM loss: ``clm_weight`` over the global count of labelled tokens."""
        return self.loss.clm_weight / (self.args.batch_size * (self.seq_len - 1))

    @property
    def uses_intermediate(self) -> bool:
        return self.module.intermediate is not None

    def amp(self) -> contextlib.AbstractContextManager:
        """The run's autocast (bf16 or none) for the forward passes of teacher and student."""
        return autocast(self.device, self.choice.bf16)

    def say(self, *args) -> None:
        """Log on rank 0, which speaks for all processes."""
        if self.info.is_main:
            logger.info(*args)

    def log(self, metrics: dict, step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def hand_back(self) -> None:
        """FSDP trains a sharded copy (``fully_shard`` changes a module in place): its weights go back into the
        caller's plain student on every process, so the student is trained in place under every strategy. A collective."""
        if self.caller_student is not None and not self.handed_back:
            hand_back(self.student, self.caller_student)
            self.handed_back = True

    def export_model(self) -> nn.Module | None:
        """The student to export on rank 0 (None elsewhere): under FSDP, before :meth:`hand_back` a gathered CPU copy
        (a collective), after it the caller's student, which then holds the weights."""
        if self.handed_back:
            return self.caller_student if self.info.is_main else None
        if self.strategy == "fsdp":
            return gathered_student(self.module, self.student, self.info)
        return self.student if self.info.is_main else None

    def export(self, dest: Path, model: nn.Module | None = None) -> None:
        """Write ``model`` (default: the student) as a plain Hugging Face model directory into ``dest``."""
        write_model_dir(dest, model if model is not None else self.student, self.tokenizer, plan=self.student_dir,
                        provenance={**self.provenance, "distill": self.settings})


def _prepare_run_dir(run_dir: Path, info: DistInfo, resume: bool, overwrite: bool, student_dir) -> None:
    """Refuse what would be lost, then (rank 0) clear the directory of a fresh run and stale partial checkpoints."""
    if resume and latest_checkpoint(run_dir) is None:
        earlier = run_dir.is_dir() and any(run_dir.iterdir())
        raise CompactLMError(f"--resume: no checkpoint in '{run_dir}/checkpoints'. Run without --resume to start afresh"
                             f"{' (with --overwrite: it holds an earlier run)' if earlier else ''}.")
    if not resume:
        if not overwrite and nothing_saved(run_dir):
            logger.info("'%s' holds only what a run stopped before its first checkpoint left; starting afresh", run_dir)
            overwrite = True
        check_output_dir(run_dir, overwrite, inputs=[student_dir], nested=True)  # the CLI refuses nesting itself
    barrier(info)
    if info.is_main:
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(run_dir)


def _layer_map(student: nn.Module, teacher: nn.Module | None, loss: LossArgs, student_dir) -> list[int] | None:
    """Teacher layer of every student layer when the intermediate-state loss is on (auto: depth-pruned), else None."""
    if teacher is None:
        return None
    s_layers, t_layers = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    if loss.intermediate == "off" or (loss.intermediate == "auto" and s_layers >= t_layers):
        return None
    plan = read_prune_plan(student_dir) if student_dir is not None else None
    return layer_map_from_plan(plan, s_layers, t_layers, loss.layer_map)


def _intermediate_loss(student: nn.Module, teacher: nn.Module, student_dir, seed: int,
                       device: torch.device) -> IntermediateStateLoss:
    plan = read_prune_plan(student_dir) if student_dir is not None else None
    hidden_kept = ((plan or {}).get("kept") or {}).get("hidden")
    torch.manual_seed(seed)
    return IntermediateStateLoss(student.config.hidden_size, teacher.config.hidden_size, hidden_kept).to(device)


def _resume(s: TrainSetup) -> None:
    """Weights, optimizer and RNG from the newest checkpoint; the step alone fixes the LR and the data position."""
    read_shards = None
    if s.strategy == "fsdp":
        read_shards = functools.partial(load_shards, module=s.module, optimizer=s.optimizer)
    ckpt, state, rngs = resume_from(s.run_dir, s.settings, s.trainable, s.optimizer, s.info.is_main, read_shards)
    set_rng_state(rngs[s.info.rank] if s.info.rank < len(rngs) else rngs[0])
    s.start_step, s.elapsed = state["step"], state.get("elapsed_s", 0.0)
    s.say("resuming from %s (step %d of %d)", ckpt, s.start_step, s.total_steps)


def _teacher_sharding(strategy: str, args: TrainArgs, info: DistInfo):
    """How ``frozen_teacher`` shards the teacher under FSDP (``teacher_placement``), or None: whole on each device."""
    if strategy != "fsdp" or args.teacher_placement == "replicate":
        return None
    return lambda model, dtype: shard_teacher(model, info, dtype, offload=args.teacher_placement == "offload")


@contextlib.contextmanager
def setup(student: nn.Module, train_blocks: torch.Tensor, run_dir: Path, *, teacher: nn.Module | None,
          loss: LossArgs, args: TrainArgs, tokenizer=None, heldout: torch.Tensor | None = None,
          student_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
          provenance: dict | None = None) -> Iterator[TrainSetup]:
    """Check every input, build the run (see the module docstring) and undo what it borrowed on exit."""
    info = setup_distributed(args.device)
    check_training(train_blocks, heldout, teacher, student, loss, args, info)
    if loss.intermediate == "on" and teacher is None:
        raise CompactLMError("--intermediate on needs a teacher; fine-tuning has no intermediate states to match.")
    _prepare_run_dir(run_dir, info, resume, overwrite, student_dir)
    fingerprints = {"teacher_fingerprint": model_fingerprint(teacher) if teacher is not None else None,
                    "data_fingerprint": blocks_fingerprint(train_blocks, heldout)}
    total_steps = args.max_steps or train_blocks.shape[0] // args.batch_size
    device, seq_len = info.device, train_blocks.shape[1]
    # auto resolves once per run; a resumed run keeps the precision its checkpoints were made in
    recorded = recorded_precision(run_dir) if resume else None
    choice = choose_precision(recorded if recorded in ("bf16", "fp32") else args.precision, student.config, device,
                              next(student.parameters()).dtype)
    strategy = resolve_strategy(args, info, student, teacher, train_blocks.shape[1], choice.precision)
    caller = None
    if strategy == "fsdp":   # fully_shard converts a module in place: train a sharded copy; the caller's stays put
        caller, student = student, copy.deepcopy(student)
    student.to(device).train()   # fp32 master weights, trained in place: the student is the product
    layer_map = _layer_map(student, teacher, loss, student_dir)
    with contextlib.ExitStack() as stack:
        frozen = (stack.enter_context(frozen_teacher(teacher, device, args.teacher_dtype, layer_map,
                                                     shard=_teacher_sharding(strategy, args, info)))
                  if teacher is not None else None)
        intermediate = None
        if layer_map is not None:
            intermediate = _intermediate_loss(student, teacher, student_dir, args.seed, device)
            if info.is_main:
                logger.info("intermediate-state loss on %d matched layers (+ embeddings): student j <- teacher %s",
                            len(layer_map), layer_map)
        kd_loss = make_loss(loss.loss, loss.temperature, loss.top_k, loss.js_beta) if teacher is not None else None
        s_layers = list(range(student.config.num_hidden_layers)) if layer_map is not None else None
        module = DistillModule(student, ChunkedLogitLoss(kd_loss, loss.chunk_size or None), intermediate, s_layers)
        stack.enter_context(module.recording())
        trainable = {"student": student, **({"intermediate": intermediate} if intermediate is not None
                                            and intermediate.projection is not None else {})}
        peak = peak_gflops(choice, student.config, device, args.micro_batch_size * seq_len)
        flops = train_flops_per_token(student) + (forward_flops_per_token(teacher) if teacher is not None else 0)
        model = wrap_model(module, info, strategy, student=student, bf16=choice.bf16)  # FSDP: before the optimizer
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
        settings = {**as_dict(loss, args), "warmup_steps": args.warmup(total_steps), "total_steps": total_steps,
                    "num_blocks": train_blocks.shape[0], "seq_len": seq_len, "distill": teacher is not None,
                    "layer_map": layer_map, "precision_used": choice.precision, "gemm_gflops": choice.gflops,
                    "device_kind": choice.device, **fingerprints, "strategy": strategy}
        s = TrainSetup(info=info, run_dir=run_dir, loss=loss, args=args, train_blocks=train_blocks, heldout=heldout,
                       student=student, teacher=frozen, module=module, model=model, trainable=trainable,
                       params=params, optimizer=optimizer, choice=choice, settings=settings, total_steps=total_steps,
                       sampler=StepSampler(train_blocks.shape[0], args.batch_size, args.micro_batch_size, args.seed,
                                           info),
                       flops_per_token=flops, peak=peak * info.world_size if peak else None, tokenizer=tokenizer,
                       student_dir=student_dir, provenance=provenance or {}, strategy=strategy, caller_student=caller)
        if resume:
            _resume(s)
        if info.is_main:
            s.loggers = build_loggers(args.log_to, run_dir, settings, s.start_step if resume else None)
            stack.callback(lambda: [lg.close() for lg in s.loggers])
        yield s
