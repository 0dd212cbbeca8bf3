"""Verbs ``distill`` (retrain a student against its teacher) and ``finetune`` (plain LM loss, "teacher correction").

Both run under ``torchrun --nproc_per_node N -m compactlm ...`` or ``accelerate launch``: every
process loads the models and the same token blocks, the trainer splits each global batch. Rank 0
holds the lock on ``--out`` (:mod:`compactlm.lock`) for the job: another job there is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
from pathlib import Path

from ..config import DEFAULT_MODEL, DataSection, LossArgs, TrainArgs
from ..data import load_blocks
from ..distill import make_loss, train
from ..distill.checkpoint import nothing_saved
from ..distill.checks import position_problems
from ..distill.config import parse_tokens, steps_for_tokens
from ..errors import CompactLMError
from ..io import check_inputs_outside, check_output_dir
from ..lock import output_lock
from ..sizing import check_distill
from .common import DATA_FLAGS, add_trust_args, model_from_args, refuse_misfit
from .flags import add_flags, from_flags

# finetune trains with the plain LM loss: the logit-loss options do not apply
NOT_FOR_FINETUNE = ("loss", "temperature", "top_k", "js_beta", "clm_weight", "intermediate", "layer_map")


def _add_common(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("data")
    add_flags(group, DataSection, skip=("seed",), names=DATA_FLAGS)
    group.add_argument("--tokens", type=parse_tokens, default=parse_tokens("400K"),
                       help="training token budget, e.g. 400K, 2M; more than the text holds means several passes (default: 400K)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, metrics.jsonl, and the final HF export")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out (same settings)")
    add_trust_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="retrain a pruned student against its teacher (knowledge distillation)",
                       description="Logit distillation (forward KL by default), plus intermediate states for "
                                   "depth-pruned students; exports a standard Hugging Face checkpoint to --out.")
    p.add_argument("--teacher", default=DEFAULT_MODEL, help="teacher model (default: %(default)s)")
    p.add_argument("--student", required=True, help="student checkpoint dir (e.g. `compactlm prune` output)")
    p.add_argument("--no-plan-check", action="store_true",
                   help="do not refuse a run that `compactlm plan` finds too large for the device's memory")
    _add_common(p)
    add_flags(p.add_argument_group("loss"), LossArgs)
    add_flags(p.add_argument_group("training"), TrainArgs)
    p.set_defaults(func=run_distill)

    p = sub.add_parser("finetune", help="fine-tune a model with the plain LM loss (teacher correction)",
                       description="Next-token cross-entropy with the distillation trainer; docs/method.md §4 uses it to "
                                   "adapt the teacher to the distillation data before pruning.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model to fine-tune (default: %(default)s)")
    _add_common(p)
    add_flags(p.add_argument_group("loss"), LossArgs, skip=NOT_FOR_FINETUNE)
    add_flags(p.add_argument_group("training"), TrainArgs)
    p.set_defaults(func=run_finetune)


def _quiet_other_ranks() -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("compactlm").setLevel(logging.WARNING)


def _blocks(args: argparse.Namespace, tokenizer, train_args: TrainArgs, *models):
    """Token budget → training blocks and step count; a budget above the text's size means several passes."""

    refuse_misfit([p for m in models for p in position_problems(args.seq_len, m.config)])
    data = from_flags(DataSection, args, names=DATA_FLAGS, seed=0)   # validated as a recipe's data section
    if args.tokens < args.seq_len * train_args.batch_size:
        raise CompactLMError(f"--tokens {args.tokens:,} is less than one batch ({train_args.batch_size} x {args.seq_len} "
                             f"tokens). Raise --tokens or lower --batch-size/--seq-len.")
    blocks = load_blocks(data.source, tokenizer, seq_len=data.seq_len, heldout_samples=data.heldout_samples,
                         seed=data.seed, text_field=data.text_field, dataset_config=data.config, split=data.split)
    wanted = math.ceil(args.tokens / args.seq_len)
    train = blocks.train[:wanted]  # the selection is a seeded permutation: a prefix is a smaller random sample
    steps = train_args.max_steps or steps_for_tokens(args.tokens, train_args.batch_size, args.seq_len)
    if wanted > train.shape[0]:
        logging.getLogger(__name__).info("%s holds %d blocks of %d tokens; %s tokens means %.1f passes",
                                         args.source, train.shape[0], args.seq_len, f"{args.tokens:,}", wanted / train.shape[0])
    meta = {**blocks.describe(), "train_samples": int(train.shape[0]), "token_budget": args.tokens}
    return train, blocks.heldout, dataclasses.replace(train_args, max_steps=steps), meta


