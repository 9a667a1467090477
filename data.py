"""data.py: ProRL's five-domain prompt mixture, its evaluation suites and out-of-distribution tests.

ProRL (§3.3, App. E) trains on 136K prompts from five domains, each with a verifiable reward:

    math   DeepScaleR                 40k   (binary: answer equivalence)
    code   Eurus-2-RL (code part)     24k   (fraction of unit tests passed)
    stem   SCP-116K, filtered         25k   (binary)
    logic  Reasoning Gym, 96 tasks    37k   (the task's own continuous score)
    ifeval Llama-Nemotron IF subset   10k   (fraction of constraints met)

This file turns every source into one plain-dict task schema (below), which rewards.py scores, and gives
the sampler that feeds train.py: a weighted interleave of the sources whose position is part of the
checkpoint. Nothing here can be downloaded on the dev machine, so tests use hand-written fixtures in each
source's real format and procedurally generated Reasoning Gym tasks.

Task schema (a plain dict; rewards.py consumes exactly these fields)
--------------------------------------------------------------------
    id       str   unique and stable. Files: "<source>/<file stem or hub split>/<row>", Reasoning Gym:
                   "rg/<task>/<cfg tag>/s<seed>/<i>" (cfg tag "default", the settings "k=v;k=v" when short,
                   else an 8-hex hash of them; graph_color OOD suites use "v<size>").
    domain   str   "math" | "code" | "stem" | "logic" | "ifeval".
    source   str   "deepscaler" | "eurus2_code" | "scp116k" | "nemotron_if" | "ifeval" | "gpqa" |
                   "reasoning_gym" | whatever a native "tasks" file says.
    prompt   list[{"role", "content"}]   chat messages; the last user turn already carries the domain's
                   answer-format instruction (constants below). No system turn by default: DeepSeek-R1-Distill
                   models are meant to get every instruction in the user turn (model card, "Usage
                   Recommendations"); format_prompt can add one.
    payload, by domain:
      math    "answer": str                     ground truth, LaTeX allowed
      stem    "answer": str, optional "choices": list[str]   with choices the answer is a letter "A".."J"
      code    "tests": list[dict], each ONE of  {"input": str, "output": str}   (stdin/stdout program)
                                                {"assert": str}   (python run after the program)
              optional "fn_name": str (call-based problems; informational), "time_limit": float seconds
      logic   "rg_task": str (Reasoning Gym dataset name), "rg_entry": dict (question, answer, metadata),
              made JSON-serialisable: tuples -> lists, sets -> sorted lists, non-str keys -> str;
              optional "exact_vertices": true (graph_color only; spec option exact_vertices=true): the
              answer must colour exactly the puzzle's vertices, no extra keys (rewards.py says why)
      ifeval  "instruction_id_list": list[str] (IFEval ids, e.g. "length_constraints:number_words"),
              "kwargs": list[dict] (IFEval argument names, one dict per id, None-valued args removed)
    meta     dict  free-form (row number, difficulty, size, ...); never read by the verifiers.

Sources and their field mappings (checked against the dataset cards / public loaders named here)
-----------------------------------------------------------------------------------------------
deepscaler  agentica-org/DeepScaleR-Preview-Dataset, split train (40.3k rows; card: problem, answer,
            solution). problem -> prompt + MATH_INSTRUCTION; answer -> answer; solution unused (ProRL rewards
            the final answer only). Rows with an empty answer (the card's discussion #4 reports 6) are
            skipped and counted. The same mapper reads any math file with problem/answer columns (AIME24).
eurus2_code PRIME-RL/Eurus-2-RL-Data, split train (card: data_source, prompt, ability, reward_model,
            extra_info; 455k math + 27k code rows). Only ability == "code" rows are kept (others counted as
            "not_code"). prompt is a chat list: its system turn (PRIME's action-format prompt) is dropped,
            user turns kept + a code instruction. reward_model.ground_truth is a JSON string
            {"inputs": [...], "outputs": [...]} (APPS/TACO "input_output" layout; an input or output given
            as a list of lines is joined with "\\n") -> tests [{"input", "output"}]. With "fn_name" the
            problem is call-based: inputs[i] is the argument list and outputs[i] the expected value, often
            wrapped in a one-element list as APPS stores it; each pair becomes one {"assert": ...} test that
            calls the function (module level, else Solution().<fn_name>), turns a tuple result into a list
            and accepts the expected value or its single wrapped element (the APPS harness's rule).
            extra_info -> meta.
scp116k     EricLu/SCP-116K, split train (card + public loaders: domain, problem, matched_solution,
            o1_solution, is_o1_solution_same_with_matched_solution, qwq_solution,
            is_qwq_solution_same_with_matched_solution). ProRL filtered it but does not say how; we keep a
            row when is_o1_solution_same_with_matched_solution is not False (o1 agrees with the extracted
            solution) and a final answer exists: the last \\boxed{} of matched_solution, else of o1_solution.
            Others are counted ("unverified_solution", "no_boxed_answer"). domain -> meta.
nemotron_if nvidia/Llama-Nemotron-Post-Training-Dataset, config RL, split instruction_following
            (RL/instruction_following/instruction_following.jsonl, 56k rows; columns input, args, category,
            license, reasoning, used_in_training, version, system_prompt; args = {instruction_id_list,
            instruction_kwargs, ...}). input (chat list, system turns dropped) -> prompt; args.instruction_
            id_list -> instruction_id_list; args.instruction_kwargs (None-valued keys removed) -> kwargs.
            system_prompt ("detailed thinking on/off", a Llama-Nemotron switch) -> meta. The same mapper
            also reads IFEval-format rows (google/IFEval: key, prompt, instruction_id_list, kwargs).
ifeval      google/IFEval (train split): key, prompt, instruction_id_list, kwargs; the validation set.
gpqa        Idavidrein/gpqa (gpqa_diamond.csv): Question, Correct Answer, Incorrect Answer 1..3. The four
            options are shuffled by a hash of the question (stable, so the gold letter is not always "A").
tasks       a .jsonl file already in the task schema above, read with the json module (not arrow: arrow
            would give every free-form dict the union of all rows' keys), validated row by row.
reasoning_gym  procedural: reasoning_gym_tasks(name, n, seed, **settings); prompt = RG question +
            LOGIC_INSTRUCTION. RG draws entry i with Random(seed + i), so eval suites use EVAL_SEED, far
            from training seeds, to keep the sets disjoint.

Where we depart from ProRL: the SCP-116K filter and the Eurus call-based test mapping are ours (the paper
does not publish them); the paper's prompt templates are not published, so ours are the constants below.

Data specification (train.py --data, evaluate.py --data; parsed by parse_spec / load_spec)
------------------------------------------------------------------------------------------
    spec   := item ("," item)*                   commas inside [...], {...} or quotes do not split
    item   := [label "="] body ["@" weight]
    body   := "rg:" TASK (":" key "=" value)*    Reasoning Gym; keys: n (count, default DEFAULT_RG_N), seed
                                                 (default: the spec's seed) and any field of the task's RG
                                                 config; values are JSON when they parse, else strings
            | LOADER [":" LOCATION]              a loader by name (deepscaler, eurus2_code, scp116k,
                                                 nemotron_if, ifeval, gpqa, tasks); no LOCATION = its hub
                                                 dataset (online only)
            | LOCATION                           then the label must be a loader name
            | "ood:" NAME [":" SIZES] (":" key "=" value)*   eval_suites only (below)
    LOCATION: a local .jsonl/.json/.parquet/.arrow/.csv file or a save_to_disk directory, else a hub name.
    label  : the mixture source (or eval suite) name; defaults to the loader name, "reasoning_gym" for rg
             items. Items with the same label are concatenated.
    weight : optional float; give one for every label or for none (then the paper's domain counts apply).
Examples, one per domain:
    math    deepscaler=data/deepscaler.jsonl          or  deepscaler  (hub)   or  math=deepscaler:aime24.jsonl
    code    eurus2_code:data/eurus_train.parquet@0.2
    stem    stem=scp116k:data/scp116k.jsonl
    logic   logic=rg:graph_color:min_num_vertices=4:max_num_vertices=6:n=2000,rg:basic_arithmetic:n=500
    ifeval  nemotron_if:data/instruction_following.jsonl
    OOD     ood:graph_color:10-20:n=100,ood:boxnet    -> suites graph_color_v10 .. graph_color_v20, boxnet

Run the tests: .venv/bin/pytest tests/test_data.py -q
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Domains, paper counts, defaults

DOMAINS = ("math", "code", "stem", "logic", "ifeval")
PAPER_DOMAIN_COUNTS = {
    "math": 40_000,
    "code": 24_000,
    "stem": 25_000,
    "logic": 37_000,
    "ifeval": 10_000,
}  # §3.3

DEFAULT_RG_N = 1000  # Reasoning Gym prompts per spec item when the item gives no n
GRAPH_COLOR_TRAIN_SIZE = 10  # vertices in ProRL's training graph_color tasks (§4, OOD figure)
GRAPH_COLOR_OOD_SIZES = tuple(range(10, 21))  # the OOD sweep: 10 (training size) .. 20 vertices
OOD_N = 100  # prompts per OOD suite
VALIDATION_GRAPH_COLOR_N = 100  # graph_color prompts in the validation blend
EVAL_SEED = 1_000_000_000  # RG entry i uses Random(seed + i): keep eval seeds far from training seeds

# ----------------------------------------------------------------------------------------------------------
# Answer-format instructions (the paper does not publish its templates; these are ours)

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."  # R1 model card
STEM_INSTRUCTION = MATH_INSTRUCTION
STEM_CHOICES_INSTRUCTION = (
    "Please reason step by step, and put the letter of the correct option within \\boxed{}, e.g. \\boxed{A}."
)
LOGIC_INSTRUCTION = (
    "Give your final answer inside <answer></answer> tags, e.g. <answer>your answer</answer>. "
    "Do not explain inside the tags."
)
CODE_STDIN_INSTRUCTION = (
    "Write a complete Python 3 program that reads the input from standard input and prints the answer to "
    "standard output. Put the whole program in a single ```python code block."
)
CODE_CALL_INSTRUCTION = (
    "Write a Python 3 solution that defines the function `{fn_name}` (a module-level function or a method "
    "of class Solution) and returns the answer. Put the code in a single ```python code block."
)
IFEVAL_INSTRUCTION = ""  # the constraints are already in the prompt

CHOICE_LETTERS = "ABCDEFGHIJ"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow", ".csv")

# Hub defaults per loader: (dataset id, config, split)
HUB_DEFAULTS = {
    "deepscaler": ("agentica-org/DeepScaleR-Preview-Dataset", None, "train"),
    "eurus2_code": ("PRIME-RL/Eurus-2-RL-Data", None, "train"),
    "scp116k": ("EricLu/SCP-116K", None, "train"),
    "nemotron_if": ("nvidia/Llama-Nemotron-Post-Training-Dataset", "RL", "instruction_following"),
    "ifeval": ("google/IFEval", None, "train"),
    "gpqa": ("Idavidrein/gpqa", "gpqa_diamond", "train"),
}


# ----------------------------------------------------------------------------------------------------------
# Schema checks and small helpers


def domain_instruction(task: dict) -> str:
    """The answer-format instruction a task's domain needs (empty for ifeval)."""
    domain = task["domain"]
    if domain == "math":
        return MATH_INSTRUCTION
    if domain == "stem":
        return STEM_CHOICES_INSTRUCTION if task.get("choices") else STEM_INSTRUCTION
    if domain == "logic":
        return LOGIC_INSTRUCTION
    if domain == "code":
        return (
            CODE_CALL_INSTRUCTION.format(fn_name=task["fn_name"])
            if task.get("fn_name")
            else CODE_STDIN_INSTRUCTION
        )
    if domain == "ifeval":
        return IFEVAL_INSTRUCTION
    raise ValueError(f"task {task.get('id')!r}: unknown domain {domain!r} (expected one of {DOMAINS})")


