"""Tests for data.py: loaders on hand-written fixtures in each source's real format, Reasoning Gym
generation and OOD suites, the spec parser, the resumable mixture, filtering, prompt formatting, and the
gold round trip through rewards.score (every domain's own reference solution scores 1.0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]

import data  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
FIX = {
    "deepscaler": FIXTURES / "deepscaler.jsonl",
    "eurus2_code": FIXTURES / "eurus2_code.jsonl",
    "scp116k": FIXTURES / "scp116k.jsonl",
    "nemotron_if": FIXTURES / "nemotron_if.jsonl",
    "ifeval": FIXTURES / "ifeval.jsonl",
    "gpqa": FIXTURES / "gpqa_diamond.csv",
}


def tiny_tokenizer():
    """A word-level tokenizer with a plain chat template: one token per whitespace-separated word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(
        models.WordLevel({"[UNK]": 0, "<|user|>": 1, "<|assistant|>": 2, "<|system|>": 3}, unk_token="[UNK]")
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", chat_template=template)


def load(loader):
    return data.load_source(loader, str(FIX[loader]))


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ------------------------------------------------------------------------------------------------ loaders


def test_deepscaler_fixture_maps_problem_and_answer_and_counts_empty_answers():
    tasks, skipped = load("deepscaler")
    assert skipped == {"no_answer": 1}
    assert [t["answer"] for t in tasks] == ["100", "\\frac{3}{4}", "28", "4"]
    assert [t["meta"]["row"] for t in tasks] == [1, 2, 3, 5]
    assert tasks[0]["prompt"][0]["content"].startswith(
        "What is the sum of the first 10 positive odd integers?"
    )
    assert tasks[0]["prompt"][0]["content"].endswith(data.MATH_INSTRUCTION)
    assert {t["domain"] for t in tasks} == {"math"} and {t["source"] for t in tasks} == {"deepscaler"}


def test_eurus_code_fixture_maps_stdin_and_call_based_tests():
    tasks, skipped = load("eurus2_code")
    assert skipped == {"not_code": 1}  # the math row of the mixed Eurus file
    stdin, call, empty = tasks
    assert [m["role"] for m in stdin["prompt"]] == ["user"]  # PRIME's system prompt dropped
    assert stdin["prompt"][0]["content"].endswith(data.CODE_STDIN_INSTRUCTION)
    assert stdin["tests"] == [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "-5 5\n", "output": "0\n"},
        {"input": "1000000000 1000000000", "output": "2000000000"},
    ]  # list of lines joined
    assert "fn_name" not in stdin and call["fn_name"] == "count_vowels"
    assert len(call["tests"]) == 3 and all(set(t) == {"assert"} for t in call["tests"])
    assert "`count_vowels`" in call["prompt"][-1]["content"]
    assert empty["tests"] == []
    assert stdin["meta"]["data_source"] == "codecontests" and stdin["meta"]["index"] == 0


def _run_asserts(program: str, tests: list[dict]) -> None:
    namespace = {"__name__": "solution"}
    exec(program, namespace)
    for t in tests:
        exec(t["assert"], namespace)


def test_call_based_asserts_accept_correct_functions_and_reject_wrong_ones():
    call = load("eurus2_code")[0][1]
    _run_asserts(
        "def count_vowels(s):\n    return sum(c in 'aeiou' for c in s)\n", call["tests"]
    )  # outputs [3], [0], 5
    _run_asserts(
        "class Solution:\n    def count_vowels(self, s):\n        return sum(c in 'aeiou' for c in s)\n",
        call["tests"],
    )
    with pytest.raises(AssertionError):
        _run_asserts("def count_vowels(s):\n    return len(s)\n", call["tests"])
    tests, fn = data.code_tests_from_ground_truth(
        {"fn_name": "pair", "inputs": [[1]], "outputs": [[1, 2]]}, "x"
    )
    _run_asserts("def pair(a):\n    return (a, a + 1)\n", tests)  # a tuple result equals a list, as in APPS


