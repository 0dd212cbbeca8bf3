"""The training recipe, top to bottom: distillation when a teacher is given, plain LM fine-tuning otherwise.

One optimizer step reads ``batch_size`` blocks (all processes together), split into
micro-batches of ``micro_batch_size``; each micro-batch runs the frozen teacher (no grad),
then the student and the chunked loss, and backpropagates ``loss / global token count``
so that accumulation and data parallelism give the gradient of the global-batch mean.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..arch import adapter_for
from ..errors import CompactLMError, Terminated
from ..hardware import autocast, choose_precision, forward_flops_per_token, mfu, peak_gflops, train_flops_per_token
from ..importance.scores import model_fingerprint
from ..io import check_output_dir
from ..progress import progress
from .checkpoint import (CheckpointMismatch, latest_checkpoint, list_checkpoints, load_checkpoint, nothing_saved,
                         read_state, remove_partial_checkpoints, save_checkpoint)
from .config import LossArgs, TrainArgs, as_dict, lr_at
from .distributed import (StepSampler, all_reduce_sum, barrier, gather_objects, rng_state,
                          set_rng_state, setup_distributed)
from .intermediate import IntermediateStateLoss, StateRecorder, layer_map_from_plan, read_prune_plan
from .losses import IGNORE_INDEX, ChunkedLogitLoss, make_loss
from .metrics import build_loggers
from .student import DistillModule, export_student, publish_export
from .validate import blocks_fingerprint, check_training

logger = logging.getLogger(__name__)

# Settings that change the arithmetic: a resumed run must use the same ones.
RESUME_KEYS = ("loss", "temperature", "top_k", "js_beta", "clm_weight", "intermediate", "layer_map", "lr", "min_lr",
               "warmup_steps", "weight_decay", "batch_size", "grad_clip", "precision", "teacher_dtype", "seed",
               "total_steps", "num_blocks", "seq_len", "distill", "teacher_fingerprint", "data_fingerprint")


class TrainingDiverged(CompactLMError):
    """The loss or gradient became NaN/inf; the weights of the last good checkpoint are kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    tokens: int
    interrupted: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    signum: int | None = None
    """the signal that stopped an interrupted run (SIGINT 2, SIGTERM 15)"""
    precision: dict = field(default_factory=dict)
    """the resolved precision and the measured GEMM rates (``hardware.PrecisionChoice.to_dict()``)"""
    tokens_per_second: float = 0.0
    """training tokens per second of the optimizer steps of this session (validation and checkpoints excluded)"""
    mfu: float | None = None
    """model-FLOP utilisation of those steps against the measured GEMM rate of the precision used"""

    @property
    def exit_code(self) -> int:
        """What the CLI exits with: 0, or 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + (self.signum or signal.SIGINT) if self.interrupted else 0

    def stop_if_interrupted(self) -> None:
        """Raise the signal that stopped the run (its checkpoint is written) for callers that chain runs."""
        if self.interrupted:
            raise Terminated(self.signum) if self.signum == signal.SIGTERM else KeyboardInterrupt


class _StopRequest(contextlib.AbstractContextManager):
    """SIGINT/SIGTERM set a flag: the loop checkpoints after the current step and returns. A second signal stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, _frame) -> None:
        if self.requested:
            raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt
        self.signum = signum
        logger.warning("%s received: saving a checkpoint after this step (send again to stop now)",
                       signal.Signals(signum).name)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _labels(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token labels (B, T) with -100 at the last position, and the (B, T) token mask (packed blocks: all real)."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    return labels, torch.ones(ids.shape, dtype=torch.float32, device=ids.device)


def _recorded_precision(run_dir: Path) -> str | None:
    """The precision the newest readable checkpoint was trained in (``auto`` is resolved once per run)."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            return read_state(ckpt)["settings"].get("precision_used")
        except CompactLMError:
            continue
    return None


def _resume_from(run_dir: Path, settings: dict, modules: dict[str, nn.Module], optimizer, is_main: bool):
    """The newest checkpoint that loads: a damaged newest one is set aside (with a warning) for the one before."""
    found = list_checkpoints(run_dir)
    for i, ckpt in enumerate(reversed(found)):
        try:
            state = read_state(ckpt)
            changed = [f"{k}: {state['settings'].get(k)!r} -> {settings.get(k)!r}" for k in RESUME_KEYS
                       if state["settings"].get(k) != settings.get(k)]
            if changed:
                raise CheckpointMismatch(f"Cannot resume from '{ckpt}': settings differ ({'; '.join(changed)}). "
                                         f"Use the original settings, teacher and data, or start afresh without "
                                         f"--resume.")
            state, rngs = load_checkpoint(ckpt, modules=modules, optimizer=optimizer)
            return ckpt, state, rngs
        except CheckpointMismatch:
            raise
        except CompactLMError as err:   # a damaged file: the checkpoint before it may be whole
            if i == len(found) - 1:
                raise
            logger.warning("checkpoint %s cannot be loaded (%s); falling back to the one before it", ckpt, err)
            if is_main:
                ckpt.rename(ckpt.with_name(f".{ckpt.name}.damaged-{int(time.time())}"))
    raise CompactLMError(f"--resume: no checkpoint in '{run_dir}/checkpoints'. Run without --resume to start afresh.")


def _teacher_forward(body: nn.Module, recorder: StateRecorder | None, ids: torch.Tensor):
    with torch.no_grad():
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state   # (B, T, H_t)
    return hidden, (recorder.pop() if recorder is not None else None)


def train(student: nn.Module, train_blocks: torch.Tensor, out_dir: str | Path, *, teacher: nn.Module | None = None,
          tokenizer=None, heldout: torch.Tensor | None = None, loss: LossArgs | None = None,
          args: TrainArgs | None = None, student_dir: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, provenance: dict | None = None,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``student`` on ``train_blocks`` (N, T) and export it to ``out_dir``.

    With a ``teacher`` this is knowledge distillation (METHOD.md §4); without, plain next-token
    fine-tuning. ``student_dir`` is where the student came from: its ``prune_plan.json`` gives
    the layer matching and is copied into the export. ``resume`` continues from the newest
    checkpoint in ``out_dir/checkpoints`` bit-identically. ``on_step(step)`` runs after each step.
    The student is trained in place; the teacher is moved to the device (and bf16) in place.
    """
    loss, args = loss or LossArgs(), args or TrainArgs()
    info = setup_distributed(args.device)
    check_training(train_blocks, heldout, teacher, student, loss, args, info)
    run_dir = Path(out_dir)
    if resume and latest_checkpoint(run_dir) is None:
        raise CompactLMError(f"--resume: no checkpoint in '{run_dir}/checkpoints'. Run without --resume to start afresh"
                             f"{' (with --overwrite: it holds an earlier run)' if run_dir.is_dir() and any(run_dir.iterdir()) else ''}.")
    if not resume:
        if not overwrite and nothing_saved(run_dir):
            logger.info("'%s' holds only what a run stopped before its first checkpoint left; starting afresh", run_dir)
            overwrite = True
        check_output_dir(run_dir, overwrite, inputs=[student_dir])
    settings_fingerprints = {"teacher_fingerprint": model_fingerprint(teacher) if teacher is not None else None,
                             "data_fingerprint": blocks_fingerprint(train_blocks, heldout)}
    barrier(info)
    if info.is_main:
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(run_dir)
    seq_len = train_blocks.shape[1]
    total_steps = args.max_steps or train_blocks.shape[0] // args.batch_size
    warmup = args.warmup(total_steps)
    tokens_per_step = args.batch_size * seq_len
    distilling = teacher is not None
    say = logger.info if info.is_main else (lambda *_a, **_k: None)  # rank 0 speaks for all
    device = info.device

    # ---- models: fp32 master weights for the student; frozen teacher, optionally bf16 ---------------
    # auto resolves once per run; a resumed run keeps the precision its checkpoints were made in
    recorded = _recorded_precision(run_dir) if resume else None
    choice = choose_precision(recorded if recorded in ("bf16", "fp32") else args.precision, student.config, device,
                              next(student.parameters()).dtype)
    amp = autocast(device, choice.bf16)
    student.to(device).train()
    t_body = t_head = t_recorder = None
    if distilling:
        t_dtype = torch.bfloat16 if args.teacher_dtype == "bf16" or (
            args.teacher_dtype == "auto" and choice.bf16) else torch.float32
        teacher.to(device=device, dtype=t_dtype).eval().requires_grad_(False)  # in place: the caller's teacher
        t_adapter = adapter_for(teacher.config)
        t_body, t_head = t_adapter.decoder_body(teacher), teacher.get_submodule(t_adapter.lm_head)

    # ---- intermediate states: on for depth-pruned students (auto), matched through the prune plan -----
    plan = read_prune_plan(student_dir) if student_dir is not None else None
    s_layers = student.config.num_hidden_layers
    use_is = distilling and (loss.intermediate == "on" or (
        loss.intermediate == "auto" and s_layers < teacher.config.num_hidden_layers))
    if loss.intermediate == "on" and not distilling:
        raise CompactLMError("--intermediate on needs a teacher; fine-tuning has no intermediate states to match.")
    intermediate, layer_map = None, None
    if use_is:
        layer_map = layer_map_from_plan(plan, s_layers, teacher.config.num_hidden_layers, loss.layer_map)
        hidden_kept = ((plan or {}).get("kept") or {}).get("hidden")
        torch.manual_seed(args.seed)
        intermediate = IntermediateStateLoss(student.config.hidden_size, teacher.config.hidden_size, hidden_kept).to(device)
        t_recorder = StateRecorder(teacher, layer_map)
        say("intermediate-state loss on %d matched layers (+ embeddings): student j <- teacher %s",
            len(layer_map), layer_map)
    chunk = loss.chunk_size or None
    logit_loss = ChunkedLogitLoss(make_loss(loss.loss, loss.temperature, loss.top_k, loss.js_beta) if distilling else None, chunk)
    module = DistillModule(student, logit_loss, intermediate, list(range(s_layers)) if use_is else None)
    trainable = {"student": student, **({"intermediate": intermediate} if intermediate is not None
                                        and intermediate.projection is not None else {})}
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    settings = {**as_dict(loss, args), "warmup_steps": warmup, "total_steps": total_steps,
                "num_blocks": train_blocks.shape[0], "seq_len": seq_len, "distill": distilling, "layer_map": layer_map,
                "precision_used": choice.precision, "gemm_gflops": choice.gflops, "device_kind": choice.device,
                **settings_fingerprints}

    # ---- resume: weights, optimizer, RNG; the step alone fixes the LR and the data position ------------
    start_step, elapsed = 0, 0.0
    if resume:
        ckpt, state, rngs = _resume_from(run_dir, settings, trainable, optimizer, info.is_main)
        set_rng_state(rngs[info.rank] if info.rank < len(rngs) else rngs[0])
        start_step, elapsed = state["step"], state.get("elapsed_s", 0.0)
        say("resuming from %s (step %d of %d)", ckpt, start_step, total_steps)
    model: nn.Module = module
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = StepSampler(train_blocks.shape[0], args.batch_size, args.micro_batch_size, args.seed, info)
    loggers = build_loggers(args.log_to, run_dir, settings, start_step if resume else None) if info.is_main else []
    kd_scale = 1.0 / tokens_per_step if distilling else 0.0
    clm_scale = loss.clm_weight / (args.batch_size * (seq_len - 1))

    def log(metrics: dict, step: int) -> None:
        for lg in loggers:
            lg.log(metrics, step)

    def validate(step: int) -> dict[str, float]:
        """Held-out KD loss and student perplexity (and the teacher's, at step 0); every process does its share."""
        if heldout is None:
            return {}
        rows = heldout[info.rank::info.world_size]
        sums = torch.zeros(5, dtype=torch.float64, device=device)  # kd, clm, kd tokens, clm tokens, teacher clm
        module.eval()
        with torch.no_grad(), amp:
            for start in range(0, rows.shape[0], args.micro_batch_size):
                ids = rows[start:start + args.micro_batch_size].to(device)
                labels, mask = _labels(ids)
                t_hidden, t_states = _teacher_forward(t_body, t_recorder, ids) if distilling else (None, None)
                out = module(ids, t_hidden, t_head, t_states, labels, mask, 1.0 if distilling else 0.0, 1.0)
                t_clm = (ChunkedLogitLoss(None, chunk)(t_hidden.flatten(0, 1), t_head, None, None, labels.flatten(),
                                                       mask.flatten(), 0.0, 1.0).clm_sum if distilling and step == 0 else 0.0)
                sums += torch.tensor([float(out["kd_sum"]), float(out["clm_sum"]), mask.sum().item(),
                                      (labels != IGNORE_INDEX).sum().item(), float(t_clm)], dtype=torch.float64, device=device)
        module.train()
        kd, clm, n_kd, n_clm, t_clm = all_reduce_sum(sums, info).tolist()
        metrics = {"val_lm_loss": clm / n_clm, "val_ppl": math.exp(min(clm / n_clm, 50.0))}
        if distilling:
            metrics["val_kd"] = kd / n_kd
            if step == 0:
                metrics["teacher_val_ppl"] = math.exp(min(t_clm / n_clm, 50.0))
        log(metrics, step)
        say("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics

    def export(dest: Path) -> None:
        export_student(student, tokenizer, dest, plan_dir=student_dir,
                       provenance={**(provenance or {}), "distill": settings})

    def checkpoint(step: int) -> None:
        rngs = gather_objects(rng_state(), info)  # collective: every process takes part
        if info.is_main:
            state = {"settings": settings, "tokens": step * tokens_per_step, "elapsed_s": elapsed + time.time() - t0}
            path = save_checkpoint(run_dir, step, modules=trainable, optimizer=optimizer, state=state, rng=rngs,
                                   keep=args.keep_checkpoints, export=export if args.export_checkpoints else None)
            say("checkpoint %s", path)
        barrier(info)

    # ---- the loop -------------------------------------------------------------------------------------
    t0 = time.time()
    last: dict[str, float] = {}
    saved_step = start_step if resume else -1
    accumulation = sampler.accumulation
    # model FLOPs per training token: 6N for the student (+ 2N for the teacher's forward), see compactlm.hardware
    flops_per_token = train_flops_per_token(student) + (forward_flops_per_token(teacher) if distilling else 0)
    peak = peak_gflops(choice, student.config, device, args.micro_batch_size * seq_len)
    peak = peak * info.world_size if peak else None
    step_time, step_tokens = 0.0, 0

    def throughput() -> dict:
        rate = step_tokens / step_time if step_time else 0.0
        return {"precision": choice.to_dict(), "tokens_per_second": rate,
                "mfu": mfu(flops_per_token, rate, peak) if peak and rate else None}
    with _StopRequest() as stop, progress(total=total_steps * tokens_per_step, initial=start_step * tokens_per_step,
                                          unit="tok", unit_scale=True, desc="distill" if distilling else "finetune") as bar:
        if start_step == 0:
            last.update(validate(0))
        for step in range(start_step, total_steps):
            t_step = time.time()
            lr = lr_at(step, total_steps, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, kd, clm, is, alpha
            for micro in range(accumulation):
                ids = train_blocks[sampler.indices(step, micro)].to(device)   # (micro, T)
                labels, mask = _labels(ids)
                sync = contextlib.nullcontext() if micro == accumulation - 1 or not info.distributed else model.no_sync()
                with sync:
                    with amp:
                        t_hidden, t_states = _teacher_forward(t_body, t_recorder, ids) if distilling else (None, None)
                        out = model(ids, t_hidden, t_head, t_states, labels, mask, kd_scale, clm_scale)
                    # DDP averages gradients over processes; the loss is already a share of the global mean.
                    (out["loss"] * info.world_size).backward()
                zero = out["loss"].new_zeros(())
                sums += torch.stack([out["loss"].detach(), out["kd_sum"], out["clm_sum"], out.get("is_sum", zero),
                                     out.get("alpha", zero)]).double()
            sums = all_reduce_sum(sums, info)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else math.inf)
            if not (math.isfinite(sums[0].item()) and math.isfinite(grad_norm.item())):
                good = latest_checkpoint(run_dir)
                raise TrainingDiverged(
                    f"Training diverged at step {step + 1}: loss {sums[0].item()}, gradient norm {grad_norm.item()}. "
                    f"No update was applied; the last good checkpoint is {good or 'none (no checkpoint yet)'}. "
                    f"Lower --lr or use --precision fp32, then --resume.")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            dt = time.time() - t_step
            step_time, step_tokens = step_time + dt, step_tokens + tokens_per_step
            last = {"loss": sums[0].item(), "lr": lr, "grad_norm": grad_norm.item(), "tokens": done * tokens_per_step,
                    "tok_per_s": tokens_per_step / dt}
            if peak:
                last["mfu"] = mfu(flops_per_token, tokens_per_step / dt, peak)
            if distilling:
                last["kd"] = sums[1].item() / tokens_per_step
            if loss.clm_weight:
                last["lm_loss"] = sums[2].item() / (args.batch_size * (seq_len - 1))
            if intermediate is not None:
                last.update(is_loss=sums[3].item() / tokens_per_step, alpha=sums[4].item() / accumulation / info.world_size)
            log(last, done)
            bar.update(tokens_per_step)
            bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}")
            stop_now = all_reduce_sum(torch.tensor([float(stop.requested)], device=device), info).item() > 0
            if heldout is not None and ((args.val_every and done % args.val_every == 0) or done == total_steps):
                last.update(validate(done))
            if stop_now or done == total_steps or (args.checkpoint_every and done % args.checkpoint_every == 0):
                checkpoint(done)
                saved_step = done
            if on_step is not None:
                on_step(done)
            if stop_now:
                logger.warning("stopped at step %d of %d; resume with --resume", done, total_steps)
                for lg in loggers:
                    lg.close()
                return TrainResult(run_dir, done, total_steps, done * tokens_per_step, interrupted=True, metrics=last,
                                   signum=stop.signum, **throughput())
        if saved_step != total_steps:
            checkpoint(total_steps)
    if info.is_main:
        publish_export(run_dir, export)
        say("exported the student to %s", run_dir)
    barrier(info)
    for lg in loggers:
        lg.close()
    return TrainResult(run_dir, total_steps, total_steps, total_steps * tokens_per_step, metrics=last, **throughput())


def distill(student: nn.Module, teacher: nn.Module, train_blocks: torch.Tensor, out_dir: str | Path, **kwargs) -> TrainResult:
    """Knowledge distillation of ``student`` from ``teacher`` (see :func:`train` for the options)."""
    return train(student, train_blocks, out_dir, teacher=teacher, **kwargs)


def finetune(model: nn.Module, train_blocks: torch.Tensor, out_dir: str | Path, *, loss: LossArgs | None = None,
             **kwargs) -> TrainResult:
    """Plain next-token fine-tuning ("teacher correction", METHOD.md §4) with the same trainer."""
    loss = loss or LossArgs(clm_weight=1.0, intermediate="off")
    return train(model, train_blocks, out_dir, teacher=None, loss=loss, **kwargs)