def _user_prompt(text: str, instruction: str) -> list[dict]:
    content = f"{text.rstrip()}\n\n{instruction}" if instruction else text
    return [{"role": "user", "content": content}]


def _with_instruction(messages: list[dict], instruction: str) -> list[dict]:
    """Append `instruction` to the last user turn unless it is already there (idempotent)."""
    messages = [dict(m) for m in messages]
    if instruction:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        if instruction not in messages[last_user]["content"]:
            messages[last_user]["content"] = f"{messages[last_user]['content'].rstrip()}\n\n{instruction}"
    return messages


def _is_str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def validate_task(task: Any, where: str = "task") -> dict:
    """Check one task against the schema; raise ValueError naming `where` and the bad field."""
    if not isinstance(task, dict):
        raise ValueError(f"{where}: a task must be a dict, got {type(task).__name__}")
    for key, typ in (("id", str), ("domain", str), ("source", str), ("prompt", list)):
        if not isinstance(task.get(key), typ):
            raise ValueError(f"{where}: field {key!r} must be {typ.__name__}, got {task.get(key)!r:.80}")
    if task["domain"] not in DOMAINS:
        raise ValueError(f"{where}: domain {task['domain']!r} is not one of {DOMAINS}")
    msgs = task["prompt"]
    if not msgs or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in msgs
    ):
        raise ValueError(f"{where}: prompt must be a non-empty list of {{'role': str, 'content': str}}")
    if not any(m["role"] == "user" for m in msgs):
        raise ValueError(f"{where}: prompt has no user turn")
    d = task["domain"]
    if d in ("math", "stem") and not (isinstance(task.get("answer"), str) and task["answer"].strip()):
        raise ValueError(f"{where}: {d} task needs a non-empty str 'answer'")
    if d == "stem" and task.get("choices") is not None:
        choices = task["choices"]
        if not _is_str_list(choices) or not 2 <= len(choices) <= len(CHOICE_LETTERS):
            raise ValueError(f"{where}: 'choices' must be a list of 2..{len(CHOICE_LETTERS)} str")
        if task["answer"] not in CHOICE_LETTERS[: len(choices)]:
            raise ValueError(
                f"{where}: with choices the answer must be a letter A..{CHOICE_LETTERS[len(choices) - 1]}"
            )
    if d == "code":
        tests = task.get("tests")
        if not isinstance(tests, list):
            raise ValueError(f"{where}: code task needs a list 'tests'")
        for j, t in enumerate(tests):
            ok_io = (
                isinstance(t, dict)
                and set(t) == {"input", "output"}
                and all(isinstance(v, str) for v in t.values())
            )
            ok_assert = isinstance(t, dict) and set(t) == {"assert"} and isinstance(t["assert"], str)
            if not (ok_io or ok_assert):
                raise ValueError(
                    f"{where}: test {j} must be {{'input': str, 'output': str}} or {{'assert': str}}"
                )
    if d == "logic":
        if not isinstance(task.get("rg_task"), str) or not isinstance(task.get("rg_entry"), dict):
            raise ValueError(f"{where}: logic task needs str 'rg_task' and dict 'rg_entry'")
        if "exact_vertices" in task and (task["exact_vertices"] not in (True, False) or task["rg_task"] != "graph_color"):
            raise ValueError(f"{where}: 'exact_vertices' is a bool and applies to rg_task graph_color only")
    if d == "ifeval":
        ids, kwargs = task.get("instruction_id_list"), task.get("kwargs")
        if not _is_str_list(ids) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
            raise ValueError(
                f"{where}: ifeval task needs 'instruction_id_list' (list[str]) and 'kwargs' of the same length"
            )
        if not all(isinstance(k, dict) for k in kwargs):
            raise ValueError(f"{where}: every ifeval kwargs entry must be a dict")
    return task