def test_scp116k_fixture_keeps_verified_rows_with_a_boxed_answer():
    tasks, skipped = load("scp116k")
    assert skipped == {"unverified_solution": 1, "no_boxed_answer": 1}
    assert [t["answer"] for t in tasks] == ["20", "2"]  # row 2: from o1_solution (matched has no \boxed)
    assert [t["meta"]["scp_domain"] for t in tasks] == ["Physics", "Chemistry"]
    assert all(t["domain"] == "stem" and "choices" not in t for t in tasks)


def test_nemotron_if_fixture_maps_args_and_strips_none_kwargs():
    tasks, skipped = load("nemotron_if")
    assert skipped == {}
    assert [t["instruction_id_list"] for t in tasks] == [
        ["change_case:english_lowercase"],
        ["detectable_format:title", "punctuation:no_comma"],
        ["length_constraints:number_words", "detectable_content:postscript"],
    ]
    # arrow gives every kwargs dict the union of keys, None-filled; only real arguments survive
    assert [t["kwargs"] for t in tasks] == [
        [{}],
        [{}, {}],
        [{"num_words": 12, "relation": "at least"}, {"postscript_marker": "P.S."}],
    ]
    assert tasks[0]["meta"]["system_prompt"] == "detailed thinking off"
    assert all(m["role"] == "user" for t in tasks for m in t["prompt"])


def test_ifeval_and_gpqa_fixtures():
    tasks, _ = load("ifeval")
    assert [t["meta"]["key"] for t in tasks] == [9001, 9002, 9003]
    assert tasks[2]["kwargs"] == [{"num_words": 8, "relation": "at least"}, {}]
    assert (
        tasks[0]["prompt"][0]["content"]
        == "Write two sentences about rivers. Do not use any commas in your response."
    )
    gpqa, _ = load("gpqa")
    options = [
        ["photon", "gluon", "W boson", "graviton"],
        ["sp3", "sp2", "sp", "sp3d"],
        ["mitochondrion", "ribosome", "Golgi apparatus", "lysosome"],
    ]  # correct first, as in the csv
    for task, opts in zip(gpqa, options):
        assert sorted(task["choices"]) == sorted(opts)
        assert task["answer"] == "ABCD"[task["choices"].index(opts[0])]
        assert f"{task['answer']}) {opts[0]}" in task["prompt"][0]["content"]
    assert data.load_source("gpqa", str(FIX["gpqa"]))[0] == gpqa  # the shuffle is stable


def test_parquet_and_save_to_disk_give_the_same_tasks_as_jsonl(tmp_path):
    import datasets

    for loader in ("eurus2_code", "nemotron_if"):
        ds = datasets.Dataset.from_list(read_jsonl(FIX[loader]))
        parquet = tmp_path / f"{loader}.parquet"
        ds.to_parquet(str(parquet))
        ds.save_to_disk(str(tmp_path / f"{loader}_arrow"))
        want = [{k: v for k, v in t.items() if k != "id"} for t in load(loader)[0]]
        for location in (str(parquet), str(tmp_path / f"{loader}_arrow")):
            got, _ = data.load_source(loader, location)
            assert [{k: v for k, v in t.items() if k != "id"} for t in got] == want


def test_native_tasks_file_round_trips(tmp_path):
    tasks = (
        load("deepscaler")[0]
        + load("eurus2_code")[0][:2]
        + load("gpqa")[0]
        + load("nemotron_if")[0]
        + data.reasoning_gym_tasks("graph_color", 2, 0)
    )
    got, _ = data.load_source("tasks", write_jsonl(tmp_path / "tasks.jsonl", tasks))
    assert got == tasks