def _summary(verb: str, result, args: argparse.Namespace) -> int:
    if int(os.environ.get("RANK", "0")) != 0:
        return result.exit_code
    m = result.metrics
    if result.interrupted:
        print(f"{verb}: interrupted at step {result.step}/{result.total_steps}; checkpoint saved in "
              f"{result.run_dir}/checkpoints. Continue with the same command plus --resume.")
        return result.exit_code
    ppl = f", held-out ppl {m['val_ppl']:.2f}" if "val_ppl" in m else ""
    print(f"{verb}: {result.tokens:,} tokens in {result.step} steps{ppl} -> {result.run_dir}")
    return 0


def _check_out(args: argparse.Namespace, inputs: list) -> None:
    """The run directory, checked before any model loads; nothing is deleted until training starts."""

    if args.resume:
        check_inputs_outside(Path(args.out), inputs)
    else:
        check_output_dir(args.out, args.overwrite or nothing_saved(args.out), inputs=inputs)


def _hold_out(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The lock on --out for the whole job: taken by rank 0 alone, since every rank of a torchrun/accelerate job
    shares the one run directory (rank 0 writes it) and the ranks must not refuse each other."""
    return output_lock(args.out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()


def run_distill(args: argparse.Namespace) -> int:
    _quiet_other_ranks()
    with _hold_out(args):   # a second process on the same --out is refused here, before anything loads
        return _run_distill(args)


def _run_distill(args: argparse.Namespace) -> int:
    loss_args, train_args = from_flags(LossArgs, args), from_flags(TrainArgs, args)
    make_loss(loss_args.loss, loss_args.temperature, loss_args.top_k, loss_args.js_beta)  # fail before loading models
    _check_out(args, [args.teacher, args.student, args.source])
    if not args.no_plan_check:
        check_distill(args.teacher, args.student, train_args, loss_args, args.seq_len,
                      trust_remote_code=args.trust_remote_code)
    teacher, tokenizer = model_from_args(args, args.teacher, device="cpu")
    student, student_tok = model_from_args(args, args.student, device="cpu")
    train_blocks, heldout, train_args, data_meta = _blocks(args, tokenizer, train_args, teacher, student)
    result = train(student, train_blocks, args.out, teacher=teacher, tokenizer=student_tok or tokenizer,
                   heldout=heldout, loss=loss_args, args=train_args, student_dir=args.student, resume=args.resume,
                   overwrite=args.overwrite, provenance={"teacher": args.teacher, "student": args.student, "data": data_meta})
    return _summary("distill", result, args)


def run_finetune(args: argparse.Namespace) -> int:
    _quiet_other_ranks()
    with _hold_out(args):
        return _run_finetune(args)


def _run_finetune(args: argparse.Namespace) -> int:
    loss_args = from_flags(LossArgs, args, clm_weight=1.0, intermediate="off")
    train_args = from_flags(TrainArgs, args)
    _check_out(args, [args.model, args.source])
    model, tokenizer = model_from_args(args, device="cpu")
    train_blocks, heldout, train_args, data_meta = _blocks(args, tokenizer, train_args, model)
    student_dir = args.model if os.path.isdir(args.model) else None
    result = train(model, train_blocks, args.out, tokenizer=tokenizer, heldout=heldout, loss=loss_args, args=train_args,
                   student_dir=student_dir, resume=args.resume, overwrite=args.overwrite,
                   provenance={"model": args.model, "data": data_meta, "verb": "finetune"})
    return _summary("finetune", result, args)
