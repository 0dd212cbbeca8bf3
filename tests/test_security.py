"""The six security guarantees (issue 10): no code runs from a checkpoint or recipe, nothing is written outside --out.

Each test fails on the code before the fix: a pickled rng.pt ran on --resume, step names were paths,
pytorch_model.bin loaded, a recipe turned on trust_remote_code by itself, YAML aliases expanded,
and a resume accepted another teacher or other data.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import yaml
from distill.distill_fixtures import one_thread  # noqa: F401  (autouse)
from helpers import make_tiny_model
from recipes.run_fixtures import write_tiny_recipe

from compactlm.cli import main
from compactlm.errors import CompactLMError


def _tiny_distill(out, *, resume=False, teacher_seed=0, data_seed=0, steps=2):
    from compactlm.distill import LossArgs, TrainArgs, distill

    teacher = make_tiny_model("llama", dtype=torch.float32, seed=teacher_seed)
    student = make_tiny_model("llama", dtype=torch.float32, seed=1, num_hidden_layers=2)
    blocks = torch.randint(3, 128, (8, 12), generator=torch.Generator().manual_seed(data_seed))
    return distill(student, teacher, blocks, out, resume=resume, overwrite=not resume,
                   loss=LossArgs(intermediate="off", chunk_size=16),
                   args=TrainArgs(batch_size=2, micro_batch_size=2, max_steps=steps, precision="fp32", device="cpu",
                                  checkpoint_every=1, val_every=0))


class _Payload:
    """Unpickling this object calls os.mkdir(marker): the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# 1. --resume never unpickles --------------------------------------------------------------------

def test_rng_states_round_trip_without_pickle():
    from compactlm.distill.checkpoint import decode_rng, encode_rng
    from compactlm.distill.sampler import rng_state, set_rng_state

    state = rng_state()
    expected = (torch.rand(3), __import__("random").random())
    tensors, meta = encode_rng([state])
    json.dumps(meta)   # plain values only
    set_rng_state(decode_rng(tensors, json.loads(json.dumps(meta)))[0])
    assert torch.equal(torch.rand(3), expected[0]) and __import__("random").random() == expected[1]


def test_resume_refuses_a_planted_pickle_and_runs_nothing(tmp_path):
    run = tmp_path / "run"
    _tiny_distill(run, steps=2)
    marker = tmp_path / "code-ran"
    for ckpt in (run / "checkpoints").iterdir():   # an old-style (or hostile) checkpoint: rng.pt, a pickle
        assert not (ckpt / "rng.pt").exists() and (ckpt / "rng.safetensors").is_file()
        for name in ("rng.safetensors", "rng.json"):
            (ckpt / name).unlink()
        torch.save([_Payload(str(marker))], ckpt / "rng.pt")
    with pytest.raises(CompactLMError, match="never loads"):
        _tiny_distill(run, resume=True, steps=2)
    assert not marker.exists()


# 2. step names are plain names; nothing is written outside the run directory --------------------

@pytest.mark.parametrize("name", ["../escape", "/abs/dir", "a/b", "", "..", "correction", "x" * 65])
def test_step_names_must_be_plain(name, tmp_path):
    from compactlm.recipes import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"steps": [{"name": name}]}))
    with pytest.raises(CompactLMError, match="plain name of letters"):
        load_recipe(path)


def test_step_dir_through_a_symlink_is_refused(tmp_path):
    from compactlm.recipes.pipeline import inside_run_dir

    (tmp_path / "run").mkdir()
    (tmp_path / "victim").mkdir()
    (tmp_path / "run" / "student").symlink_to(tmp_path / "victim")
    with pytest.raises(CompactLMError, match="outside the run directory"):
        inside_run_dir(tmp_path / "run", "student")


# 3. safetensors only -------------------------------------------------------------------------------

def _pickle_only(path):
    model = make_tiny_model("llama", dtype=torch.float32)
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return model


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path):
    from compactlm.models import load_model

    model = _pickle_only(tmp_path / "m")
    with pytest.raises(CompactLMError, match="--allow-pickle") as err:
        load_model(str(tmp_path / "m"), with_tokenizer=False)
    assert "save_pretrained" in str(err.value)   # the stated convert command
    loaded = load_model(str(tmp_path / "m"), with_tokenizer=False, allow_pickle=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


# 4. trust_remote_code needs the command line ---------------------------------------------------------

def test_recipe_cannot_turn_on_remote_code(tmp_path, tiny_checkpoint, text_file, capsys):
    recipe = write_tiny_recipe(tmp_path, tiny_checkpoint("llama"), text_file)
    raw = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**raw, "trust_remote_code": True}))
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_auto_map_refusal_names_the_flag(tmp_path):
    from compactlm.models import load_model

    model = make_tiny_model("llama", dtype=torch.float32)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.update(model_type="my_custom_lm", auto_map={"AutoModelForCausalLM": "modeling_custom.CustomLM"})
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CompactLMError, match="--trust-remote-code"):
        load_model(str(tmp_path / "m"), with_tokenizer=False)


# 5. YAML bombs -----------------------------------------------------------------------------------------

def test_billion_laughs_is_refused_fast_with_a_short_message(tmp_path):
    from compactlm.recipes import load_recipe

    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]" for p, c in zip("abcdefgh", "bcdefghi")]
    lines.append("teacher: *i")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(CompactLMError, match="alias") as err:
        load_recipe(tmp_path / "bomb.yaml")
    assert time.perf_counter() - start < 2 and len(str(err.value)) < 400


def test_a_huge_value_is_cut_in_the_message(tmp_path):
    from compactlm.recipes import load_recipe

    (tmp_path / "big.yaml").write_text(yaml.safe_dump({"dtype": ["x" * 100_000]}))
    with pytest.raises(CompactLMError) as err:
        load_recipe(tmp_path / "big.yaml")
    assert len(str(err.value)) < 400 and "dtype" in str(err.value)


# 6. resume checks teacher and data; loads check every tensor ----------------------------------------------

@pytest.mark.parametrize("change, key", [({"teacher_seed": 7}, "teacher_fingerprint"), ({"data_seed": 7}, "data_fingerprint")])
def test_resume_refuses_another_teacher_or_other_data(tmp_path, change, key):
    _tiny_distill(tmp_path / "run", steps=1)
    with pytest.raises(CompactLMError, match=key):
        _tiny_distill(tmp_path / "run", resume=True, steps=1, **change)


def test_config_that_does_not_match_the_weights_is_refused(tmp_path):
    from compactlm.models import load_model

    make_tiny_model("llama", dtype=torch.float32).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 6}))
    with pytest.raises(CompactLMError, match="missing keys"):
        load_model(str(tmp_path / "m"), with_tokenizer=False)


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    run = tmp_path / "run"
    _tiny_distill(run, steps=2)
    newest = run / "checkpoints" / "step-0000002" / "student.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    result = _tiny_distill(run, resume=True, steps=2)
    assert result.step == 2 and "falling back" in caplog.text
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".step-0000002.damaged")]