@pytest.mark.parametrize(
    "loader, corrupt, row, words",
    [
        ("deepscaler", lambda rows: rows[2].pop("problem"), 3, "problem"),
        ("deepscaler", lambda rows: rows[1].update(problem=["not", "a", "string"]), 2, "problem"),
        (
            "eurus2_code",
            lambda rows: rows[1]["reward_model"].update(ground_truth="{inputs: oops"),
            2,
            "not valid JSON",
        ),
        ("eurus2_code", lambda rows: rows[0].update(prompt="a plain string"), 1, "prompt"),
        (
            "eurus2_code",
            lambda rows: rows[0]["reward_model"].update(
                ground_truth=json.dumps({"inputs": ["1\n"], "outputs": []})
            ),
            1,
            "1 inputs but 0 outputs",
        ),
        (
            "nemotron_if",
            lambda rows: rows[2]["args"]["instruction_kwargs"].pop(),
            3,
            "2 instruction ids but 1 kwargs",
        ),
        ("scp116k", lambda rows: rows[3].pop("problem"), 4, "problem"),
    ],
)
def test_malformed_rows_raise_naming_file_and_row(tmp_path, loader, corrupt, row, words):
    rows = read_jsonl(FIX[loader])
    corrupt(rows)
    path = write_jsonl(tmp_path / f"{loader}_bad.jsonl", rows)
    with pytest.raises(ValueError) as err:
        data.load_source(loader, path)
    assert f"{path}: row {row}" in str(err.value) and words in str(err.value)


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "deepscaler_broken.jsonl"
    lines = FIX["deepscaler"].read_text().splitlines()
    lines[1] = lines[1][:-1]  # drop the closing brace of row 2
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{path}: row 2: not valid JSON"):
        data.load_source("deepscaler", str(path))


def test_missing_file_and_unknown_loader_are_clear_errors():
    with pytest.raises(ValueError, match="file not found: nowhere.jsonl"):
        data.load_source("deepscaler", "nowhere.jsonl")
    with pytest.raises(ValueError, match="unknown loader 'deepscalar'"):
        data.load_source("deepscalar", str(FIX["deepscaler"]))


# ------------------------------------------------------------------------------------------ filtering


def test_filter_counts_code_without_tests_and_long_prompts():
    code, _ = load("eurus2_code")
    kept, counts = data.filter_tasks(code)
    assert counts == {"total": 3, "kept": 2, "code_without_tests": 1} and kept == code[:2]
    tok = tiny_tokenizer()
    math_tasks, _ = load("deepscaler")
    lengths = [
        len(tok(data.format_prompt(t, tok), add_special_tokens=False)["input_ids"]) for t in math_tasks
    ]
    limit = sorted(lengths)[1]  # keeps exactly the two shortest (all lengths differ)
    assert len(set(lengths)) == len(lengths)
    kept, counts = data.filter_tasks(math_tasks, tok, max_prompt_tokens=limit)
    assert counts == {"total": 4, "kept": 2, "prompt_too_long": 2}
    assert sorted(lengths[math_tasks.index(t)] for t in kept) == sorted(lengths)[:2]
    with pytest.raises(ValueError, match="needs a tokenizer"):
        data.filter_tasks(math_tasks, max_prompt_tokens=10)


# ------------------------------------------------------------------------------------ prompt formatting


def test_format_prompt_applies_template_with_each_domains_instruction_once():
    tok = tiny_tokenizer()
    math_task = load("deepscaler")[0][0]
    text = data.format_prompt(math_task, tok)
    assert text.startswith("<|user|> What is the sum") and text.endswith("<|assistant|>")
    assert text.count(data.MATH_INSTRUCTION) == 1  # already in the task: not added twice
    bare = {**math_task, "prompt": [{"role": "user", "content": "1+1?"}]}
    assert data.format_prompt(bare, tok) == f"<|user|> 1+1?\n\n{data.MATH_INSTRUCTION}\n<|assistant|>"
    with_sys = data.format_prompt(bare, tok, system_prompt="Be brief.")
    assert with_sys.startswith("<|system|> Be brief.\n<|user|> 1+1?")
    gpqa = load("gpqa")[0][0]
    assert data.STEM_CHOICES_INSTRUCTION in data.format_prompt(gpqa, tok)
    call = load("eurus2_code")[0][1]
    assert data.CODE_CALL_INSTRUCTION.format(fn_name="count_vowels") in data.format_prompt(call, tok)
    rg = data.reasoning_gym_tasks("basic_arithmetic", 1, 0)[0]
    assert data.format_prompt(rg, tok).count("<answer></answer>") == 1
    ifeval = load("ifeval")[0][0]
    assert data.format_prompt(ifeval, tok) == f"<|user|> {ifeval['prompt'][0]['content']}\n<|assistant|>"


