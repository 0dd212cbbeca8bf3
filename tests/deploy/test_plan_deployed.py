"""compactlm plan: the deployed memory of the first student, and of every candidate under a memory budget."""

from __future__ import annotations

import re

from compactlm.cli import main
from compactlm.config import SHORT
from compactlm.config.options import MemoryBudget
from compactlm.deploy import deployed_memory
from compactlm.sizing import load_config, model_shape

LINE = re.compile(r"deployed: weights ([\d,.]+) MB \((\w+)\) \+ KV cache ([\d,.]+) MB at (\d+) x (\d+) = ([\d,.]+) MB"
                  r"(?: \(limit ([\d,.]+) MB: (fits|over)\))?(?: for (\S+), the first candidate)?")


def _arch(name: str, teacher):
    """The architecture a candidate's printed name (``h384-f2048-a4-kv1-l18``) gives, the rest the teacher's."""
    axes = {short: axis for axis, short in SHORT.items()}
    sizes = {axes[m[1]]: int(m[2]) for m in re.finditer(r"([a-z]+)(\d+)", name)}
    return teacher.replace(**sizes)


def _plan(capsys, *overrides: str) -> str:
    args = ["plan", "--recipe", "gemma3-270m", "--device", "H100"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    return capsys.readouterr().out


def test_plan_prints_the_first_candidates_deployed_memory_in_bfloat16(capsys):
    out = _plan(capsys)
    found = LINE.search(out)
    assert found, out
    weights, dtype, kv, seq_len, batch, total, limit, _, name = found.groups()
    assert (dtype, seq_len, batch, limit) == ("bfloat16", "512", "1", None)      # the recipe's data.seq_len
    assert "deployed MB" not in out                                              # no budget: no column
    config = load_config("gemma3-270m")
    arch = _arch(name, model_shape(config).arch)
    memory = deployed_memory(arch, config, MemoryBudget(limit=1, seq_len=512))
    assert weights == f"{memory.weights / 1e6:,.1f}" and kv == f"{memory.kv_cache / 1e6:,.1f}"
    assert total == f"{memory.total / 1e6:,.1f}"


def test_plan_with_a_memory_budget_lists_each_candidates_deployed_memory(capsys):
    out = _plan(capsys, "steps.0.search.memory={limit: 240MB, weights: q8_0, seq_len: 8192, batch: 2}")
    found = LINE.search(out)
    assert found, out
    weights, dtype, kv, seq_len, batch, total, limit, verdict, name = found.groups()
    assert (dtype, seq_len, batch, limit) == ("q8_0", "8192", "2", "240.0")
    assert verdict == "fits" and float(total.replace(",", "")) <= 240    # the search lists only candidates that fit
    header = next(line for line in out.splitlines() if "deployed MB (q8_0)" in line)
    rows = out.splitlines()[out.splitlines().index(header) + 1:]
    config = load_config("gemma3-270m")
    budget = MemoryBudget(limit="240MB", weights="q8_0", seq_len=8192, batch=2)
    listed = [row for row in rows if re.match(r"\s+h\d+", row)]
    assert listed
    for row in listed:
        candidate, *_, deployed = row.split()
        expected = deployed_memory(_arch(candidate, model_shape(config).arch), config, budget).total
        assert deployed == f"{expected / 1e6:,.1f}" and expected <= 240e6
    assert rows[0].split()[0] == name


def test_plan_with_a_memory_budget_no_candidate_fits_names_the_closest(capsys):
    args = ["plan", "--recipe", "gemma3-270m", "--device", "H100", "--set",
            "steps.0.search.memory={limit: 200MB, weights: q8_0, seq_len: 8192, batch: 2}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "fits the memory budget" in err and "the closest is h" in err
