"""The one config layer: option classes validate YAML, Python and CLI alike; flags derive from the fields."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from pydantic import ValidationError

from compactlm.cli import build_parser, main
from compactlm.cli.flags import add_flags, from_flags
from compactlm.config import (
    AXES,
    ArchitectureArgs,
    DistillSection,
    LossArgs,
    Recipe,
    SearchArgs,
    SearchSpaceArgs,
    TrainArgs,
    validate,
)
from compactlm.errors import CompactLMError


def test_every_axis_is_spelled_as_in_the_hugging_face_config():
    from transformers import LlamaConfig, Qwen2MoeConfig

    dense, moe = LlamaConfig(), Qwen2MoeConfig()   # the MoE axes are Qwen2-MoE's names (Mixtral's: adapter config_names)
    assert all(hasattr(dense, axis) or hasattr(moe, axis) for axis in AXES)
    assert [f.name for f in dataclasses.fields(ArchitectureArgs)] == list(AXES)
    assert [f.name for f in dataclasses.fields(SearchSpaceArgs)] == list(AXES)


def test_option_classes_stay_dataclasses_that_validate():
    args = TrainArgs(batch_size=4)
    assert dataclasses.replace(args, lr=3e-4).lr == 3e-4 and dataclasses.asdict(args)["batch_size"] == 4
    with pytest.raises(ValidationError):
        dataclasses.replace(args, batch_size=0)
    with pytest.raises(ValidationError):
        TrainArgs(batch_size="8")          # strict integers: no silent parsing of text
    with pytest.raises(ValidationError):
        LossArgs(intermediate="maybe")


def test_only_token_count_fields_read_token_counts():
    assert validate(DistillSection, {"tokens": "256K"}).tokens == 256_000
    assert validate(SearchArgs, {"distill_tokens": "1.5e4"}).distill_tokens == 15_000
    with pytest.raises(CompactLMError, match="recipe key 'micro_batch_size': expected an integer, got '4K'"):
        validate(TrainArgs, {"micro_batch_size": "4K"})


def test_every_problem_is_reported_with_its_key_path():
    with pytest.raises(CompactLMError) as err:
        validate(Recipe, {"data": {"seq_len": "x"}, "steps": [{"distill": {"train": {"batch_size": 0}}}]})
    text = str(err.value)
    assert "'data.seq_len': expected an integer, got 'x'" in text
    assert "'steps[0].distill.train.batch_size': expected greater than or equal to 1, got 0" in text


def _parser(cls, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_flags(parser, cls, **kwargs)
    return parser


def test_flags_are_the_fields_with_their_docstrings_and_defaults():
    parser = _parser(TrainArgs)
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in dataclasses.fields(TrainArgs)}
    assert flags["lr"].default == 1e-4 and "peak learning rate" in flags["lr"].help
    assert flags["precision"].choices == ["auto", "bf16", "fp32"]
    args = parser.parse_args(["--batch-size", "16", "--export-checkpoints"])
    assert from_flags(TrainArgs, args) == TrainArgs(batch_size=16, export_checkpoints=True)
    tokens = _parser(SearchArgs, skip=("space",)).parse_args(["--distill-tokens", "64K"])
    assert from_flags(SearchArgs, tokens).distill_tokens == 64_000


def test_flag_values_are_validated_like_recipe_keys():
    args = _parser(TrainArgs).parse_args(["--batch-size", "0"])
    with pytest.raises(CompactLMError, match="--batch-size 0: expected greater than or equal to 1"):
        from_flags(TrainArgs, args)


def test_old_axis_spellings_work_with_a_deprecation_line(capsys):
    parser = build_parser()
    new = parser.parse_args(["prune", "--scores", "s", "--out", "o", "--intermediate-size", "64",
                             "--num-key-value-heads", "1", "--num-hidden-layers", "2"])
    old = parser.parse_args(["prune", "--scores", "s", "--out", "o", "--ffn-hidden-size", "64", "--num-kv-heads", "1",
                             "--num-layers", "2"])
    err = capsys.readouterr().err
    assert "--ffn-hidden-size is deprecated; use --intermediate-size" in err
    assert "--num-kv-heads is deprecated; use --num-key-value-heads" in err
    assert "--num-layers is deprecated; use --num-hidden-layers" in err
    assert from_flags(ArchitectureArgs, old) == from_flags(ArchitectureArgs, new) == ArchitectureArgs(
        intermediate_size=64, num_key_value_heads=1, num_hidden_layers=2)
    space = parser.parse_args(["search", "--scores", "s", "--out", "o", "--ffn-hidden-sizes", "64,32"])
    assert "--ffn-hidden-sizes is deprecated; use --intermediate-size" in capsys.readouterr().err
    assert from_flags(SearchSpaceArgs, space).intermediate_size == [64, 32]


def test_a_bad_flag_value_is_one_line_and_exit_2(capsys):
    assert main(["search", "--scores", "s", "--out", "o", "--tolerance", "2"]) == 2
    err = capsys.readouterr().err
    assert "--tolerance 2.0: expected less than 1" in err and "Traceback" not in err