# -------------------------------------------------------------------------------------- Reasoning Gym


@pytest.mark.parametrize("size", data.GRAPH_COLOR_OOD_SIZES)
def test_graph_color_suite_has_exactly_the_asked_vertex_count(size):
    suite = data.ood_suite("graph_color", size=size, n=5)
    assert len(suite) == 5
    for i, task in enumerate(suite):
        puzzle = task["rg_entry"]["metadata"]["puzzle"]
        assert len(puzzle["vertices"]) == size == task["rg_entry"]["metadata"]["num_vertices"]
        assert all(0 <= v < size for edge in puzzle["edges"] for v in edge)
        assert task["id"] == f"rg/graph_color/v{size}/s{data.EVAL_SEED}/{i}"


def test_default_graph_color_suite_is_the_training_size_and_spec_ranges_hold():
    assert {
        len(t["rg_entry"]["metadata"]["puzzle"]["vertices"]) for t in data.ood_suite("graph_color", n=4)
    } == {10}
    tasks = data.load_spec("logic=rg:graph_color:min_num_vertices=4:max_num_vertices=6:n=40")["logic"]
    sizes = Counter(t["rg_entry"]["metadata"]["num_vertices"] for t in tasks)
    assert set(sizes) <= {4, 5, 6} and len(sizes) > 1


def test_rg_entries_are_json_serialisable_and_ids_stable():
    for name in ("graph_color", "boxnet"):
        tasks = data.ood_suite(name, n=3)
        assert json.loads(json.dumps(tasks)) == tasks  # nothing lost or changed in a JSON round trip
        assert tasks[0]["prompt"][0]["content"].endswith(data.LOGIC_INSTRUCTION)
        assert tasks[0]["prompt"][0]["content"].startswith(tasks[0]["rg_entry"]["question"].rstrip())
    t = data.reasoning_gym_tasks("basic_arithmetic", 2, 7)
    assert [x["id"] for x in t] == ["rg/basic_arithmetic/default/s7/0", "rg/basic_arithmetic/default/s7/1"]
    long_cfg = data.reasoning_gym_tasks(
        "graph_color", 1, 0, min_num_vertices=4, max_num_vertices=6, edge_probability=0.2
    )
    assert (
        long_cfg[0]["id"]
        == data.reasoning_gym_tasks(
            "graph_color", 1, 0, edge_probability=0.2, max_num_vertices=6, min_num_vertices=4
        )[0]["id"]
    )  # order of settings is irrelevant
    assert data.jsonable({(1, 2): {3}, 4: (5, 6)}) == {"[1, 2]": [3], "4": [5, 6]}


def test_exact_vertices_option_reaches_the_task_and_changes_its_id():
    lenient = data.load_spec("g=rg:graph_color:min_num_vertices=4:max_num_vertices=6:n=3:seed=1")["g"]
    strict = data.load_spec("g=rg:graph_color:min_num_vertices=4:max_num_vertices=6:exact_vertices=true:n=3:seed=1")["g"]
    assert [t["rg_entry"] for t in strict] == [t["rg_entry"] for t in lenient]  # same puzzles
    assert all(t["exact_vertices"] is True for t in strict) and not any("exact_vertices" in t for t in lenient)
    assert not {t["id"] for t in strict} & {t["id"] for t in lenient}  # evaluate.py caches scores by id
    suites = data.eval_suites("ood:graph_color:7-8:n=2:exact_vertices=true")
    assert [t["id"] for t in suites["graph_color_v7"]] == [f"rg/graph_color/v7-exact/s{data.EVAL_SEED}/{i}" for i in (0, 1)]
    assert all(t["exact_vertices"] for s in suites.values() for t in s)
    data.validate_task(strict[0])
    with pytest.raises(ValueError, match="graph_color only"):
        data.validate_task({**data.reasoning_gym_tasks("basic_arithmetic", 1, 0)[0], "exact_vertices": True})
    with pytest.raises(ValueError, match="rg:chain_sum: exact_vertices=True.*graph_color only"):
        data.load_spec("rg:chain_sum:exact_vertices=true:n=2")
    with pytest.raises(ValueError, match="exact_vertices='yes'"):
        data.reasoning_gym_tasks("graph_color", 1, 0, exact_vertices="yes")


