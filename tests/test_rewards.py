"""Properties of rewards.py: known-answer tables per domain, a hostile-program corpus
against the real bubblewrap sandbox, worker-pool recovery, and fuzzing with hypothesis.

Everything runs the real verifiers (math-verify, reasoning-gym, langdetect, punkt)
and the real sandbox. Without bwrap, sandbox tests skip outside CI and FAIL under
CI=true (.ci/run installs bubblewrap).
"""
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rewards

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="module")
def sandbox():
    """The real sandbox, or a skip (outside CI) / failure (CI) naming what is missing."""
    if shutil.which("bwrap") is None:
        message = "bubblewrap (bwrap) is not installed: apt-get install -y bubblewrap"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    rewards.check_sandbox()


def code_task(tests, time_limit=None, task_id="code"):
    task = {"id": task_id, "domain": "code", "tests": tests}
    if time_limit is not None:
        task["time_limit"] = time_limit
    return task


def fenced(program: str) -> str:
    return f"Here is my solution.\n```python\n{program}\n```\n"


# --------------------------------------------------------------------------- math

MATH_CASES = [  # (gold, completion, reward)
    ("4", "\\boxed{4}", 1.0),
    ("\\frac{1}{2}", "\\boxed{0.5}", 1.0),
    ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "\\boxed{1/2}", 1.0),
    ("\\frac{1}{3}", "\\boxed{0.3333}", 0.0),
    ("\\frac{2}{4}", "\\boxed{\\frac12}", 1.0),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", 1.0),
    ("\\sqrt{2}", "\\boxed{\\sqrt{3}}", 0.0),
    ("50\\%", "\\boxed{50}", 1.0),
    ("50\\%", "\\boxed{0.5}", 1.0),
    ("\\pi", "\\boxed{3.14159265}", 1.0),
    ("\\pi", "\\boxed{3}", 0.0),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", 1.0),
    ("x^2+1", "\\boxed{(x+1)^2}", 0.0),
    ("\\{1,2,3\\}", "\\boxed{\\{3,2,1\\}}", 1.0),
    ("\\{1,2,3\\}", "\\boxed{\\{1,2\\}}", 0.0),
    ("(1,3]", "\\boxed{(1,3]}", 1.0),
    ("(1,3]", "\\boxed{[1,3]}", 0.0),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}", 1.0),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\boxed{\\begin{pmatrix}1&2\\\\4&3\\end{pmatrix}}", 0.0),
    ("x=5", "\\boxed{5}", 1.0),
    ("y=2x+1", "\\boxed{y=1+2x}", 1.0),
    ("10", "\\boxed{10\\text{ cm}}", 1.0),
    ("10", "\\boxed{11}", 0.0),
    ("-3", "\\boxed{-3}", 1.0),
    ("-3", "\\boxed{3}", 0.0),
    ("1000", "\\boxed{1,000}", 1.0),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt3}{2}}", 1.0),
    ("\\frac{3}{4}", "\\boxed{\\dfrac{3}{4}}", 1.0),
    ("e^{2}", "\\boxed{e^2}", 1.0),
    ("\\infty", "\\boxed{\\infty}", 1.0),
    ("3", "\\boxed{\\text{three}}", 0.0),
    # extraction: "answer is" phrase, reasoning stripped, last box wins, no answer
    ("2", "The final answer is $2$.", 1.0),
    ("2", "The answer is: 3", 0.0),
    ("7", "<think>maybe \\boxed{7}</think> so \\boxed{8}", 0.0),
    ("7", "<think>hmm</think>\n\\boxed{8} no wait, \\boxed{7}", 1.0),
    ("7", "<think>the answer is \\boxed{7}", 0.0),     # reasoning never closed
    ("7", "7", 0.0),                                   # no box, no phrase: no answer
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2", 0.0),        # unbalanced box
    ("1", "\\boxed{" + "1+" * 600 + "0}", 0.0),          # an "answer" too long to be one
]


