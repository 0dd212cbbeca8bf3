"""Each task's requests equal lm-evaluation-harness's on hand-written rows.

The expected strings are written out from the harness's task files (0.4.x). Where ``lm_eval``
is installed, the same rows also go through the harness's own templates and helpers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from compactlm.evaluate import Request, get_task
from compactlm.evaluate import mmlu as mmlu_mod

HELLASWAG = {"ind": 4, "activity_label": "Making a cake", "ctx_a": "A woman [title] stirs batter in a bowl.",
             "ctx_b": "she", "ctx": "", "endings": ["pours it into a pan [step] slowly.", "Throws the bowl  away."],
             "label": "0"}
WINOGRANDE = {"sentence": "Sarah was a better surgeon than Maria so _ always got the easier cases.",
              "option1": "Sarah", "option2": "Maria", "answer": "2"}
ARC_HF = {"id": "x", "question": "Which gas do plants absorb?",
          "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]}, "answerKey": "B"}
ARC_RELEASE = {"id": "x", "question": {"stem": "Which gas do plants absorb?", "choices": [
    {"text": "oxygen", "label": "1"}, {"text": "carbon dioxide", "label": "2"}, {"text": "helium", "label": "3"}]},
    "answerKey": "2"}
ARC_OLMO = {"id": "x", "query": "Question: Which gas do plants absorb?\nAnswer:",
            "choices": ["oxygen", "carbon dioxide", "helium"], "gold": 1}
PIQA = {"goal": "Keep bread fresh", "sol1": "Store it in a bag.", "sol2": "Store it in water.", "label": 0}
BOOLQ = {"question": "is the sky blue", "passage": "The sky is blue.", "label": 1}
BOOLQ_GOOGLE = {"question": "is the sky blue", "passage": "The sky is blue.", "answer": True}
LAMBADA = {"text": "He said \"hello\" to the\n\nfriendly dog"}
MMLU_ROW = {"question": " What is 2+2? ", "choices": ["3", "4", "5", "6"], "answer": 1}


def requests(task: str, row: dict) -> list[Request]:
    t = get_task(task)
    return t.requests(t.process(row))


def test_hellaswag():
    ctx = "Making a cake: A woman. stirs batter in a bowl. She"
    assert requests("hellaswag", HELLASWAG) == [Request(ctx, " pours it into a pan slowly."),
                                                Request(ctx, " Throws the bowl away.")]
    t = get_task("hellaswag")
    assert t.gold(t.process(HELLASWAG)) == 0


def test_winogrande_scores_the_rest_of_the_sentence_after_each_option():
    assert requests("winogrande", WINOGRANDE) == [
        Request("Sarah was a better surgeon than Maria so Sarah", " always got the easier cases."),
        Request("Sarah was a better surgeon than Maria so Maria", " always got the easier cases."),
    ]
    t = get_task("winogrande")
    assert t.gold(t.process(WINOGRANDE)) == 1 and t.metrics == ("acc",)


@pytest.mark.parametrize("row", [ARC_HF, ARC_RELEASE, ARC_OLMO], ids=["hub", "release", "olmo"])
@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge"])
def test_arc_every_layout(task, row):
    ctx = "Question: Which gas do plants absorb?\nAnswer:"
    assert requests(task, row) == [Request(ctx, " oxygen"), Request(ctx, " carbon dioxide"), Request(ctx, " helium")]
    t = get_task(task)
    assert t.gold(t.process(row)) == 1


def test_piqa():
    ctx = "Question: Keep bread fresh\nAnswer:"
    assert requests("piqa", PIQA) == [Request(ctx, " Store it in a bag."), Request(ctx, " Store it in water.")]


@pytest.mark.parametrize("row", [BOOLQ, BOOLQ_GOOGLE], ids=["super_glue", "google"])
def test_boolq(row):
    ctx = "The sky is blue.\nQuestion: is the sky blue?\nAnswer:"
    assert requests("boolq", row) == [Request(ctx, " no"), Request(ctx, " yes")]
    t = get_task("boolq")
    assert t.gold(t.process(row)) == 1


def test_lambada_scores_the_last_word():
    assert requests("lambada", LAMBADA) == [Request("He said \"hello\" to the\n\nfriendly", " dog")]


def test_mmlu_five_shot_prompt():
    dev = [dict(MMLU_ROW, question=f"Q{i}?") for i in range(6)]
    (doc,) = mmlu_mod._docs({"abstract_algebra": [MMLU_ROW]}, {"abstract_algebra": dev})
    shot = "Q{}?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\n"
    ctx = ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
           + "".join(shot.format(i) for i in range(5)) + "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    t = get_task("mmlu")
    assert t.requests(t.process(doc)) == [Request(ctx, f" {x}") for x in "ABCD"]
    assert t.gold(doc) == 1


def test_mmlu_reads_the_official_csv_layout(tmp_path: Path):
    for split in ("dev", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
    dev = "".join(f'"Q{i}?",3,4,5,6,B\n' for i in range(5))
    (tmp_path / "data" / "dev" / "anatomy_dev.csv").write_text(dev)
    (tmp_path / "data" / "test" / "anatomy_test.csv").write_text('"What is 2+2, really?",3,4,5,6,B\n')
    (doc,) = mmlu_mod.read_csv_dir(tmp_path)
    assert doc["subject"] == "anatomy" and doc["answer"] == 1 and doc["choices"] == ["3", "4", "5", "6"]
    assert doc["fewshot"].startswith("The following are multiple choice questions (with answers) about anatomy.\n\nQ0?")


# --- the same rows through lm-evaluation-harness's own code ---------------------------------

lm_eval_missing = importlib.util.find_spec("lm_eval") is None


def _harness_yaml(relpath: str) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    root = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks"
    return yaml.load((root / relpath).read_text(), Loader=Loader)


@pytest.mark.skipif(lm_eval_missing, reason="lm_eval is not installed")
def test_templates_match_the_harness():
    from lm_eval.utils import apply_template

    arc = _harness_yaml("arc/arc_easy.yaml")
    assert requests("arc_easy", ARC_HF)[0].context == apply_template(arc["doc_to_text"], ARC_HF)
    piqa = _harness_yaml("piqa/piqa.yaml")
    assert requests("piqa", PIQA)[0].context == apply_template(piqa["doc_to_text"], PIQA)
    boolq = _harness_yaml("super_glue/boolq/default.yaml")
    assert requests("boolq", BOOLQ)[0].context == apply_template(boolq["doc_to_text"], BOOLQ)
    assert [r.continuation[1:] for r in requests("boolq", BOOLQ)] == boolq["doc_to_choice"]
    lam = _harness_yaml("lambada/lambada_openai.yaml")
    (req,) = requests("lambada", LAMBADA)
    assert (req.context, req.continuation) == (apply_template(lam["doc_to_text"], LAMBADA),
                                               apply_template(lam["doc_to_target"], LAMBADA))
    mmlu = _harness_yaml("mmlu/default/_default_template_yaml")
    assert mmlu_mod.question_text(MMLU_ROW) == apply_template(mmlu["doc_to_text"], MMLU_ROW)
    assert mmlu["fewshot_split"] == "dev" and mmlu["fewshot_config"]["sampler"] == "first_n"


@pytest.mark.skipif(lm_eval_missing, reason="lm_eval is not installed")
def test_hellaswag_and_winogrande_match_the_harness_helpers():
    import datasets
    from lm_eval.tasks.hellaswag import utils as hs
    from lm_eval.tasks.winogrande import preprocess_winogrande as wg

    doc = hs.process_docs(datasets.Dataset.from_list([HELLASWAG]))[0]
    assert [(r.context, r.continuation) for r in requests("hellaswag", HELLASWAG)] == [
        (doc["query"], " " + c) for c in doc["choices"]]
    assert [(r.context, r.continuation) for r in requests("winogrande", WINOGRANDE)] == [
        (c, " " + wg.doc_to_target(WINOGRANDE)) for c in wg.doc_to_choice(WINOGRANDE)]
    assert get_task("winogrande").gold(WINOGRANDE) == wg.doc_to_text(WINOGRANDE)


@pytest.mark.skipif(lm_eval_missing, reason="lm_eval is not installed")
def test_mmlu_subjects_and_descriptions_match_the_harness():
    root = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks" / "mmlu" / "default"
    found = {}
    for path in root.glob("mmlu_*.yaml"):
        cfg = _harness_yaml(f"mmlu/default/{path.name}")
        found[cfg["dataset_name"]] = (cfg["description"], cfg["tag"].removeprefix("mmlu_").removesuffix("_tasks"))
    assert found == {s: (mmlu_mod.description(s), cat) for s, cat in mmlu_mod.SUBJECTS.items()}