def test_rg_errors_name_the_task_and_setting():
    with pytest.raises(ValueError, match="unknown Reasoning Gym task 'graph_colour'.*graph_color"):
        data.reasoning_gym_tasks("graph_colour", 2, 0)
    with pytest.raises(ValueError, match=r"rg:graph_color: unknown setting\(s\) \['vertices'\]"):
        data.reasoning_gym_tasks("graph_color", 2, 0, vertices=5)
    with pytest.raises(ValueError, match="size applies to graph_color only"):
        data.ood_suite("boxnet", size=5)


# ------------------------------------------------------------------------------------------ data spec


def test_spec_parser_examples():
    items = data.parse_spec(
        f"deepscaler={FIX['deepscaler']},logic=rg:graph_color:min_num_vertices=4:max_num_vertices=6:n=2000,"
        "rg:basic_arithmetic:n=500"
    )
    assert [(p["label"], p["kind"]) for p in items] == [
        ("deepscaler", "loader"),
        ("logic", "rg"),
        ("reasoning_gym", "rg"),
    ]
    assert items[0]["location"] == str(FIX["deepscaler"])
    assert items[1]["task"] == "graph_color" and items[1]["n"] == 2000
    assert items[1]["cfg"] == {"min_num_vertices": 4, "max_num_vertices": 6}
    p = data.parse_spec(
        'code=eurus2_code:data/eurus.parquet@0.2,math=deepscaler@0.5,rg:boxnet:colour_list=["red","blue"]@0.3'
    )
    assert [(x["label"], x.get("loader"), x.get("location"), x["weight"]) for x in p] == [
        ("code", "eurus2_code", "data/eurus.parquet", 0.2),
        ("math", "deepscaler", None, 0.5),
        ("reasoning_gym", None, None, 0.3),
    ]
    assert p[2]["cfg"] == {"colour_list": ["red", "blue"]}  # the comma inside [...] does not split items
    assert data.spec_weights(
        "code=eurus2_code:a.jsonl@0.2,math=deepscaler@0.5,math=deepscaler:b.jsonl@0.5"
    ) == {"code": 0.2, "math": 0.5}
    assert data.spec_weights("deepscaler,rg:basic_arithmetic") is None
    ood = data.parse_spec("ood:graph_color:10-20:n=50,ood:boxnet")
    assert ood[0]["sizes"] == list(range(10, 21)) and ood[0]["n"] == 50 and ood[1]["sizes"] is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty data spec"),
        ("deepscaler,,rg:boxnet", "empty item"),
        ("foo=bar.jsonl", "spec item 'foo=bar.jsonl': cannot tell which loader reads 'bar.jsonl'"),
        ("rg:", "missing Reasoning Gym task name"),
        (
            "rg:graph_color:min_num_vertices",
            "spec item 'rg:graph_color:min_num_vertices': expected key=value",
        ),
        (
            "deepscaler@0.5,rg:boxnet",
            r"give a weight to every source or to none; no weight for \['reasoning_gym'\]",
        ),
        ("deepscaler@0", "weight must be > 0"),
        ("ood:boxnet:3-5", "sizes apply to graph_color only"),
        ("ood:graph_color:9-x", "sizes must be N or A-B"),
    ],
)
def test_spec_parser_errors_name_the_bad_item(spec, message):
    with pytest.raises(ValueError, match=message):
        data.parse_spec(spec)