def test_math_known_answers_through_score_batch():
    tasks = [{"id": f"math/{i}", "domain": "math", "answer": gold} for i, (gold, _, _) in enumerate(MATH_CASES)]
    got = rewards.score_batch([c for _, c, _ in MATH_CASES], tasks)
    wrong = [(case, g) for case, g in zip(MATH_CASES, got) if g != case[2]]
    assert not wrong, wrong


def test_last_boxed_balances_nested_braces():
    assert rewards.last_boxed("a \\boxed{1} b \\boxed{\\frac{a}{b^{2}}} c") == "\\frac{a}{b^{2}}"
    assert rewards.last_boxed("\\boxed 5$") == "5"
    assert rewards.last_boxed("\\boxed{unclosed") is None
    assert rewards.last_boxed("nothing") is None


# --------------------------------------------------------------------------- stem

CHOICES = ["12", "15", "42", "7"]
STEM_FORMATS = [  # (completion, reward) with gold "C"
    ("The answer is (C).", 1.0),
    ("\\boxed{C}", 1.0),
    ("Answer: C", 1.0),
    ("**C**", 1.0),
    ("(C)", 1.0),
    ("C.", 1.0),
    ("Answer: **C**", 1.0),
    ("ANSWER: C", 1.0),
    ("The correct answer is C) 42", 1.0),
    ("\\boxed{(C)}", 1.0),
    ("\\boxed{\\text{C}}", 1.0),
    ("<answer>C</answer>", 1.0),
    ("So the answer is option C.", 1.0),
    ("Thus\n\nC) 42", 1.0),
    ("\\boxed{42}", 1.0),                       # boxed the text of choice C
    ("<think>The answer is (C)</think>The answer is (B).", 0.0),
    ("The answer is (B).", 0.0),
    ("I cannot decide.", 0.0),
    ("The answer is a prime number.", 0.0),     # "a" names no choice
    ("\\boxed{K}", 0.0),                        # not one of the 4 letters
]


def test_stem_choice_formats():
    task = {"id": "stem/mc", "domain": "stem", "answer": "C", "choices": CHOICES}
    got = rewards.score_batch([c for c, _ in STEM_FORMATS], [task] * len(STEM_FORMATS))
    wrong = [(case, g) for case, g in zip(STEM_FORMATS, got) if g != case[1]]
    assert not wrong, wrong


def test_stem_free_form_goes_through_math_checker():
    task = {"id": "stem/free", "domain": "stem", "answer": "6.02\\times10^{23}"}
    assert rewards.score("\\boxed{6.02 \\times 10^{23}}", task) == 1.0
    assert rewards.score("\\boxed{6.02 \\times 10^{22}}", task) == 0.0


# --------------------------------------------------------------------------- ifeval

IF_CASES = [  # (instruction id, kwargs, followed response, violating response)
    ("keywords:existence", {"keywords": ["banana", "apple"]}, "I like apple and Banana.", "I like apple."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"},
     "cat, cat and a CAT", "cat and cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "Badminton is good.", "That is bad."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"},
     "a zebra", "zig Zag"),
    ("language:response_language", {"language": "de"},
     "Heute ist ein schöner Tag und ich gehe mit meinem Hund im Park spazieren.",
     "Today is a beautiful day and I am walking my dog in the park."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith came. He left.", "One. Two. Three. Four."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.",
     "First.\n***\n***\nSecond."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"},
     "one two three four five", "one two"),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First part.\n\n\"Then, second.\"", "First part.\n\nAfter that, second."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].",
     "Dear [name]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. see you", "Hello."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\n\nP.P.S. more", "Hi. P.S. one"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "List:\n* a\n* b", "* a\n- b\n* c"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**",
     "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nhello\nSection 2\nworld", "Section 1\nhello"),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', "{a: 1}"),
    ("detectable_format:title", {}, "<<A Poem>>\nroses", "A Poem\nroses"),
    ("combination:two_responses", {}, "first\n******\nsecond", "first\n******\nfirst"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses are red.",
     "Roses are red."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?\"",
     "Any other questions? Bye."),
    ("startend:quotation", {}, '"quoted"', 'quoted"'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is VERY good", "This is Very good"),
    ("change_case:english_capital", {}, "THIS IS AN ENGLISH SENTENCE ABOUT THE WEATHER.",
     "THIS IS AN ENGLISH SENTENCE about the weather."),
    ("change_case:english_lowercase", {}, "this is an english sentence about the weather.",
     "This is an English sentence about the weather."),
    ("punctuation:no_comma", {}, "no commas here", "one, two"),
]


