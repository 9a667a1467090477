"""embedded.py: the miniature's tokenizer, model, worked solutions, warm start and held-out suites.

Run: .venv/bin/pytest tests/test_embedded.py -q
"""
import itertools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import data
import embedded as E
import rewards
import train

CORPUS_N = 60  # tasks per MINI_TASKS entry in the tests' tokenizer corpus (the default builds on 500)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mini_tok")
    E.build_tokenizer(d, corpus_n=CORPUS_N)
    return d


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("mini_base")
    E.build_model(d, tokenizer, seed=0)
    return d


def some_tasks(n=5, seed=123):
    return E.mini_tasks(n, seed)


# ------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trips_prompt_and_solution(tokenizer):
    for task in some_tasks():
        text = data.format_prompt(task, tokenizer) + E.worked_solution(task) + E.IM_END
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        # the completion decoded on its own (as vLLM does, special tokens skipped) is the solution
        completion = tokenizer.encode(E.worked_solution(task), add_special_tokens=False) + [tokenizer.eos_token_id]
        assert tokenizer.decode(completion, skip_special_tokens=True) == E.worked_solution(task)


def test_model_dir_tokenizer_encodes_like_the_trained_one(tokenizer, base_dir):
    # transformers loads a tokenizer saved next to a qwen2 config as Qwen2Tokenizer, which rebuilds the
    # pre-tokenizer; vLLM and train.py see that one, so it must split text exactly as the trained one does
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(base_dir))
    for task in some_tasks(4):
        text = data.format_prompt(task, tokenizer) + E.worked_solution(task) + E.IM_END
        assert reloaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert reloaded.eos_token_id == tokenizer.eos_token_id and reloaded.pad_token_id == tokenizer.pad_token_id


def test_tokenizer_special_tokens_and_digits(tokenizer):
    assert tokenizer.eos_token == E.IM_END and tokenizer.pad_token == E.PAD and tokenizer.bos_token == E.PAD
    for special in E.SPECIAL_TOKENS:
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1
    assert len({tokenizer.convert_tokens_to_ids(s) for s in E.SPECIAL_TOKENS}) == 3
    # digits are never merged: "1234" is four tokens, each one digit
    ids = tokenizer.encode("1234", add_special_tokens=False)
    assert [tokenizer.decode([i]) for i in ids] == ["1", "2", "3", "4"]
    assert len(tokenizer) <= E.VOCAB_SIZE
    # bytes the corpus never showed still encode (byte-level alphabet)
    assert tokenizer.decode(tokenizer.encode("é∑", add_special_tokens=False)) == "é∑"


def test_fixed_prompt_text_is_one_token_and_prompts_fit_the_budget(tokenizer):
    phrases = E.prompt_phrases(E.mini_tasks(CORPUS_N, E.SFT_DATA_SEED))
    assert len(phrases) == 2 * len(E.MINI_TASKS)  # an opening and a closing per task
    assert all(not p[-1].isdigit() for p in phrases)  # numbers are never swallowed into a phrase
    for phrase in phrases:
        assert len(tokenizer.encode(phrase, add_special_tokens=False)) == 1
    budget = train.Config().max_prompt_tokens  # the miniature's RL prompt budget
    for task in E.mini_tasks(30, 99):
        assert len(tokenizer.encode(data.format_prompt(task, tokenizer), add_special_tokens=False)) <= budget