def test_load_spec_builds_sources_and_filters():
    spec = (
        f"math=deepscaler:{FIX['deepscaler']},eurus2_code:{FIX['eurus2_code']},stem=scp116k:{FIX['scp116k']},"
        f"stem=gpqa:{FIX['gpqa']},ifeval=nemotron_if:{FIX['nemotron_if']},logic=rg:graph_color:n=3,logic=rg:basic_arithmetic:n=2"
    )
    sources = data.load_spec(spec, seed=3)
    assert {k: len(v) for k, v in sources.items()} == {
        "math": 4,
        "eurus2_code": 2,
        "stem": 5,
        "ifeval": 3,
        "logic": 5,
    }
    assert sources["logic"][0]["id"] == "rg/graph_color/default/s3/0"  # the spec's seed reaches rg items
    with pytest.raises(ValueError, match="ood: items belong in eval_suites"):
        data.load_spec("ood:boxnet")


def test_eval_suites_and_validation_blend():
    suites = data.eval_suites(f"ood:graph_color:10-12:n=2,ood:boxnet:n=2,aime=deepscaler:{FIX['deepscaler']}")
    assert {k: len(v) for k, v in suites.items()} == {
        "graph_color_v10": 2,
        "graph_color_v11": 2,
        "graph_color_v12": 2,
        "boxnet": 2,
        "aime": 4,
    }
    blend = data.validation_blend(
        aime24=str(FIX["deepscaler"]),
        codeforces=str(FIX["eurus2_code"]),
        gpqa_diamond=str(FIX["gpqa"]),
        ifeval=f"nemotron_if:{FIX['nemotron_if']}",
        graph_color_n=3,
    )
    assert {k: (len(v), {t["domain"] for t in v}) for k, v in blend.items()} == {
        "aime24": (4, {"math"}),
        "codeforces": (2, {"code"}),
        "gpqa_diamond": (3, {"stem"}),
        "ifeval": (3, {"ifeval"}),
        "graph_color": (3, {"logic"}),
    }
    assert {t["rg_entry"]["metadata"]["num_vertices"] for t in blend["graph_color"]} == {
        data.GRAPH_COLOR_TRAIN_SIZE
    }
    assert list(data.validation_blend(graph_color_n=2)) == ["graph_color"]  # CPU runs: procedural part only


# --------------------------------------------------------------------------------------------- mixture


def _sources(sizes: dict[str, int]) -> dict[str, list[dict]]:
    return {
        name: [{"id": f"{name}/{i}", "domain": "logic"} for i in range(size)] for name, size in sizes.items()
    }


def test_mixture_resume_continues_with_the_next_unseen_prompt_across_epochs():
    sources = _sources({"a": 5, "b": 7, "c": 3})
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    run = data.Mixture(sources, weights, seed=11)
    first = [t["id"] for t in run.next_batch(23)]  # every source has wrapped at least once
    state = json.loads(json.dumps(run.state_dict()))
    assert state["sources"]["c"]["epoch"] >= 1
    resumed = data.Mixture(sources, weights, seed=11)
    resumed.load_state_dict(state)
    assert [t["id"] for t in resumed.next_batch(40)] == [t["id"] for t in run.next_batch(40)]
    fresh = data.Mixture(sources, weights, seed=11)
    assert [t["id"] for t in fresh.next_batch(23)] == first


def test_mixture_epochs_are_permutations_reshuffled_each_epoch():
    m = data.Mixture(_sources({"a": 20}), seed=0)
    epoch0, epoch1 = [t["id"] for t in m.next_batch(20)], [t["id"] for t in m.next_batch(20)]
    assert sorted(epoch0) == sorted(epoch1) == sorted(f"a/{i}" for i in range(20))
    assert epoch0 != epoch1
    assert [t["id"] for t in data.Mixture(_sources({"a": 20}), seed=1).next_batch(20)] != epoch0


def _max_quota_error(weights: dict[str, float], draws: int) -> float:
    m = data.Mixture({s: [{"id": s, "domain": "logic"}] * 3 for s in weights}, weights, seed=0)
    total, counts, worst = sum(weights.values()), Counter(), 0.0
    for n in range(1, draws + 1):
        counts[m.next_batch(1)[0]["id"]] += 1
        worst = max(worst, max(abs(counts[s] - weights[s] / total * n) for s in weights))
    return worst


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 0.5, "b": 0.3, "c": 0.2},
        {"a": 40, "b": 24, "c": 37, "d": 25, "e": 10},
        {"a": 1, "b": 1, "c": 98},
    ],
)
def test_mixture_proportions_stay_within_one_prompt_of_the_weights(weights):
    # Stated tolerance: after any N draws each source has w_s * N prompts, within less than one.
    assert _max_quota_error(weights, 1000) < 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=2, max_size=8))