def jsonable(x: Any) -> Any:
    """A JSON-serialisable copy: tuples -> lists, sets -> sorted lists, non-str keys -> str, numpy -> python."""
    if isinstance(x, dict):
        return {
            (
                k if isinstance(k, str) else json.dumps(jsonable(k)) if isinstance(k, tuple) else str(k)
            ): jsonable(v)
            for k, v in x.items()
        }
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted((jsonable(v) for v in x), key=repr)
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    if hasattr(x, "tolist"):  # numpy arrays and scalars
        return jsonable(x.tolist())
    raise TypeError(f"cannot make {type(x).__name__} JSON-serialisable")


def last_boxed(text: str | None) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces balanced; None if there is none."""
    if not text:
        return None
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip() or None
    return None


# ----------------------------------------------------------------------------------------------------------
# Row mappers: one per source, each raw row -> task (or _Skip(reason), counted by load_source)


class _Skip(Exception):
    """A well-formed row that the source's filter leaves out; the message is the counted reason."""


def _get(row: dict, key: str, typ: type | tuple, where: str, required: bool = True) -> Any:
    value = row.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}: missing field {key!r} (row has {sorted(row)})")
        return None
    if not isinstance(value, typ):
        raise ValueError(
            f"{where}: field {key!r} must be {getattr(typ, '__name__', typ)}, got {type(value).__name__}"
        )
    return value