def test_chat_template_renders_qwen_markers(tokenizer):
    messages = [{"role": "user", "content": "Calculate 1 + 2."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nCalculate 1 + 2.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False) == (
        "<|im_start|>user\nCalculate 1 + 2.<|im_end|>\n"
    )
    for task in some_tasks(2):
        assert data.format_prompt(task, tokenizer) == E.render_chat(task["prompt"])


# ------------------------------------------------------------------------------------------- model
def test_model_loads_in_transformers_with_head_dim_64(base_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    cfg = model.config
    assert cfg.model_type == "qwen2"
    assert cfg.hidden_size // cfg.num_attention_heads == 64  # vLLM CPU attention needs head_dim >= 64
    assert cfg.vocab_size == len(tokenizer) and cfg.eos_token_id == tokenizer.eos_token_id
    assert cfg.max_position_embeddings >= E.MAX_POSITION_EMBEDDINGS
    ids = torch.tensor([tokenizer.encode("Calculate 1 + 2.")])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    gen = json.loads((base_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tokenizer.eos_token_id


def test_unknown_model_size_is_rejected(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="known sizes"):
        E.build_model(tmp_path, tokenizer, size="huge")


def test_same_seed_same_build_other_seed_other_weights(tmp_path, tok_dir, tokenizer, base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    E.build_tokenizer(tmp_path / "tok", corpus_n=CORPUS_N)
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok")).get_vocab() == tokenizer.get_vocab()
    E.build_model(tmp_path / "same", tokenizer, seed=0)
    E.build_model(tmp_path / "other", tokenizer, seed=1)
    ref = AutoModelForCausalLM.from_pretrained(str(base_dir)).state_dict()
    same = AutoModelForCausalLM.from_pretrained(str(tmp_path / "same")).state_dict()
    other = AutoModelForCausalLM.from_pretrained(str(tmp_path / "other")).state_dict()
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert not torch.equal(ref["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


# ------------------------------------------------------------------------------------------- solutions
SOLUTION_CASES = [(name, cfg) for name, cfg in E.MINI_TASKS] + [
    ("graph_color", {"min_num_vertices": v, "max_num_vertices": v, **E.GRAPH_COLOR})
    for v in range(E.TRAIN_VERTICES[0], E.EVAL_VERTICES[1] + 1)
]


@pytest.mark.parametrize("name,cfg", SOLUTION_CASES, ids=[f"{n}-{c.get('max_num_vertices', '')}" for n, c in SOLUTION_CASES])
def test_worked_solution_scores_one(name, cfg):
    import reasoning_gym
    from reasoning_gym.utils import extract_answer

    tasks = data.reasoning_gym_tasks(name, 40, 7, **cfg)
    rg_score = reasoning_gym.get_score_answer_fn(name)
    for trace in E.GRAPH_COLOR_TRACES if name == "graph_color" else [E.GRAPH_COLOR_TRACE]:
        completions = [E.worked_solution(t, trace) for t in tasks]
        for task, completion in zip(tasks, completions):
            think, answer = completion.split("</think>")
            assert think.startswith("<think>\n")
            assert rg_score(extract_answer(answer), task["rg_entry"]) == 1.0
        assert rewards.score_batch(completions, tasks, workers=1) == [1.0] * len(tasks)


def test_worked_solutions_show_the_steps():
    chain = data.reasoning_gym_tasks("chain_sum", 1, 0, min_terms=3, max_terms=3, min_digits=1, max_digits=1)[0]
    a, op1, b, op2, c = chain["rg_entry"]["metadata"]["expression"].split()
    ab = int(a) + int(b) if op1 == "+" else int(a) - int(b)
    assert E.worked_solution(chain).startswith(f"<think>\n{a}{op1}{b}={ab} {ab}{op2}{c}=")
    legs = data.reasoning_gym_tasks("leg_counting", 1, 0, min_animals=2, max_animals=2, max_instances=3)[0]
    assert E.worked_solution(legs).endswith(f"={legs['rg_entry']['answer']}\n</think>\n<answer>{legs['rg_entry']['answer']}</answer>")


def test_graph_color_traces_known_graph():
    # 7 vertices, edges as RG lists them; greedy in vertex order: 0=1 1=1 2=2 3=2 4=2 5=1 6=1
    edges = [[0, 2], [0, 3], [1, 4], [2, 6], [3, 6]]
    entry = {"metadata": {"puzzle": {"vertices": list(range(7)), "edges": edges, "color_options": [1, 2, 3],
                                     "num_colors": 3}}}
    answer = '{"0":1,"1":1,"2":2,"3":2,"4":2,"5":1,"6":1}'
    assert E._graph_color_steps(entry, "neighbours") == (
        "0:>1\n1:>1\n2:0=1>2\n3:0=1>2\n4:1=1>2\n5:>1\n6:2=2 3=2>1", answer)
    assert E._graph_color_steps(entry, "marks") == (
        "0=1 2/1 3/1\n1=1 4/1\n2=2 6/2\n3=2 6/2\n4=2\n5=1\n6=1", answer)
    with pytest.raises(ValueError, match="known traces"):
        E._graph_color_steps(entry, "edges")


@pytest.mark.parametrize("vertices", [4, 7, 10])
def test_marks_trace_is_the_same_local_step_at_every_size(vertices):
    """What the "marks" trace promises: each line's marks are the prompt's run of edges (v, w), in the prompt's
    order, each marked with v's colour, and v's colour is the smallest no mark "v/c" above it forbids."""
    tasks = data.reasoning_gym_tasks("graph_color", 30, 11, min_num_vertices=vertices, max_num_vertices=vertices,
                                     **E.GRAPH_COLOR)
    for task in tasks:
        puzzle = task["rg_entry"]["metadata"]["puzzle"]
        think = E.worked_solution(task, "marks").split("\n</think>")[0].removeprefix("<think>\n")
        lines = think.split("\n")
        assert len(lines) == vertices
        forbidden = {v: set() for v in range(vertices)}
        for v, line in enumerate(lines):
            head, *marks = line.split(" ")
            colour = min(c for c in puzzle["color_options"] if c not in forbidden[v])
            assert head == f"{v}={colour}"
            assert marks == [f"{w}/{colour}" for u, w in puzzle["edges"] if u == v]
            assert f"({v}, " not in task["rg_entry"]["question"] or marks  # a vertex with edges has marks
            for w, _ in (m.split("/") for m in marks):
                forbidden[int(w)].add(colour)


def test_trace_counts_and_schedule_are_part_of_the_build_fingerprint(tmp_path, monkeypatch):
    import transformers

    built = []

    def record(path, fingerprint, what, fn):  # stamp the directory as built, build nothing
        built.append(what)
        path.mkdir(parents=True, exist_ok=True)
        (path / E.STAMP).write_text(json.dumps({"fingerprint": fingerprint}))

    monkeypatch.setattr(E, "_build", record)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", staticmethod(lambda *a, **k: None))
    everything = ["tokenizer", "base model", "warm start"]
    E.ensure_base(tmp_path)
    assert built == everything
    E.ensure_base(tmp_path, graph_color_trace=E.GRAPH_COLOR_TRACE)
    assert built == everything  # cached
    other = next(t for t in E.GRAPH_COLOR_TRACES if t != E.GRAPH_COLOR_TRACE)
    E.ensure_base(tmp_path, graph_color_trace=other)
    assert built == everything * 2  # another trace: another tokenizer corpus, so everything is rebuilt
    with pytest.raises(ValueError, match="graph_color_trace='edges'"):
        E.ensure_base(tmp_path, graph_color_trace="edges")
    # the warm start's data counts and schedule rebuild the warm start only
    E.ensure_base(tmp_path, sft_n=dict(E.SFT_N))
    assert built == everything * 3  # back to the default trace; the same counts as the default warm start
    E.ensure_base(tmp_path, sft_n={**E.SFT_N, "chain_sum": 7})
    assert built == everything * 3 + ["warm start"]
    E.ensure_base(tmp_path, sft_n={**E.SFT_N, "chain_sum": 7}, sft_lr_final=0.5)
    assert built == everything * 3 + ["warm start"] * 2
    with pytest.raises(ValueError, match="sft_n"):
        E.ensure_base(tmp_path, sft_n={"graph_color": 5})
    with pytest.raises(ValueError, match="sft_lr_final"):
        E.ensure_base(tmp_path, sft_lr_final=0)


def test_worked_solution_rejects_other_tasks():
    task = data.reasoning_gym_tasks("basic_arithmetic", 1, 0)[0]
    with pytest.raises(ValueError, match="basic_arithmetic"):
        E.worked_solution(task)


def test_color_graph_known_answers():
    from reasoning_gym.algorithmic.graph_color import greedy_graph_coloring, verify_graph_coloring_solution

    assert E.color_graph(3, [(0, 1), (1, 2), (0, 2)], [1, 2, 3]) == {0: 1, 1: 2, 2: 3}
    k4 = list(itertools.combinations(range(4), 2))
    assert E.color_graph(4, k4, [1, 2, 3]) is None
    # greedy in vertex order gives 0=1 1=1 2=2 3=3 and then 4 (next to 0, 2, 3) has no colour left;
    # backtracking finds 0=2 1=1 2=1 3=2 4=3
    edges = [(0, 2), (1, 3), (2, 3), (0, 4), (2, 4), (3, 4)]
    puzzle = {"vertices": list(range(5)), "edges": edges, "color_options": [1, 2, 3]}
    assert greedy_graph_coloring(puzzle) is None
    found = E.color_graph(5, edges, [1, 2, 3])
    assert found is not None and verify_graph_coloring_solution(puzzle, found)[0]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 7).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=15))))
def test_color_graph_is_proper_exactly_when_a_colouring_exists(graph):
    n, raw = graph
    edges = sorted({(min(u, v), max(u, v)) for u, v in raw if u != v})
    colours = [1, 2, 3]
    exists = any(all(c[u] != c[v] for u, v in edges) for c in itertools.product(colours, repeat=n))
    found = E.color_graph(n, edges, colours)
    assert (found is not None) == exists
    if found is not None:
        assert sorted(found) == list(range(n)) and set(found.values()) <= set(colours)
        assert all(found[u] != found[v] for u, v in edges)


# ------------------------------------------------------------------------------------------- specs and suites
def test_train_spec_has_one_source_per_task_at_the_training_sizes():
    sources = data.load_spec(E.MINI_TRAIN_SPEC.replace(f":n={E.RL_N}", ":n=50"))
    assert sorted(sources) == sorted(name for name, _ in E.MINI_TASKS)
    sizes = {t["rg_entry"]["metadata"]["num_vertices"] for t in sources["graph_color"]}
    assert sizes <= set(range(E.TRAIN_VERTICES[0], E.TRAIN_VERTICES[1] + 1)) and len(sizes) > 1


def test_warm_start_tasks_add_a_few_larger_graphs_that_rl_never_sees():
    tasks = E.sft_tasks(20, E.SFT_DATA_SEED, n_large=40)
    graphs = [t for t in tasks if t["rg_task"] == "graph_color"]
    sizes = [t["rg_entry"]["metadata"]["num_vertices"] for t in graphs]
    small = set(range(E.TRAIN_VERTICES[0], E.TRAIN_VERTICES[1] + 1))
    large = set(range(E.SFT_LARGE_VERTICES[0], E.SFT_LARGE_VERTICES[1] + 1))
    assert sum(s in small for s in sizes) == 20 and sum(s in large for s in sizes) == 40
    assert len(tasks) == 20 * len(E.MINI_TASKS) + 40 and len({t["id"] for t in tasks}) == len(tasks)
    assert min(E.SFT_LARGE_VERTICES) > max(E.TRAIN_VERTICES)  # RL's sizes and the extra sizes do not overlap


def test_warm_start_counts_per_task_are_prefixes_of_the_same_stream():
    """SFT_N gives each task its own count; a smaller count is a prefix of a larger one (RG: entry i from seed + i)."""
    counts = {"graph_color": 12, "chain_sum": 5, "leg_counting": 3}
    tasks = E.sft_tasks(counts, E.SFT_DATA_SEED, n_large=0)
    by_task = {name: [t["rg_entry"]["question"] for t in tasks if t["rg_task"] == name] for name in counts}
    assert {name: len(q) for name, q in by_task.items()} == counts
    full = E.sft_tasks(12, E.SFT_DATA_SEED, n_large=0)
    for name in counts:
        assert by_task[name] == [t["rg_entry"]["question"] for t in full if t["rg_task"] == name][: counts[name]]
    with pytest.raises(ValueError, match="chain_sum"):
        E.sft_tasks({"graph_color": 3, "leg_counting": 3}, E.SFT_DATA_SEED)


def test_sft_learning_rate_warms_up_then_follows_a_cosine_to_the_final_fraction():
    f = E.sft_lr_factor
    assert [f(s, 110, warmup=10, final=0.1) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10, 110, warmup=10, final=0.1) == pytest.approx(1.0)  # the cosine starts at the peak
    assert f(60, 110, warmup=10, final=0.1) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert f(35, 110, warmup=10, final=0.1) == pytest.approx(0.1 + 0.9 * (1 + 2 ** -0.5) / 2)  # a quarter: cos = 1/sqrt 2
    assert f(110, 110, warmup=10, final=0.1) == pytest.approx(0.1)
    lrs = [f(s, 110, warmup=10, final=0.1) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # never rises after the warm-up


def test_exact_vertices_changes_scoring_but_no_build_fingerprint(monkeypatch):
    strict = [(name, {**cfg, "exact_vertices": True} if name == "graph_color" else cfg) for name, cfg in E.MINI_TASKS]
    lenient = [(name, {k: v for k, v in cfg.items() if k != "exact_vertices"}) for name, cfg in E.MINI_TASKS]
    prints = []
    for tasks in (strict, lenient):
        monkeypatch.setattr(E, "MINI_TASKS", tasks)
        prints.append(E._fingerprint(stage="warmstart", steps=1))
    assert prints[0] == prints[1]  # flipping EXACT_VERTICES reuses the cached tokenizer, model and warm start
    monkeypatch.setattr(E, "MINI_TASKS", [(n, {**c, "edge_probability": 0.5}) for n, c in lenient])
    assert E._fingerprint(stage="warmstart", steps=1) != prints[0]  # a real task change still rebuilds
    # the option reaches the tasks: a strict default scores an over-long answer wrong
    task = data.reasoning_gym_tasks("graph_color", 1, 0, **dict(strict)["graph_color"])[0]
    n = len(task["rg_entry"]["metadata"]["puzzle"]["vertices"])
    answer = json.dumps({str(v): c for v, c in E.color_graph(n, task["rg_entry"]["metadata"]["puzzle"]["edges"], [1, 2, 3]).items()})
    assert rewards.score_details(f"<answer>{answer}</answer>", task)[0] == 1.0
    longer = json.dumps({**json.loads(answer), str(n): 1})
    assert rewards.score_details(f"<answer>{longer}</answer>", task)[0] < 1.0


@pytest.mark.slow
def test_eval_suites_are_held_out_and_cover_larger_graphs():
    suites = E.mini_eval_suites(n=30)
    names = [f"graph_color_v{v}" for v in range(E.EVAL_VERTICES[0], E.EVAL_VERTICES[1] + 1)]
    assert set(suites) == {name for name, _ in E.MINI_TASKS if name != "graph_color"} | set(names)
    seen = E.seen_in_training()
    for name, tasks in suites.items():
        assert tasks, name
        assert not {E.question_key(t) for t in tasks} & seen, name
    for v in range(E.EVAL_VERTICES[0], E.EVAL_VERTICES[1] + 1):
        assert {t["rg_entry"]["metadata"]["num_vertices"] for t in suites[f"graph_color_v{v}"]} == {v}
    # small graphs are few (2^15 edge sets at 6 vertices, most of them unlikely at edge probability 0.3):
    # some held-out draws repeat training problems and are removed; 10-vertex graphs never do
    assert len(suites["graph_color_v6"]) < 30 == len(suites["graph_color_v10"])


# ------------------------------------------------------------------------------------------- warm start
@pytest.mark.slow
def test_tiny_warm_start_reduces_the_sft_loss(tmp_path, base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, losses = E.warm_start(tmp_path / "ws", base_dir, steps=10, batch_size=4, n_per_task=6, seed=0,
                               n_large=6)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 1.0, losses  # ~1.4 nats in practice; a model that learns nothing stays near ln(vocab)
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    task = some_tasks(1)[0]
    batch = E.sft_batch(E.sft_examples(tok, [task]), tok.pad_token_id)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    with torch.no_grad():
        assert E.sft_loss(model, batch) < E.sft_loss(base, batch)


def test_sft_batch_masks_the_prompt():
    ids, labels, mask = E.sft_batch([([5, 6, 7], [8, 9]), ([5], [10])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [5, 10, 0, 0, 0]]
    assert labels.tolist() == [[-100, -100, -100, 8, 9], [-100, 10, -100, -100, -100]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