def test_mixture_quota_property_for_random_weights(ws):
    assert _max_quota_error({f"s{i}": w for i, w in enumerate(ws)}, 300) < 1


def test_mixture_default_weights_are_the_papers_domain_counts():
    sources = {
        "dm": [{"id": "m", "domain": "math"}],
        "rg1": [{"id": "l1", "domain": "logic"}],
        "rg2": [{"id": "l2", "domain": "logic"}],
        "if": [{"id": "i", "domain": "ifeval"}],
    }
    assert data.default_weights(sources) == {"dm": 40_000, "rg1": 18_500, "rg2": 18_500, "if": 10_000}
    m = data.Mixture(sources, seed=0)
    assert m.weights["dm"] == pytest.approx(40 / 87)
    with pytest.raises(ValueError, match="mixes domains"):
        data.default_weights({"x": [{"id": "1", "domain": "math"}, {"id": "2", "domain": "code"}]})


def test_mixture_refuses_a_state_from_other_data():
    m = data.Mixture(_sources({"a": 5, "b": 6}), seed=0)
    state = m.state_dict()
    with pytest.raises(ValueError, match="source 'a' had 5 tasks, now 4"):
        data.Mixture(_sources({"a": 4, "b": 6}), seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="seed 0"):
        data.Mixture(_sources({"a": 5, "b": 6}), seed=1).load_state_dict(state)


ORDER_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import data
    sources = data.load_spec("rg:basic_arithmetic:n=30,logic=rg:graph_color:n=20", seed=int(sys.argv[2]))
    m = data.Mixture(sources, seed=int(sys.argv[2]))
    print(json.dumps([t["id"] + "|" + t["rg_entry"]["question"] for t in m.next_batch(60)]))
""")


@pytest.mark.slow
def test_same_seed_gives_the_same_order_in_two_processes():
    def order(seed, hashseed):
        out = subprocess.run(
            [sys.executable, "-c", ORDER_SCRIPT, str(ROOT), str(seed)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hashseed},
        )
        return json.loads(out.stdout)

    first = order(5, "1")
    assert first == order(5, "2")  # hash randomisation must not leak into the order
    assert first != order(6, "1")


# --------------------------------------------------------------------------- gold round trip (rewards.py)


def _think(answer_text: str) -> str:
    return f"<think>\nlet me work this out step by step.\n</think>\n\n{answer_text}"


def _greedy_coloring(puzzle: dict) -> dict:
    neighbours = {v: set() for v in puzzle["vertices"]}
    for u, v in puzzle["edges"]:
        neighbours[u].add(v)
        neighbours[v].add(u)
    colors = {}
    for v in puzzle["vertices"]:
        used = {colors[u] for u in neighbours[v] if u in colors}
        colors[v] = next(c for c in puzzle["color_options"] if c not in used)
    return {str(v): c for v, c in colors.items()}


def _boxnet_plan(state: dict) -> list[dict]:
    """Move every box one square per step (row first, then column) to a target of its colour, then match it.
    One action per step, so no two agents ever conflict. Squares are keyed "row_col" as in RG's metadata."""
    state = {k: list(v) for k, v in state.items()}
    plan = []
    for square in list(state):
        for box in [item for item in state[square] if item.startswith("box_")]:
            colour = box[4:]
            target = next(s for s, items in state.items() if f"target_{colour}" in items)
            (r, c), (tr, tc) = (map(float, square.split("_")), map(float, target.split("_")))
            while (r, c) != (tr, tc):
                nr, nc = (r + (1 if tr > r else -1), c) if r != tr else (r, c + (1 if tc > c else -1))
                plan.append({f"Agent[{r}, {c}]": f"move({box}, square[{nr}, {nc}])"})
                r, c = nr, nc
            plan.append({f"Agent[{r}, {c}]": f"move({box}, target_{colour})"})
            state[target].remove(f"target_{colour}")
    return plan