def _messages(value: Any, where: str, key: str) -> list[dict]:
    """A chat list from a row, with system turns dropped (see the docstring for why)."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: field {key!r} must be a non-empty list of chat messages")
    out = []
    for m in value:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ValueError(
                f"{where}: field {key!r} must hold {{'role': str, 'content': str}} messages, got {m!r:.80}"
            )
        if m["role"] != "system":
            out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" for m in out):
        raise ValueError(f"{where}: field {key!r} has no user message")
    return out


def deepscaler_row(row: dict, where: str) -> dict:
    problem = _get(row, "problem", str, where)
    answer = row.get("answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise _Skip("no_answer")
    if not isinstance(answer, (str, int, float)):
        raise ValueError(f"{where}: field 'answer' must be str, got {type(answer).__name__}")
    return {
        "domain": "math",
        "prompt": _user_prompt(problem, MATH_INSTRUCTION),
        "answer": str(answer).strip(),
        "meta": {},
    }


def _call_assert(fn_name: str, args: Any, expected: Any) -> str:
    """One call-based test as Python statements (APPS harness rule: tuple -> list; wrapped expected ok)."""
    return (
        f"_f = globals()[{fn_name!r}] if {fn_name!r} in globals() else Solution().{fn_name}\n"
        f"_got = _f(*{args!r})\n"
        "_got = list(_got) if isinstance(_got, tuple) else _got\n"
        f"_exp = {expected!r}\n"
        "assert _got == _exp or (isinstance(_exp, list) and len(_exp) == 1 and _got == _exp[0]), (_got, _exp)"
    )


def _lines(x: Any, where: str, what: str) -> str:
    if isinstance(x, str):
        return x
    if _is_str_list(x):
        return "\n".join(x)
    raise ValueError(f"{where}: a test {what} must be a str or a list of str lines, got {type(x).__name__}")


def code_tests_from_ground_truth(ground_truth: Any, where: str) -> tuple[list[dict], str | None]:
    """Eurus/APPS/TACO {"inputs", "outputs"[, "fn_name"]} (a JSON string or dict) -> (tests, fn_name)."""
    if isinstance(ground_truth, str):
        try:
            ground_truth = json.loads(ground_truth)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: reward_model.ground_truth is not valid JSON ({e})") from None
    if (
        not isinstance(ground_truth, dict)
        or not isinstance(ground_truth.get("inputs"), list)
        or not isinstance(ground_truth.get("outputs"), list)
    ):
        raise ValueError(f"{where}: ground_truth must be {{'inputs': [...], 'outputs': [...]}}")
    inputs, outputs = ground_truth["inputs"], ground_truth["outputs"]
    if len(inputs) != len(outputs):
        raise ValueError(f"{where}: ground_truth has {len(inputs)} inputs but {len(outputs)} outputs")
    fn_name = ground_truth.get("fn_name")
    if fn_name:
        if not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise ValueError(f"{where}: fn_name must be a Python identifier, got {fn_name!r}")
        for args in inputs:
            if not isinstance(args, list):
                raise ValueError(f"{where}: call-based inputs must be argument lists, got {args!r:.80}")
        return [{"assert": _call_assert(fn_name, a, e)} for a, e in zip(inputs, outputs)], fn_name
    return [
        {"input": _lines(i, where, "input"), "output": _lines(o, where, "output")}
        for i, o in zip(inputs, outputs)
    ], None


def eurus2_code_row(row: dict, where: str) -> dict:
    ability = row.get("ability")
    if ability != "code":
        raise _Skip("not_code")
    messages = _messages(row.get("prompt"), where, "prompt")
    reward_model = _get(row, "reward_model", dict, where)
    tests, fn_name = code_tests_from_ground_truth(reward_model.get("ground_truth"), where)
    instruction = CODE_CALL_INSTRUCTION.format(fn_name=fn_name) if fn_name else CODE_STDIN_INSTRUCTION
    task = {
        "domain": "code",
        "prompt": _with_instruction(messages, instruction),
        "tests": tests,
        "meta": {"data_source": row.get("data_source"), **(row.get("extra_info") or {})},
    }
    if fn_name:
        task["fn_name"] = fn_name
    return task


def scp116k_row(row: dict, where: str) -> dict:
    problem = _get(row, "problem", str, where)
    matched = _get(row, "matched_solution", str, where, required=False)
    o1 = _get(row, "o1_solution", str, where, required=False)
    agrees = row.get("is_o1_solution_same_with_matched_solution")
    if agrees is False:
        raise _Skip("unverified_solution")
    answer = last_boxed(matched) or last_boxed(o1)
    if answer is None:
        raise _Skip("no_boxed_answer")
    return {
        "domain": "stem",
        "prompt": _user_prompt(problem, STEM_INSTRUCTION),
        "answer": answer,
        "meta": {"scp_domain": row.get("domain")},
    }


def _clean_kwargs(kwargs: Any, where: str) -> list[dict]:
    if not isinstance(kwargs, list):
        raise ValueError(f"{where}: IFEval kwargs must be a list of dicts, got {type(kwargs).__name__}")
    out = []
    for k in kwargs:
        if k is None:
            k = {}
        if not isinstance(k, dict):
            raise ValueError(f"{where}: IFEval kwargs entries must be dicts, got {k!r:.80}")
        out.append(
            {name: v for name, v in k.items() if v is not None}
        )  # parquet/arrow fill absent args with None
    return out


def nemotron_if_row(row: dict, where: str) -> dict:
    if "args" in row and row["args"] is not None:  # Llama-Nemotron RL layout
        messages = _messages(row.get("input"), where, "input")
        args = _get(row, "args", dict, where)
        ids = args.get("instruction_id_list")
        kwargs = _clean_kwargs(args.get("instruction_kwargs"), where)
        meta = {
            k: row.get(k)
            for k in ("category", "reasoning", "system_prompt", "version")
            if row.get(k) is not None
        }
    else:  # IFEval layout (google/IFEval)
        messages = _user_prompt(_get(row, "prompt", str, where), IFEVAL_INSTRUCTION)
        ids = row.get("instruction_id_list")
        kwargs = _clean_kwargs(row.get("kwargs"), where)
        meta = {"key": row.get("key")} if row.get("key") is not None else {}
    if not _is_str_list(ids) or not ids:
        raise ValueError(f"{where}: instruction_id_list must be a non-empty list of str, got {ids!r:.80}")
    if len(kwargs) != len(ids):
        raise ValueError(f"{where}: {len(ids)} instruction ids but {len(kwargs)} kwargs dicts")
    return {
        "domain": "ifeval",
        "prompt": messages,
        "instruction_id_list": list(ids),
        "kwargs": kwargs,
        "meta": meta,
    }


def gpqa_row(row: dict, where: str) -> dict:
    question = _get(row, "Question", str, where).strip()
    correct = _get(row, "Correct Answer", str, where).strip()
    wrong = [_get(row, f"Incorrect Answer {i}", str, where).strip() for i in (1, 2, 3)]
    # Shuffle by a hash of the question: stable across runs and processes, gold letter spread over A-D.
    rng = random.Random(hashlib.sha256(question.encode()).hexdigest())
    choices = [correct, *wrong]
    rng.shuffle(choices)
    letter = CHOICE_LETTERS[choices.index(correct)]
    body = question + "\n\n" + "\n".join(f"{CHOICE_LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return {
        "domain": "stem",
        "prompt": _user_prompt(body, STEM_CHOICES_INSTRUCTION),
        "answer": letter,
        "choices": choices,
        "meta": {},
    }


def native_task_row(row: dict, where: str) -> dict:
    task = {k: v for k, v in row.items() if v is not None}  # parquet fills absent optional fields with None
    task.setdefault("meta", {})
    return validate_task(task, where)


ROW_MAPPERS = {
    "deepscaler": deepscaler_row,
    "eurus2_code": eurus2_code_row,
    "scp116k": scp116k_row,
    "nemotron_if": nemotron_if_row,
    "ifeval": nemotron_if_row,
    "gpqa": gpqa_row,
    "tasks": native_task_row,
}


# ----------------------------------------------------------------------------------------------------------
# Reading rows (local files or the hub, through `datasets`)


def _read_rows(location: str, loader: str) -> tuple[list[dict], str]:
    """All rows of a local file / save_to_disk directory / hub dataset, and a short tag for task ids."""
    import datasets  # heavy import, only when files are read

    path = Path(location)
    if loader == "tasks":
        # Our own schema: read exactly. Arrow would unify the free-form dicts (meta, rg_entry, kwargs) across
        # rows and fill every dict with the other rows' keys set to None.
        if path.suffix != ".jsonl" or not path.exists():
            raise ValueError(f"tasks: expected an existing .jsonl file, got {location}")
        return _read_jsonl_lines(path), path.stem
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        return ds.to_list(), path.name
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        if not path.exists():
            raise ValueError(f"{loader}: file not found: {location}")
        kind = {
            ".jsonl": "json",
            ".json": "json",
            ".parquet": "parquet",
            ".arrow": "arrow",
            ".csv": "csv",
        }.get(path.suffix)
        if kind is None:
            raise ValueError(f"{loader}: cannot read {location}: suffix must be one of {LOCAL_SUFFIXES}")
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as e:
            if kind != "json":
                raise ValueError(f"{location}: could not read as {kind}: {e}") from e
            # Arrow could not unify the rows' types: read line by line so the bad row gets named.
            return _read_jsonl_lines(path), path.stem
        return ds.to_list(), path.stem
    hub_id, config, split = location, None, "train"
    if loader in HUB_DEFAULTS and HUB_DEFAULTS[loader][0] == location:
        hub_id, config, split = HUB_DEFAULTS[loader]
    try:
        ds = datasets.load_dataset(hub_id, name=config, split=split)
    except Exception as e:
        raise ValueError(
            f"{loader}: could not load hub dataset {hub_id!r} (config {config}, split {split}): {e}. "
            "Offline? Pass a local file instead."
        ) from e
    return ds.to_list(), split


def _read_jsonl_lines(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: row {n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {n}: a row must be a JSON object")
        rows.append(row)
    return rows


def load_source(
    loader: str, location: str | None = None, limit: int | None = None
) -> tuple[list[dict], dict[str, int]]:
    """Tasks of one real source. Returns (tasks, skipped) where skipped counts rows the source's filter left out.

    loader: a ROW_MAPPERS name; location: local file/dir or hub id (None -> the loader's hub default).
    Malformed rows raise ValueError naming the file and the 1-based row number.
    """
    if loader not in ROW_MAPPERS:
        raise ValueError(f"unknown loader {loader!r}; loaders: {sorted(ROW_MAPPERS)}")
    if location is None:
        if loader not in HUB_DEFAULTS:
            raise ValueError(f"loader {loader!r} has no hub default; give a file")
        location = HUB_DEFAULTS[loader][0]
    rows, tag = _read_rows(location, loader)
    mapper, tasks, skipped = ROW_MAPPERS[loader], [], Counter()
    for n, row in enumerate(rows, start=1):
        where = f"{location}: row {n}"
        try:
            task = mapper(row, where)
        except _Skip as s:
            skipped[str(s)] += 1
            continue
        if loader != "tasks":
            task = {"id": f"{loader}/{tag}/{n}", "domain": task.pop("domain"), "source": loader, **task}
            task["meta"] = {"row": n, **task.get("meta", {})}
            validate_task(task, where)
        tasks.append(task)
        if limit is not None and len(tasks) >= limit:
            break
    if skipped:
        log.warning("%s (%s): kept %d rows, skipped %s", loader, location, len(tasks), dict(skipped))
    else:
        log.info("%s (%s): kept %d rows", loader, location, len(tasks))
    return tasks, dict(skipped)


# ----------------------------------------------------------------------------------------------------------
# Reasoning Gym (procedural, offline, seeded)


def rg_task_names() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def _cfg_tag(cfg: dict) -> str:
    if not cfg:
        return "default"
    text = ";".join(f"{k}={json.dumps(cfg[k], sort_keys=True)}" for k in sorted(cfg))
    if len(text) <= 40 and re.fullmatch(r"[\w=;.\-\"]*", text):
        return text.replace('"', "")
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def reasoning_gym_tasks(name: str, n: int, seed: int, *, id_tag: str | None = None, **cfg: Any) -> list[dict]:
    """n Reasoning Gym tasks of dataset `name` with per-task settings `cfg` (fields of its RG config, and
    for graph_color exact_vertices: the answer's keys must be exactly the vertices, see the schema above)."""
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    exact_vertices = cfg.pop("exact_vertices", False)
    if not isinstance(exact_vertices, bool) or (exact_vertices and name != "graph_color"):
        raise ValueError(f"rg:{name}: exact_vertices={exact_vertices!r}; it is true or false, and graph_color only")
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        raise ValueError(
            f"unknown Reasoning Gym task {name!r}" + (f"; did you mean {close}?" if close else "")
        )
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"rg:{name}: n must be a positive int, got {n!r}")
    fields = {f.name for f in dataclasses.fields(DATASETS[name][1])} - {"seed", "size"}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"rg:{name}: unknown setting(s) {unknown}; {name} accepts {sorted(fields)}")
    try:
        ds = reasoning_gym.create_dataset(name, seed=seed, size=n, **cfg)
    except (AssertionError, TypeError, ValueError) as e:
        raise ValueError(f"rg:{name}: invalid settings {cfg}: {e!r}") from e
    tag = (id_tag or _cfg_tag(cfg)) + ("-exact" if exact_vertices else "")  # other scores: other ids
    tasks = []
    for i, entry in enumerate(ds):
        rg_entry = jsonable(entry)
        if (
            i == 0
            and entry.get("answer") is not None
            and ds.score_answer(entry["answer"], rg_entry) != ds.score_answer(entry["answer"], entry)
        ):
            # e.g. arc_agi / rearc compare the answer to tuple-of-tuple boards stored in metadata
            log.warning(
                "rg:%s: its scorer depends on non-JSON types in metadata; rewards must restore them", name
            )
        tasks.append(
            {
                "id": f"rg/{name}/{tag}/s{seed}/{i}",
                "domain": "logic",
                "source": "reasoning_gym",
                "prompt": _user_prompt(entry["question"], LOGIC_INSTRUCTION),
                "rg_task": name,
                "rg_entry": rg_entry,
                "meta": {"rg_config": jsonable(cfg), "difficulty": rg_entry["metadata"].get("difficulty")},
                **({"exact_vertices": True} if exact_vertices else {}),
            }
        )
    return tasks