def test_every_ifeval_family_has_a_case():
    assert {case[0] for case in IF_CASES} == set(rewards.IFEVAL_CHECKERS)


@pytest.mark.parametrize("instruction_id,kwargs,followed,violated", IF_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(IF_CASES)])
def test_ifeval_checker_passes_and_fails(instruction_id, kwargs, followed, violated):
    assert rewards.ifeval_score(followed, [instruction_id], [kwargs]) == (1.0, [True])
    assert rewards.ifeval_score(violated, [instruction_id], [kwargs]) == (0.0, [False])


def test_ifeval_reward_is_fraction_followed_and_ignores_reasoning():
    task = {"id": "if/1", "domain": "ifeval",
            "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase",
                                    "length_constraints:number_words"],
            # IFEval rows carry every argument name, unused ones as None
            "kwargs": [{"num_words": None}, {}, {"num_words": 3, "relation": "at least", "keyword": None}]}
    completion = "<think>Thinking, with Capitals, commas.</think>all lower case, one comma"
    assert rewards.score(completion, task) == pytest.approx(2 / 3)
    assert rewards.score("<think>never closed, all lower case", task) == 0.0


def test_ifeval_loose_removes_first_line_and_asterisks():
    response = "Sure, here it is:\n\"**quoted**\""
    assert rewards.ifeval_score(response, ["startend:quotation"], [{}]) == (0.0, [False])
    assert rewards.ifeval_score(response, ["startend:quotation"], [{}], loose=True) == (1.0, [True])
    assert rewards.ifeval_score("*a*, b", ["punctuation:no_comma"], [{}], loose=True) == (0.0, [False])


def test_ifeval_bad_task_names_the_problem():
    with pytest.raises(ValueError, match="unknown IFEval instruction id"):
        rewards.validate_task({"id": "x", "domain": "ifeval", "instruction_id_list": ["nope:nope"],
                               "kwargs": [{}]})
    with pytest.raises(ValueError, match="num_words"):
        rewards.validate_task({"id": "x", "domain": "ifeval",
                               "instruction_id_list": ["length_constraints:number_words"],
                               "kwargs": [{"relation": "at least"}]})


# --------------------------------------------------------------------------- logic


def test_logic_uses_reasoning_gym_scorer():
    import reasoning_gym

    entry = json.loads(json.dumps(reasoning_gym.create_dataset("basic_arithmetic", seed=3, size=1)[0]))
    task = {"id": "rg/basic_arithmetic/0", "domain": "logic", "rg_task": "basic_arithmetic", "rg_entry": entry}
    wrong = str(int(entry["answer"]) + 1)
    graph = json.loads(json.dumps(reasoning_gym.create_dataset("graph_color", seed=3, size=1)[0]))
    graph_task = {"id": "rg/graph_color/0", "domain": "logic", "rg_task": "graph_color", "rg_entry": graph}
    right_colouring = json.dumps(graph["metadata"]["possible_answer"])
    completions = [f"<think>x</think><answer>{entry['answer']}</answer>",
                   f"<answer>{wrong}</answer>",
                   f"The answer is {entry['answer']}",          # no <answer> tag: no answer
                   f"<answer>{wrong}</answer> <answer>{entry['answer']}</answer>",   # last tag counts
                   f"<answer>{right_colouring}</answer>",
                   "<answer>{\"0\": 1}</answer>"]                # valid JSON, wrong colouring
    got = rewards.score_batch(completions, [task] * 4 + [graph_task] * 2)
    assert got[:5] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert 0.0 < got[5] < 1.0 and not rewards.is_correct(got[5])  # continuous partial credit