@pytest.mark.slow
def test_math_stem_and_logic_gold_answers_score_one():
    import rewards

    for task in load("deepscaler")[0] + load("scp116k")[0]:
        assert rewards.score(_think(f"The final answer is \\boxed{{{task['answer']}}}."), task) == 1.0, task[
            "id"
        ]
    for task in load("gpqa")[0]:
        assert rewards.score(_think(f"The correct option is \\boxed{{{task['answer']}}}."), task) == 1.0, (
            task["id"]
        )
    for name in ("basic_arithmetic", "leg_counting", "spell_backward", "word_sorting"):
        for task in data.reasoning_gym_tasks(name, 3, 0):
            assert rewards.score(_think(f"<answer>{task['rg_entry']['answer']}</answer>"), task) == 1.0, task[
                "id"
            ]


def test_graph_color_and_boxnet_constructed_solutions_score_one():
    import reasoning_gym

    import rewards

    for task in data.ood_suite("graph_color", size=12, n=5) + data.ood_suite("graph_color", size=20, n=3):
        answer = json.dumps(_greedy_coloring(task["rg_entry"]["metadata"]["puzzle"]))
        assert rewards.score(_think(f"<answer>{answer}</answer>"), task) == 1.0, task["id"]
    boxnet_score = reasoning_gym.get_score_answer_fn("boxnet")
    for task in data.ood_suite("boxnet", n=5, min_box_num=1, max_box_num=2):
        answer = json.dumps(_boxnet_plan(task["rg_entry"]["metadata"]["initial_state"]))
        assert boxnet_score(answer, task["rg_entry"]) == 1.0  # the plan itself is right (RG's own scorer)
        assert rewards.score(_think(f"<answer>{answer}</answer>"), task) == 1.0, task["id"]


def test_ifeval_gold_responses_score_one():
    import rewards

    responses = {
        "nemotron_if/nemotron_if/1": "the lake lay still under a pale sky. mist drifted over the water and a heron waited.",
        "nemotron_if/nemotron_if/2": "<<steam and leaves>>\nwarm cup in my hands\nleaves unfold in quiet water\nthe day begins slowly",
        "nemotron_if/nemotron_if/3": (
            "Cats purr when they feel relaxed and safe, and they sometimes purr to soothe "
            "themselves when hurt.\n\nP.S. Kittens start purring when they are a few days old."
        ),
        "ifeval/ifeval/1": "Rivers carry water from the hills to the sea. They carve valleys over many years.",
        "ifeval/ifeval/2": "jupiter is the largest planet in our solar system.",
        "ifeval/ifeval/3": "<<the bicycle>>\nA bicycle has two wheels and a frame and pedals that turn a chain.",
    }
    tasks = load("nemotron_if")[0] + load("ifeval")[0]
    assert sorted(t["id"] for t in tasks) == sorted(responses)
    for task in tasks:
        assert rewards.score(_think(responses[task["id"]]), task) == 1.0, task["id"]


@pytest.mark.slow
def test_code_gold_programs_score_one():
    import rewards

    programs = {
        "eurus2_code/eurus2_code/1": "a, b = map(int, input().split())\nprint(a + b)\n",
        "eurus2_code/eurus2_code/2": "def count_vowels(s):\n    return sum(ch in 'aeiou' for ch in s)\n",
    }
    tasks, _ = data.filter_tasks(load("eurus2_code")[0])
    assert sorted(t["id"] for t in tasks) == sorted(programs)
    completions = [_think(f"Here is my solution.\n```python\n{programs[t['id']]}```") for t in tasks]
    assert rewards.score_batch(completions, tasks, workers=2) == [1.0, 1.0]
    wrong = [_think("```python\nprint(0)\n```")] * len(tasks)
    assert max(rewards.score_batch(wrong, tasks, workers=2)) < 1.0