def ood_suite(
    name: str, size: int | None = None, n: int = OOD_N, seed: int = EVAL_SEED, **cfg: Any
) -> list[dict]:
    """An out-of-distribution suite: "graph_color" with exactly `size` vertices (default: the training size
    GRAPH_COLOR_TRAIN_SIZE), "boxnet", or any other Reasoning Gym task with its settings."""
    if name == "graph_color":
        size = GRAPH_COLOR_TRAIN_SIZE if size is None else size
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"ood:graph_color: size must be a positive int, got {size!r}")
        return reasoning_gym_tasks(
            name, n, seed, id_tag=f"v{size}", min_num_vertices=size, max_num_vertices=size, **cfg
        )
    if size is not None:
        raise ValueError(f"ood:{name}: size applies to graph_color only; pass {name}'s own settings instead")
    return reasoning_gym_tasks(name, n, seed, **cfg)


# ----------------------------------------------------------------------------------------------------------
# The data specification (see the module docstring for the grammar)


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _options(parts: list[str], item: str) -> dict[str, Any]:
    opts = {}
    for p in parts:
        key, eq, val = p.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ValueError(f"spec item {item!r}: expected key=value, got {p!r}")
        opts[key.strip()] = _value(val.strip())
    return opts


def _sizes(text: str, item: str) -> list[int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if not m:
        raise ValueError(f"spec item {item!r}: sizes must be N or A-B, got {text!r}")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if hi < lo:
        raise ValueError(f"spec item {item!r}: empty size range {text!r}")
    return list(range(lo, hi + 1))


def parse_spec(spec: str) -> list[dict]:
    """Parse a data spec into items: {"item", "label", "kind" ("rg"|"loader"|"ood"), "weight", ...}."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty data spec")
    items = []
    for raw in _split_top(spec, ","):
        item = raw.strip()
        if not item:
            raise ValueError(f"data spec {spec!r}: empty item (stray comma?)")
        body, weight = item, None
        head, at, tail = item.rpartition("@")
        if at:
            try:
                weight = float(tail)
            except ValueError:
                pass  # an '@' inside a path, not a weight
            else:
                body = head
                if not weight > 0:
                    raise ValueError(f"spec item {item!r}: weight must be > 0")
        label = None
        m = re.match(r"([A-Za-z_][\w\-]*)=(.+)$", body)
        if m and not body.startswith(("rg:", "ood:")):
            label, body = m.group(1), m.group(2)
        parsed = {"item": item, "label": label, "weight": weight}
        if body.startswith("rg:"):
            name, *rest = _split_top(body[3:], ":")
            if not name:
                raise ValueError(f"spec item {item!r}: missing Reasoning Gym task name after 'rg:'")
            opts = _options(rest, item)
            parsed.update(
                kind="rg", task=name, n=opts.pop("n", DEFAULT_RG_N), seed=opts.pop("seed", None), cfg=opts
            )
            parsed["label"] = label or "reasoning_gym"
        elif body.startswith("ood:"):
            name, *rest = _split_top(body[4:], ":")
            sizes = None
            if rest and "=" not in rest[0]:
                sizes = _sizes(rest.pop(0), item)
            opts = _options(rest, item)
            if sizes is None and name == "graph_color":
                sizes = list(GRAPH_COLOR_OOD_SIZES)
            if sizes is not None and name != "graph_color":
                raise ValueError(f"spec item {item!r}: sizes apply to graph_color only")
            parsed.update(
                kind="ood",
                task=name,
                sizes=sizes,
                n=opts.pop("n", OOD_N),
                seed=opts.pop("seed", None),
                cfg=opts,
            )
            parsed["label"] = label or name
        else:
            loader, colon, location = body.partition(":")
            if colon and loader in ROW_MAPPERS:
                parsed.update(kind="loader", loader=loader, location=location)
            elif body in ROW_MAPPERS:
                parsed.update(kind="loader", loader=body, location=None)
            elif label in ROW_MAPPERS:
                parsed.update(kind="loader", loader=label, location=body)
            else:
                raise ValueError(
                    f"spec item {item!r}: cannot tell which loader reads {body!r}; write LOADER:{body} or "
                    f"LOADER={body} (loaders: {sorted(ROW_MAPPERS)}), or rg:TASK / ood:TASK"
                )
            parsed["label"] = label or parsed["loader"]
        items.append(parsed)
    given = [p for p in items if p["weight"] is not None]
    if given and len({p["label"] for p in given}) != len({p["label"] for p in items}):
        missing = sorted({p["label"] for p in items} - {p["label"] for p in given})
        raise ValueError(
            f"data spec {spec!r}: give a weight to every source or to none; no weight for {missing}"
        )
    return items


def _load_item(p: dict, seed: int) -> list[dict]:
    if p["kind"] == "rg":
        return reasoning_gym_tasks(p["task"], p["n"], seed if p["seed"] is None else p["seed"], **p["cfg"])
    if p["kind"] == "loader":
        return load_source(p["loader"], p["location"])[0]
    raise ValueError(f"spec item {p['item']!r}: ood: items belong in eval_suites, not in a training spec")


def spec_weights(spec: str) -> dict[str, float] | None:
    """Explicit per-label weights of a spec, or None when it gives none (Mixture then uses the paper's counts)."""
    weights: dict[str, float] = {}
    for p in parse_spec(spec):
        if p["weight"] is not None:
            if weights.get(p["label"], p["weight"]) != p["weight"]:
                raise ValueError(f"data spec: label {p['label']!r} has two different weights")
            weights[p["label"]] = p["weight"]
    return weights or None


def load_spec(
    spec: str, seed: int = 0, tokenizer: Any = None, max_prompt_tokens: int | None = None
) -> dict[str, list[dict]]:
    """Tasks per mixture source (label) for a data spec; filtered by filter_tasks (counts are logged)."""
    sources: dict[str, list[dict]] = {}
    for p in parse_spec(spec):
        sources.setdefault(p["label"], []).extend(_load_item(p, seed))
    for label in sources:
        sources[label], _ = filter_tasks(sources[label], tokenizer, max_prompt_tokens, name=label)
        if not sources[label]:
            raise ValueError(f"data spec: source {label!r} has no tasks left after filtering")
    return sources


# ----------------------------------------------------------------------------------------------------------
# Evaluation suites


def eval_suites(spec: str, seed: int = EVAL_SEED) -> dict[str, list[dict]]:
    """Named task lists for evaluate.py: local validation files, rg: items and OOD suites
    ("ood:graph_color:10-20" -> graph_color_v10 .. graph_color_v20; "ood:boxnet" -> boxnet)."""
    suites: dict[str, list[dict]] = {}
    for p in parse_spec(spec):
        item_seed = seed if p.get("seed") is None else p["seed"]
        if p["kind"] == "ood" and p["sizes"] is not None:
            for size in p["sizes"]:
                suites[f"{p['label']}_v{size}"] = ood_suite(
                    p["task"], size=size, n=p["n"], seed=item_seed, **p["cfg"]
                )
        elif p["kind"] == "ood":
            suites[p["label"]] = ood_suite(p["task"], n=p["n"], seed=item_seed, **p["cfg"])
        else:
            suites.setdefault(p["label"], []).extend(_load_item(p, item_seed))
    return suites


VALIDATION_DEFAULT_LOADERS = {
    "aime24": "deepscaler",
    "codeforces": "eurus2_code",
    "gpqa_diamond": "gpqa",
    "ifeval": "ifeval",
}


def validation_blend(
    aime24: str | None = None,
    codeforces: str | None = None,
    gpqa_diamond: str | None = None,
    ifeval: str | None = None,
    graph_color_n: int = VALIDATION_GRAPH_COLOR_N,
    seed: int = EVAL_SEED,
) -> dict[str, list[dict]]:
    """ProRL's validation blend for reset decisions (§3.3): AIME24, Codeforces, GPQA-Diamond, IFEval (local
    files, each "path" or "LOADER:path") and procedural graph_color at the training size. Missing files are
    left out with a warning, so a CPU run can validate on graph_color alone."""
    blend: dict[str, list[dict]] = {}
    for name, value in (
        ("aime24", aime24),
        ("codeforces", codeforces),
        ("gpqa_diamond", gpqa_diamond),
        ("ifeval", ifeval),
    ):
        if value is None:
            log.warning("validation blend: no %s file given; left out", name)
            continue
        loader, colon, location = value.partition(":")
        if not (colon and loader in ROW_MAPPERS):
            loader, location = VALIDATION_DEFAULT_LOADERS[name], value
        blend[name], _ = filter_tasks(load_source(loader, location)[0], name=name)
    if graph_color_n > 0:
        blend["graph_color"] = ood_suite(
            "graph_color", size=GRAPH_COLOR_TRAIN_SIZE, n=graph_color_n, seed=seed
        )
    return blend


# ----------------------------------------------------------------------------------------------------------
# Filtering and prompt formatting


def format_prompt(task: dict, tokenizer: Any, system_prompt: str | None = None) -> str:
    """The generation prompt: the task's chat (domain instruction ensured, optional system turn replacing any
    existing one) through tokenizer.apply_chat_template(add_generation_prompt=True)."""
    messages = _with_instruction(task["prompt"], domain_instruction(task))
    if system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}] + [
            m for m in messages if m["role"] != "system"
        ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def filter_tasks(
    tasks: list[dict], tokenizer: Any = None, max_prompt_tokens: int | None = None, name: str = "tasks"
) -> tuple[list[dict], dict[str, int]]:
    """Drop code tasks without tests and (with a tokenizer and limit) prompts longer than max_prompt_tokens
    after templating. Returns (kept, counts) with counts {"total", "kept", <reason>: n}; logs what it drops."""
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("filter_tasks: max_prompt_tokens needs a tokenizer")
    kept, dropped = [], Counter()
    for task in tasks:
        if task["domain"] == "code" and not task.get("tests"):
            dropped["code_without_tests"] += 1
            continue
        if max_prompt_tokens is not None:
            n_tokens = len(tokenizer(format_prompt(task, tokenizer), add_special_tokens=False)["input_ids"])
            if n_tokens > max_prompt_tokens:
                dropped["prompt_too_long"] += 1
                continue
        kept.append(task)
    counts = {"total": len(tasks), "kept": len(kept), **dropped}
    (log.warning if dropped else log.info)("filter %s: %s", name, counts)
    return kept, counts


# ----------------------------------------------------------------------------------------------------------
# The mixture sampler


def default_weights(sources: dict[str, list[dict]]) -> dict[str, float]:
    """The paper's domain counts (§3.3), each split evenly among the sources of that domain."""
    domain_of = {}
    for name, tasks in sources.items():
        domains = {t["domain"] for t in tasks}
        if len(domains) != 1:
            raise ValueError(
                f"source {name!r} mixes domains {sorted(domains)}; give Mixture explicit weights"
            )
        domain_of[name] = domains.pop()
    per_domain = Counter(domain_of.values())
    return {name: PAPER_DOMAIN_COUNTS[d] / per_domain[d] for name, d in domain_of.items()}


class Mixture:
    """Weighted, seeded, resumable interleave of several task lists.

    Which source fills each slot is deterministic, by Balinski & Young's quota method of apportionment
    (Amer. Math. Monthly 82(7), 1975): among the sources that stay within their upper quota,
    taken_s < w_s * (drawn + 1), take the one with the largest w_s / (taken_s + 1) (ties by name). It
    satisfies quota: after any N draws every source has w_s * N prompts within less than one (tested with
    random weights), so a batch of k holds each domain's share up to rounding. Within a source the order
    is a shuffle seeded by (seed, source, epoch), redrawn each epoch. The state (counts and epoch/position
    per source) is JSON-serialisable; a run restored from it continues with the next unseen prompt.
    """

    def __init__(
        self, sources: dict[str, list[dict]], weights: dict[str, float] | None = None, seed: int = 0
    ):
        if not sources:
            raise ValueError("Mixture needs at least one source")
        empty = sorted(name for name, tasks in sources.items() if not tasks)
        if empty:
            raise ValueError(f"Mixture: empty source(s) {empty}")
        weights = default_weights(sources) if weights is None else dict(weights)
        if set(weights) != set(sources):
            raise ValueError(f"Mixture: weights for {sorted(weights)} but sources {sorted(sources)}")
        if not all(w > 0 for w in weights.values()):
            raise ValueError(f"Mixture: weights must be > 0, got {weights}")
        total = sum(weights.values())
        self.names = sorted(sources)
        self.sources = {name: list(sources[name]) for name in self.names}
        self.weights = {name: weights[name] / total for name in self.names}
        self.seed = seed
        self.drawn = 0  # prompts handed out so far
        self.taken = {name: 0 for name in self.names}
        self.epoch = {name: 0 for name in self.names}
        self.pos = {name: 0 for name in self.names}  # next index into the source's current-epoch order
        self._orders: dict[str, tuple[int, list[int]]] = {}

    def _order(self, name: str) -> list[int]:
        epoch = self.epoch[name]
        cached = self._orders.get(name)
        if cached is None or cached[0] != epoch:
            order = list(range(len(self.sources[name])))
            random.Random(f"{self.seed}/{name}/{epoch}").shuffle(order)  # str seed: same in every process
            cached = self._orders[name] = (epoch, order)
        return cached[1]

    def _pick_source(self) -> str:
        n = self.drawn + 1
        # sum_s w_s * n = n > drawn = sum_s taken_s, so some source is eligible (the fallback guards rounding)
        eligible = [s for s in self.names if self.taken[s] < self.weights[s] * n] or self.names
        return max(eligible, key=lambda s: (self.weights[s] / (self.taken[s] + 1), -self.names.index(s)))

    def next_batch(self, k: int) -> list[dict]:
        """The next k tasks of the interleave."""
        batch = []
        for _ in range(k):
            name = self._pick_source()
            batch.append(self.sources[name][self._order(name)[self.pos[name]]])
            self.drawn += 1
            self.taken[name] += 1
            self.pos[name] += 1
            if self.pos[name] == len(self.sources[name]):
                self.epoch[name] += 1
                self.pos[name] = 0
        return batch

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "drawn": self.drawn,
            "weights": dict(self.weights),
            "sources": {
                name: {
                    "size": len(self.sources[name]),
                    "taken": self.taken[name],
                    "epoch": self.epoch[name],
                    "pos": self.pos[name],
                }
                for name in self.names
            },
        }

    def load_state_dict(self, state: dict) -> None:
        if set(state["sources"]) != set(self.names):
            raise ValueError(
                f"Mixture state has sources {sorted(state['sources'])}, this mixture {self.names}"
            )
        for name, s in state["sources"].items():
            if s["size"] != len(self.sources[name]):
                raise ValueError(
                    f"Mixture state: source {name!r} had {s['size']} tasks, now {len(self.sources[name])}; "
                    "the data changed, so the saved position means nothing"
                )
        if state["seed"] != self.seed:
            raise ValueError(
                f"Mixture state was saved with seed {state['seed']}, this mixture has seed {self.seed}"
            )
        self.weights = {name: float(state["weights"][name]) for name in self.names}
        self.drawn = int(state["drawn"])
        for name, s in state["sources"].items():
            self.taken[name], self.epoch[name], self.pos[name] = (
                int(s["taken"]),
                int(s["epoch"]),
                int(s["pos"]),
            )