def test_graph_color_exact_vertices_rejects_colouring_vertices_the_graph_lacks():
    import reasoning_gym

    ds = reasoning_gym.create_dataset("graph_color", min_num_vertices=4, max_num_vertices=4, edge_probability=0.3,
                                      seed=5, size=1)
    entry = json.loads(json.dumps(ds[0]))
    assert entry["metadata"]["puzzle"]["edges"] == [[2, 3]]  # known graph: any colouring with 2 != 3 is proper
    lenient = {"id": "g", "domain": "logic", "rg_task": "graph_color", "rg_entry": entry}
    strict = {**lenient, "exact_vertices": True}
    answers = {
        '{"0": 1, "1": 1, "2": 1, "3": 2}': (1.0, 1.0),                      # exactly the vertices
        '{"0": 1, "1": 1, "2": 1, "3": 2, "4": 1}': (1.0, 0.01),             # one vertex too many
        '{"0": 1, "1": 1, "2": 1, "3": 2, "4": 1, "5": 3}': (1.0, 0.01),
        '{"0": 1, "1": 1, "2": 1}': (0.01, 0.01),                           # one missing: wrong in both
        '{"0": 1, "1": 1, "2": 2, "3": 2}': (0.01, 0.01),                   # 2 and 3 share a colour
        '{"0": 1, "1": 1, "2": 1, "3": 2, "x": 1}': (1.0, 0.01),             # a key that is no vertex at all
    }
    for answer, (want_lenient, want_strict) in answers.items():
        text = f"<think>\n</think>\n<answer>{answer}</answer>"
        assert rewards.score_details(text, lenient)[0] == want_lenient, answer
        assert rewards.score_details(text, strict)[0] == want_strict, answer
    assert rewards.score_details('<answer>{"0": 1, "1": 1, "2": 1, "3": 2, "7": 1}</answer>', strict)[1]["reason"] == "vertex_set"
    # JSON keys are strings, the puzzle's vertices ints: they compare as strings (Reasoning Gym's own reading)
    assert rewards.colours_exactly_the_vertices('{"0": 1, "1": 1, "2": 1, "3": 2}', entry)
    assert not rewards.colours_exactly_the_vertices("[1, 1, 1, 2]", entry)
    assert not rewards.colours_exactly_the_vertices("{not json", entry)


# --------------------------------------------------------------------------- code


def test_code_partial_passes_stdio_and_assert(sandbox):
    stdio = code_task([{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10"},
                       {"input": "2 2\n", "output": "5\n"}])
    program = "a, b = map(int, input().split())\nprint(a + b)"
    asserts = code_task([{"assert": "assert add(1, 2) == 3"}, {"assert": "assert add(2, 2) == 5"},
                         {"assert": "assert add(0, 0) == 0\nassert add(-1, 1) == 0"},
                         {"assert": "assert add(1, 1) == 2"}])
    function = "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    print(add(*map(int, input().split())))"
    got = rewards.score_batch([fenced(program), fenced(function), "```python\ndef add(a, b)\n    return a\n```",
                               "no code at all"],
                              [stdio, asserts, asserts, asserts])
    assert got == [pytest.approx(2 / 3), 0.75, 0.0, 0.0]


def test_code_uses_last_python_block_and_token_comparison(sandbox):
    task = code_task([{"input": "3\n", "output": "1 2 3\n0.333333333\n"}])
    good = "n = int(input())\nprint('  '.join(map(str, range(1, n + 1))), end=' \\n')\nprint(1 / n)"
    completion = f"```python\nprint('draft')\n```\nbetter:\n```python\n{good}\n```\n```text\nsample\n```"
    assert rewards.score_details(completion, task)[0] == 1.0
    assert rewards.outputs_match("1 2\n3", "1 2 3")          # tokens, line breaks are separators
    assert not rewards.outputs_match("3", "3.0000001")      # integers match exactly
    assert rewards.outputs_match("0.5", "0.5000001")        # floats within 1e-6
    assert not rewards.outputs_match("YES", "yes")


def test_code_syntax_error_scores_zero_even_with_passing_tests(sandbox):
    task = code_task([{"assert": "pass"}, {"input": "", "output": ""}])
    score, parts = rewards.score_details(fenced("print(1"), task)
    assert (score, parts["reason"]) == (0.0, "syntax_error")


def test_code_early_exit_cannot_pass_asserts(sandbox):
    task = code_task([{"assert": "assert False"}])
    for program in ("import sys\nsys.exit(0)", "import os\nos._exit(0)",
                    "import sys\nprint(sys.stdin.read())"):  # the nonce is not readable
        assert rewards.score_details(fenced(program), task)[0] == 0.0, program


@pytest.mark.slow
def test_hostile_programs_are_contained(sandbox, tmp_path):
    """Each program would score 1 if its attack worked; all score 0, the workers and we survive."""
    secret = "prorl-" + os.urandom(8).hex()
    os.environ["PRORL_TEST_SECRET"] = secret
    rewards.close_pool()  # fresh workers inherit the secret: it must still not reach programs
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    probe = f"/etc/prorl_escape_{os.getpid()}"
    hostile = {
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "infinite_loop": "while True:\n    pass",
        "alloc_10gb": "x = bytearray(10 * 2**30)\nprint('ESCAPED')",
        "write_1gb": "with open('/tmp/big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'x' * 2**20)\n"
                     "print('ESCAPED')",
        "write_etc": f"open('{probe}', 'w').write('x')\nprint('ESCAPED')",
        "read_root": "import os\nos.listdir('/root')\nprint('ESCAPED')",
        "read_env": "import os\nprint(os.environ.get('PRORL_TEST_SECRET', 'none'))",
        "read_parent_env": "print(open('/proc/1/environ').read().count('PRORL_TEST_SECRET') and 'ESCAPED')",
        "connect_localhost": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                             "print('ESCAPED')",
        "kill_process_group": "import os, signal\nos.killpg(os.getpgrp(), signal.SIGKILL)\nos.kill(os.getppid(), "
                              "signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)",
        "kill_test_process": f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\nprint('ESCAPED')",
        "sleep_past_timeout": "import time\ntime.sleep(30)\nprint('ESCAPED')",
        "flood_stdout": "while True:\n    print('ESCAPED' * 1000)",
    }
    tasks, completions = [], []
    for name, program in hostile.items():
        expected = secret if name == "read_env" else "ESCAPED"
        tasks.append(code_task([{"input": "", "output": expected}], time_limit=1, task_id=name))
        completions.append(fenced(program))
    tasks.append(code_task([{"input": "", "output": "ok"}], time_limit=1, task_id="control"))
    completions.append(fenced("print('ok')"))
    rewards.score_batch(completions[-1:], tasks[-1:])  # start the workers
    worker_pids = [w.process.pid for w in rewards._POOL.workers]
    started = time.monotonic()
    got = dict(zip([t["id"] for t in tasks], rewards.score_batch(completions, tasks)))
    elapsed = time.monotonic() - started
    try:
        listener.accept()
        connected = True
    except TimeoutError:
        connected = False
    finally:
        listener.close()
        del os.environ["PRORL_TEST_SECRET"]
    assert got.pop("control") == 1.0  # the sandbox runs ordinary programs
    assert got == {name: 0.0 for name in hostile}
    assert not connected and not os.path.exists(probe)
    assert [w.process.pid for w in rewards._POOL.workers] == worker_pids  # no worker died or hung
    assert elapsed < sum(rewards.item_timeout(t) for t in tasks)
    for uid in range(rewards.SANDBOX_UID_BASE, rewards.SANDBOX_UID_BASE + 1 + len(worker_pids)):
        assert rewards._live_processes(uid) == 0  # nothing of any sandbox is left running


def test_sandbox_statuses_name_what_happened(sandbox):
    assert rewards.run_program("while True: pass", "stdio", time_limit=0.5)["status"] == "timeout"
    assert rewards.run_program("while True: print('x' * 4096)", "stdio", time_limit=2,
                               output_cap=1 << 16)["status"] == "output_limit"
    assert rewards.run_program("x = bytearray(10 * 2**30)", "stdio")["status"] == "runtime_error"
    ran = rewards.run_program("import os\nprint(os.getuid(), sorted(os.environ))", "stdio")
    assert ran["status"] == "ok"
    uid, env = ran["stdout"].split(" ", 1)
    if os.geteuid() == 0:
        assert int(uid) == rewards.SANDBOX_UID_BASE  # in-process runs: the base uid, never root
    assert "PRORL" not in env and "VIRTUAL_ENV" not in env


def test_missing_bwrap_refuses_unless_unsafe(tmp_path, monkeypatch):
    tmp_path.chmod(0o755)  # the unprivileged sandbox uid must reach prlimit through it
    for parent in tmp_path.parents:
        if str(parent).startswith(tempfile.gettempdir() + "/"):
            parent.chmod(0o755)
    for tool in ("prlimit", "python3"):  # a PATH with everything but bwrap
        os.symlink(shutil.which(tool, path="/usr/bin:/bin"), tmp_path / tool)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(rewards, "_SANDBOX_TOOLS", {})
    task = code_task([{"input": "", "output": "1"}])
    with pytest.raises(rewards.SandboxUnavailable, match="bubblewrap.*allow_unsafe_code=True"):
        rewards.score_details(fenced("print(1)"), task)
    assert rewards.score_details(fenced("print(1)"), task, allow_unsafe_code=True)[0] == 1.0


# --------------------------------------------------------------------------- pool


def test_score_batch_matches_score_details_and_keeps_order():
    tasks = [{"id": "m", "domain": "math", "answer": "3"},
             {"id": "i", "domain": "ifeval", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
             {"id": "s", "domain": "stem", "answer": "B", "choices": ["x", "y"]}] * 4
    completions = ["\\boxed{3}", "a, b", "Answer: B", "\\boxed{4}", "a b", "Answer: A"] * 2
    assert rewards.score_batch(completions, tasks, workers=2) == [
        rewards.score_details(c, t)[0] for c, t in zip(completions, tasks)]


def test_bad_input_raises_naming_the_index():
    with pytest.raises(ValueError, match=r"tasks\[1\].*domain"):
        rewards.score_batch(["a", "b"], [{"id": "m", "domain": "math", "answer": "1"}, {"id": "z", "domain": "poetry"}])
    with pytest.raises(ValueError, match="2 completions but 1 tasks"):
        rewards.score_batch(["a", "b"], [{"id": "m", "domain": "math", "answer": "1"}])
    with pytest.raises(ValueError, match="not a letter"):
        rewards.validate_task({"id": "s", "domain": "stem", "answer": "E", "choices": ["a", "b"]})


@pytest.mark.slow
def test_pool_kills_a_hung_item_and_keeps_going(sandbox, monkeypatch):
    # parent-side deadline 0.5 s for a program sleeping 60 s: the worker is killed and replaced
    monkeypatch.setattr(rewards, "POOL_SLACK_S", -(60 + rewards.SANDBOX_START_SLACK_S) + 0.5)
    rewards.score_batch(["\\boxed{1}"], [{"id": "warm", "domain": "math", "answer": "1"}], workers=2)
    pids = {w.slot: w.process.pid for w in rewards._POOL.workers}
    hung = code_task([{"input": "", "output": "x"}], time_limit=60, task_id="hung")
    started = time.monotonic()
    got = rewards.score_batch([fenced("import time\ntime.sleep(60)\nprint('x')"), "\\boxed{2}"],
                              [hung, {"id": "m", "domain": "math", "answer": "2"}], workers=2)
    assert got == [0.0, 1.0]
    # killed at its 0.5 s deadline (plus ~2 s to start a replacement), not after 60 s
    assert time.monotonic() - started < 30
    assert {w.slot: w.process.pid for w in rewards._POOL.workers} != pids  # one was replaced
    time.sleep(0.2)
    for slot in pids:
        assert rewards._live_processes(rewards.SANDBOX_UID_BASE + 1 + slot) == 0  # sandbox died with it


@pytest.mark.slow
def test_pool_survives_a_worker_killed_mid_item(sandbox):
    rewards.score_batch(["\\boxed{1}"], [{"id": "warm", "domain": "math", "answer": "1"}], workers=2)
    victim = rewards._POOL.workers[0].process.pid
    threading.Timer(0.5, os.kill, (victim, signal.SIGKILL)).start()
    slow = code_task([{"input": "", "output": "x"}], time_limit=2, task_id="slow")
    got = rewards.score_batch([fenced("import time\ntime.sleep(1.5)\nprint('x')")] * 2, [slow, slow], workers=2)
    assert sorted(got) == [0.0, 1.0]  # the killed worker's item scores 0, the other passes
    assert rewards.score("\\boxed{5}", {"id": "after", "domain": "math", "answer": "5"}) == 1.0


# --------------------------------------------------------------------------- fuzzing

FRAGMENTS = ["<think>", "</think>", "\\boxed{", "}", "{", "$", "The answer is", "Answer: ", "(C)",
             "<answer>", "</answer>", "```python\n", "```", "\n", "***", "******", "*", "<<", ">>",
             "P.S.", ",", "\\frac{1}{0}", "9**9**9**9", "import os\n", "print(1)\n", "\x00", "\udcff"]
fuzz_text = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(FRAGMENTS)), max_size=30).map("".join)

IF_SAMPLE_ARGS = {"keywords": ["a"], "keyword": "a", "frequency": 1, "relation": "at least",
                  "forbidden_words": ["b"], "letter": "c", "let_frequency": 1, "let_relation": "less than",
                  "language": "en", "num_sentences": 2, "num_paragraphs": 2, "num_words": 3, "nth_paragraph": 1,
                  "first_word": "a", "num_placeholders": 1, "postscript_marker": "P.S.", "num_bullets": 1,
                  "num_highlights": 1, "section_spliter": "Section", "num_sections": 1, "prompt_to_repeat": "a",
                  "end_phrase": "b", "capital_frequency": 1, "capital_relation": "at least"}
FUZZ_TASKS = {
    "math": {"id": "fz/m", "domain": "math", "answer": "\\frac{1}{2}"},
    "stem": {"id": "fz/s", "domain": "stem", "answer": "C", "choices": CHOICES},
    "logic": {"id": "fz/l", "domain": "logic", "rg_task": "basic_arithmetic",
              "rg_entry": {"question": "Calculate 1 + 1.", "answer": "2",
                           "metadata": {"source_dataset": "basic_arithmetic", "source_index": 0}}},
    "ifeval": {"id": "fz/i", "domain": "ifeval", "instruction_id_list": list(rewards.IFEVAL_CHECKERS),
               "kwargs": [{name: IF_SAMPLE_ARGS[name] for name in names}
                          for _, names in rewards.IFEVAL_CHECKERS.values()]},
}


@pytest.mark.slow
@pytest.mark.parametrize("domain", list(FUZZ_TASKS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=fuzz_text)
def test_score_never_raises_and_stays_in_bounds(domain, text):
    task = FUZZ_TASKS[domain]
    started = time.monotonic()
    reward = rewards.score(text, task)
    assert 0.0 <= reward <= 1.0
    assert time.monotonic() - started < rewards.item_timeout(task)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=fuzz_text, body=st.text(max_size=60))
def test_code_score_never_raises_and_stays_in_bounds(sandbox, text, body):
    task = code_task([{"input": "1\n", "output": "1"}, {"assert": "assert True"}], time_limit=1)
    started = time.monotonic()
    reward = rewards.score(text + "```python\n" + body + "\n```", task)
    assert 0.0 <= reward <= 1.0
    assert time.monotonic() - started < rewards.item_timeout(task)
