"""evaluate.py: pass@k up to k=128 and the paper's figures (ProRL §4).

Concept
-------
ProRL's claim is that prolonged RL *expands* the reasoning boundary: problems the
base model cannot solve even with many tries become solvable. The measure is
pass@k for large k. For one problem with n samples of which c are correct, the
unbiased estimator (Chen et al. 2021, "Evaluating LLMs trained on code", §2.1) is

    pass@k = 1 - C(n-c, k) / C(n, k)                     (needs n >= k)
           = 1 - prod_{i=n-c+1}^{n} (1 - k / i)          (product form: no huge binomials)

and pass@1 = c / n (the mean correctness). A suite's pass@k is the mean over its
problems, reported with its standard error over problems, std(per-problem pass@k) /
sqrt(#problems): with tens of problems one problem moves a suite by several points.
A sample is correct when its reward is exactly 1.0 (rewards lie in
[0, 1]; partial credit such as Reasoning Gym's 0.01 for a valid wrong answer is not
a solve); `--correct-threshold` relaxes this to score >= threshold.

Pipeline: for every checkpoint (HF model dir) and every suite (data.py's evaluation
suites), sample n = max(--passk, --n) completions per problem with rollout.py (vLLM,
T=0.6, top-p 0.95: §4), score them with rewards.score_batch, and cache one jsonl line
per problem under <out>/cache/<checkpoint-slug>/<suite>.jsonl. A problem already in
the cache with >= n samples is never re-sampled, so re-plotting is free and an
interrupted evaluation resumes where it stopped. Then write <out>/results.json,
the figures (PNG, each with its data as JSON beside it) and <out>/summary.md:

    passk_curves       pass@k vs k (log2 x) per suite, one line per checkpoint
    regimes            pass@K across checkpoints, one panel per regime (rule below)
    gain_vs_base       base pass@K vs the final's gain in pass@K per suite, fitted line, Pearson r
    pass1_hist         per-problem pass@1 distribution per suite, base vs final
    graph_color        pass@1 and pass@K vs vertex count (suites graph_color_v<N>), trained sizes shaded,
                       the chance baseline dashed
    boxnet             pass@1 and pass@K bars per checkpoint (suites boxnet*)
    training_dynamics  reward, entropy, KL, response length, val/* from train.py's metrics.jsonl,
                       dashed lines at reference resets
    run_comparison     with --runs: several runs' entropy, reward, KL and validation overlaid (ablations)

The table also counts, per suite, problems the final checkpoint solves at least once
that the base never does (c_base = 0 < c_final: the expanded boundary) and the reverse.

Chance baseline. Where a task's answer space is small, pass@k at large k measures
guessing as much as reasoning. For a task whose answers can be enumerated (graph_color:
a colour from the k_c options for each of the n vertices), let q be the share of the
answer space that is correct (proper colourings / k_c^n, counted exactly). A guesser
drawing answers uniformly and independently then has

    pass@1 = q,        pass@k = 1 - (1 - q)^k,

averaged over the suite's problems like every other pass@k. The table and the
graph_color figure show it beside the checkpoints ("chance"); suites whose answers
cannot be enumerated (numbers, code, text) have none.

Checkpoints are compared in the order given: the FIRST is the base, the LAST is
the final (trained) model, those between are intermediate.

The three regimes (§4.2; Fig. "diminished / plateau / sustained")
------------------------------------------------------------------
Let p_0 .. p_m be a suite's pass@K (K = the largest k evaluated) for the m+1
checkpoints in order, G = p_m - p_0 the total gain and L = p_m - p_{m-1} the gain of
the last interval. With margin = REGIME_MARGIN (0.02 absolute) and
plateau_frac = PLATEAU_FRAC (0.5):

    diminished  if G < -margin                      (the boundary shrank)
    plateau     if |G| <= margin                    (no gain to sustain), or
                if m >= 2 and L < plateau_frac * G / m
                    (the last interval adds less than half of an average interval's
                     share of the total gain: the gains have saturated)
    sustained   otherwise                           (pass@K still rising at the end)

With only two checkpoints (m = 1) saturation cannot be seen: a gain > margin counts
as sustained.

Where we depart from ProRL
--------------------------
- Suites are what data.py provides (Reasoning Gym held-out tasks, graph_color_v<N>,
  boxnet, local validation files); the paper's AIME / Codeforces / GPQA need
  downloads that are impossible here.
- The paper drew 256 samples for k <= 128 and 32k-token completions; our defaults
  are n = passk = 128 and --max-tokens from embedded.py (the mini model's context).
- The paper assigns its regimes by eye (diminished: pass@128 declines; plateau: early
  gains, then diminishing returns; sustained: still improving); the rule above makes
  them reproducible. A flat pass@K (|G| <= margin) is not named in the paper; we call it
  plateau.

Run
---
    python evaluate.py --passk 128                         # embedded default's checkpoints
    python evaluate.py --checkpoints base/ run/step_1000/policy --suites "<spec>"
    python evaluate.py --plots-only                        # figures + table from results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import logging
import operator
import os
import re
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # files only, never a display (headless CI, cluster nodes)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import rewards  # noqa: E402
import rollout  # noqa: E402

log = logging.getLogger("evaluate")

# ---------------------------------------------------------------------------
# Defaults (one place for each number)
# ---------------------------------------------------------------------------
PAPER_PASSK = 128          # §4: pass@k studied up to k = 128
PAPER_TEMPERATURE = 0.6    # §4: evaluation temperature
PAPER_TOP_P = 0.95         # §4: evaluation top-p
PAPER_MAX_TOKENS = 32768   # §4: 32k-token evaluation context
CORRECT_THRESHOLD = 1.0    # strict: only a full reward counts as a solve
REGIME_MARGIN = 0.02       # absolute pass@K change treated as noise by the regime rule
PLATEAU_FRAC = 0.5         # last-interval gain below this share of the mean interval gain = plateau
BATCH_PROMPTS = 32         # prompts per engine call (x n samples each)
CACHE_TEXT_CHARS = 1000    # characters of each completion kept in the cache (0: none)
MINI_ROOT = "out/mini"     # where the embedded default (train.py) writes its checkpoints
HIST_BINS = 10             # pass@1 histogram bins over [0, 1]
FIG_DPI = 120
GRAPH_COLOR_RE = re.compile(r"^graph_color_v(\d+)$")
BOXNET_PREFIX = "boxnet"


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------
@dataclass
class Config:
    checkpoints: list[str] | None = field(default=None, metadata={"help": (
        "HF model dirs to compare, base first, final last. Default: the embedded "
        f"default's warm start {MINI_ROOT}/warmstart and its newest "
        f"{MINI_ROOT}/run/checkpoints/step_*/policy (paper: base vs ProRL)")})
    suites: str | None = field(default=None, metadata={"help": (
        "data spec of the evaluation suites, as data.py's eval_suites parses it. "
        "Default: embedded.mini_eval_suites() (the embedded default's held-out suites, "
        "minus questions seen in training)")})
    problems: int = field(default=0, metadata={"help": (
        "problems per default suite (0 = embedded.EVAL_N); ignored with --suites")})
    passk: int = field(default=PAPER_PASSK, metadata={"help": (
        "largest k; pass@k is reported for powers of 2 up to it (paper §4: 128)")})
    n: int = field(default=0, metadata={"help": (
        "samples per problem; the run uses max(passk, n) (paper §4: 256 for k<=128)")})
    temperature: float = field(default=PAPER_TEMPERATURE, metadata={"help": (
        "sampling temperature (paper §4: 0.6)")})
    top_p: float = field(default=PAPER_TOP_P, metadata={"help": "nucleus top-p (paper §4: 0.95)"})
    max_tokens: int | None = field(default=None, metadata={"help": (
        "max new tokens per completion. Default: embedded.MINI_MAX_TOKENS if defined, "
        f"else the paper's {PAPER_MAX_TOKENS} (§4: 32k)")})
    seed: int = field(default=0, metadata={"help": "sampling seed passed to the engine (paper: n/a)"})
    out: str = field(default="out/eval", metadata={"help": (
        "output dir: cache/, results.json, figures, summary.md")})
    metrics: str | None = field(default=None, metadata={"help": (
        "train.py's metrics.jsonl for the training-dynamics figure. Default: "
        f"{MINI_ROOT}/run/metrics.jsonl if it exists")})
    runs: list[str] | None = field(default=None, metadata={"help": (
        "LABEL=metrics.jsonl pairs of training runs to overlay (entropy, reward, KL, validation) in "
        "run_comparison.png: the ablation study (README). Default: none")})
    plots_only: bool = field(default=False, metadata={"help": (
        "no sampling: redraw figures and the table from <out>/results.json")})
    correct_threshold: float = field(default=CORRECT_THRESHOLD, metadata={"help": (
        "a sample is correct when score >= this (default 1.0: strict, as pass@k in the paper)")})
    batch_prompts: int = field(default=BATCH_PROMPTS, metadata={"help": (
        "prompts per engine call; each gets n samples (paper: n/a)")})
    cache_text_chars: int = field(default=CACHE_TEXT_CHARS, metadata={"help": (
        "characters of each completion kept in the cache, 0 keeps none (paper: n/a)")})
    workers: int | None = field(default=None, metadata={"help": (
        "reward worker processes for rewards.score_batch (default: its own)")})
    allow_unsafe_code: bool = field(default=False, metadata={"help": (
        "let rewards.py run code tests without the sandbox (never on shared machines)")})
    engine: str = field(default="{}", metadata={"help": (
        "JSON dict of rollout.Rollout engine settings, e.g. '{\"kv_cache_gb\": 4}'; max_model_len "
        "defaults to the model's max_position_embeddings")})
    train_vertices: str | None = field(default=None, metadata={"help": (
        "graph_color vertex counts seen in training, 'N' or 'A-B', shaded in the graph_color figure. "
        "Default: embedded.TRAIN_VERTICES with the default suites, else data.GRAPH_COLOR_TRAIN_SIZE "
        "(paper §4: trained at 10, tested to 20)")})
    regime_margin: float = field(default=REGIME_MARGIN, metadata={"help": (
        "pass@K change below this is noise for the regime rule (absolute; see docstring)")})
    plateau_frac: float = field(default=PLATEAU_FRAC, metadata={"help": (
        "plateau when the last interval adds < this x the mean interval gain (see docstring)")})

    @property
    def num_samples(self) -> int:
        return max(self.passk, self.n)


def parse_args(argv: list[str] | None = None) -> Config:
    """Build argparse from Config's fields: one flag per field, help from its metadata."""
    parser = argparse.ArgumentParser(
        description="pass@k up to k=128 and ProRL's figures for a set of checkpoints.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif f.name in ("checkpoints", "runs"):
            parser.add_argument(flag, nargs="+", default=None, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"])
    cfg = Config(**vars(parser.parse_args(argv)))
    if cfg.passk < 1:
        parser.error(f"--passk must be >= 1, got {cfg.passk}")
    if cfg.batch_prompts < 1:
        parser.error(f"--batch-prompts must be >= 1, got {cfg.batch_prompts}")
    if not 0.0 < cfg.correct_threshold <= 1.0:
        parser.error(f"--correct-threshold must lie in (0, 1], got {cfg.correct_threshold}")
    if cfg.train_vertices:
        try:
            parse_vertices(cfg.train_vertices)
        except ValueError as e:
            parser.error(str(e))
    for item in cfg.runs or []:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            parser.error(f"--runs: expected LABEL=path/to/metrics.jsonl, got {item!r}")
        if not os.path.isfile(path):
            parser.error(f"--runs {item!r}: {path} is not a file")
    try:
        engine = json.loads(cfg.engine)
    except json.JSONDecodeError as e:
        parser.error(f"--engine is not valid JSON ({e}): {cfg.engine!r}")
    if not isinstance(engine, dict):
        parser.error(f"--engine must be a JSON object, got {cfg.engine!r}")
    return cfg


def default_checkpoints(root: str = MINI_ROOT) -> list[str]:
    """The embedded default's warm start and its newest complete training checkpoint.

    train.py writes <root>/run/checkpoints/step_XXXXXX/{policy/, ..., COMPLETE} and renames
    a finished step_XXXXXX.tmp into place, so only step dirs holding COMPLETE count."""
    warm = os.path.join(root, "warmstart")
    pattern = os.path.join(root, "run", "checkpoints", "step_*")
    steps = {}
    for d in glob.glob(pattern):
        m = re.fullmatch(r"step_(\d+)", os.path.basename(d))
        if m and os.path.isfile(os.path.join(d, "COMPLETE")) and os.path.isdir(os.path.join(d, "policy")):
            steps[int(m.group(1))] = os.path.join(d, "policy")
    found = ([warm] if os.path.isdir(warm) else []) + ([steps[max(steps)]] if steps else [])
    if not found:
        raise FileNotFoundError(
            f"no checkpoints found: looked for {warm} and {pattern}/policy (complete ones). Run "
            "`python train.py` first (the embedded default) or pass --checkpoints DIR [DIR ...]")
    if len(found) == 1:
        log.warning("only one default checkpoint found (%s): nothing to compare against", found[0])
    return found


def default_suites_spec() -> str:
    """The embedded default's held-out suites: embedded.MINI_EVAL_SPEC."""
    try:
        import embedded  # entry-point module, imported only when the default is needed
    except ModuleNotFoundError as e:
        if e.name != "embedded":
            raise
        raise RuntimeError("no --suites given and embedded.py is missing: pass --suites SPEC "
                           "(a data spec, see data.py)") from e
    if not hasattr(embedded, "MINI_EVAL_SPEC"):
        raise RuntimeError("embedded.py defines no MINI_EVAL_SPEC: pass --suites SPEC")
    return embedded.MINI_EVAL_SPEC


def default_max_tokens() -> int:
    try:
        import embedded
        return int(getattr(embedded, "MINI_MAX_TOKENS", PAPER_MAX_TOKENS))
    except ModuleNotFoundError as e:
        if e.name != "embedded":
            raise
        return PAPER_MAX_TOKENS


def parse_vertices(text: str) -> list[int]:
    """'N' -> [N, N], 'A-B' -> [A, B]."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not m or int(m.group(2) or m.group(1)) < int(m.group(1)):
        raise ValueError(f"--train-vertices: expected N or A-B with A <= B, got {text!r}")
    return [int(m.group(1)), int(m.group(2) or m.group(1))]


def default_train_vertices(default_suites: bool) -> list[int]:
    """The embedded default's training sizes when its suites are evaluated, else the paper's."""
    if default_suites:
        try:
            import embedded
            if hasattr(embedded, "TRAIN_VERTICES"):
                lo, hi = embedded.TRAIN_VERTICES
                return [int(lo), int(hi)]
        except ModuleNotFoundError as e:
            if e.name != "embedded":
                raise
    return [data.GRAPH_COLOR_TRAIN_SIZE, data.GRAPH_COLOR_TRAIN_SIZE]


def default_metrics_path(root: str = MINI_ROOT) -> str | None:
    path = os.path.join(root, "run", "metrics.jsonl")
    return path if os.path.isfile(path) else None


# ---------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k)/C(n, k) of one problem with c correct out of n."""
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got k={k}")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} > n={n}: the unbiased estimator needs at least k "
                         "samples per problem (sample more with --n or lower --passk)")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    # C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i): each factor in (0, 1], no overflow
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_per_problem(ns, cs, k: int) -> np.ndarray:
    """pass@k of each problem; ns, cs: (P,) sample and correct counts."""
    ns, cs = np.asarray(ns), np.asarray(cs)
    if ns.shape != cs.shape:
        raise ValueError(f"pass_at_k_per_problem: ns {ns.shape} and cs {cs.shape} differ")
    return np.array([pass_at_k(int(n), int(c), k) for n, c in zip(ns, cs)], dtype=float)  # (P,)


def count_proper_colorings(num_vertices: int, edges, num_colors: int) -> int:
    """Exact number of proper colourings of a graph with num_colors colours.

    Vertices are added in order 0..n-1; the state is the colours of the "frontier" (added vertices
    that still have a neighbour to come), so the work grows with the frontier, not with n:
    num_colors^|frontier| states at most, against num_colors^n for enumerating every colouring."""
    later = [set() for _ in range(num_vertices)]  # neighbours with a larger index
    earlier = [set() for _ in range(num_vertices)]
    for u, v in edges:
        if u == v:
            return 0  # a self-loop: no proper colouring
        u, v = min(u, v), max(u, v)
        later[u].add(v)
        earlier[v].add(u)
    frontier: tuple[int, ...] = ()  # sorted vertices whose colours the state keeps
    counts: dict[tuple[int, ...], int] = {(): 1}  # colours of the frontier -> colourings so far
    for v in range(num_vertices):
        grown = frontier + (v,)
        keep = tuple(u for u in grown if any(w > v for w in later[u]))
        neighbours = [frontier.index(u) for u in earlier[v]]  # every earlier neighbour is in the frontier
        kept = [grown.index(u) for u in keep]  # positions in (frontier colours + v's colour)
        new_counts: dict[tuple[int, ...], int] = {}
        for colors, count in counts.items():
            taken = {colors[i] for i in neighbours}
            for c in range(num_colors):
                if c not in taken:
                    grown_colors = colors + (c,)
                    key = tuple(grown_colors[i] for i in kept)
                    new_counts[key] = new_counts.get(key, 0) + count
        frontier, counts = keep, new_counts
    return sum(counts.values())


def guess_rate(task: dict) -> float | None:
    """q: the chance that one uniformly random answer is correct, where the answer space can be
    enumerated (Reasoning Gym graph_color); None for every other task."""
    if task.get("rg_task") != "graph_color":
        return None
    puzzle = task["rg_entry"]["metadata"]["puzzle"]
    n, k = len(puzzle["vertices"]), len(puzzle["color_options"])
    index = {v: i for i, v in enumerate(puzzle["vertices"])}
    edges = [(index[u], index[v]) for u, v in puzzle["edges"]]
    return count_proper_colorings(n, edges, k) / k**n


def chance_metrics(tasks: list[dict], ks: list[int]) -> dict | None:
    """A uniform guesser's pass@k on a suite (pass@k = 1 - (1 - q)^k per problem, then the mean),
    or None when any task's answers cannot be enumerated."""
    qs = [guess_rate(t) for t in tasks]
    if not qs or any(q is None for q in qs):
        return None
    qs = np.array(qs)
    out = {}
    for k in ks:
        per_problem = 1.0 - (1.0 - qs) ** k
        out[f"pass@{k}"] = float(per_problem.mean())
        out[f"pass@{k}_se"] = standard_error(per_problem)
    return out


def count_correct(scores, threshold: float = CORRECT_THRESHOLD) -> int:
    """Correct samples: score >= threshold (1.0 by default, i.e. score == 1.0)."""
    return int(np.sum(np.asarray(scores, dtype=float) >= threshold))


def ks_up_to(passk: int) -> list[int]:
    """Powers of 2 up to passk, plus passk itself when it is not one."""
    ks = [2 ** i for i in range(passk.bit_length()) if 2 ** i <= passk]
    return ks if ks[-1] == passk else ks + [passk]


# ---------------------------------------------------------------------------
# Sampling with a resumable per-(checkpoint, suite) cache
# ---------------------------------------------------------------------------
def read_cache(path: str, sampling: dict | None = None) -> dict[str, dict]:
    """Records by task id (the last line of an id wins). A torn or malformed line (an
    interrupted write) is skipped and counted; a line sampled with other settings is
    refused, since mixing temperatures would corrupt pass@k."""
    records: dict[str, dict] = {}
    if not os.path.exists(path):
        return records
    bad = 0
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rec["id"], rec["scores"]  # noqa: B018 (required keys)
            except (json.JSONDecodeError, KeyError, TypeError):
                bad += 1
                continue
            if sampling is not None and rec.get("sampling") != sampling:
                raise ValueError(
                    f"{path}:{lineno}: cached with sampling {rec.get('sampling')}, now {sampling}. "
                    "Use another --out or delete this cache file")
            records[rec["id"]] = rec
    if bad:
        log.warning("%s: skipped %d malformed line(s) (interrupted write?); they are re-sampled",
                    path, bad)
    return records


def end_torn_line(path: str) -> None:
    """Terminate a torn last line (an interrupted append) so new records start on their own line."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def tasks_to_sample(tasks: list[dict], cached: dict[str, dict], n: int) -> list[dict]:
    """Tasks whose cache entry is missing or holds fewer than n samples."""
    return [t for t in tasks if len(cached.get(t["id"], {}).get("scores", ())) < n]


def sample_and_score(tasks: list[dict], generate_fn, score_fn, n: int, cache_path: str | None = None,
                     batch_prompts: int = BATCH_PROMPTS, sampling: dict | None = None,
                     text_chars: int = CACHE_TEXT_CHARS, desc: str = "sample") -> dict[str, dict]:
    """n scored samples for every task, through the cache.

    generate_fn(tasks, n) -> flat list of len(tasks)*n dicts ("text", "response_ids",
    "finish_reason"), sample j of task i at i*n + j (rollout.Rollout.generate's order).
    score_fn(completions, tasks) -> list of floats (rewards.score_batch).
    Returns {task id: record}; records hold "scores", "lengths", "truncated", "texts".
    """
    ids = [t["id"] for t in tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"{desc}: duplicate task ids {dup}: the cache is keyed by id")
    cached = read_cache(cache_path, sampling) if cache_path else {}
    todo = tasks_to_sample(tasks, cached, n)
    log.info("%s: %d of %d tasks cached, %d to sample x %d", desc, len(tasks) - len(todo),
             len(tasks), len(todo), n)
    if todo and generate_fn is None:
        raise RuntimeError(f"{desc}: {len(todo)} tasks are not cached and no sampler was given")
    if cache_path:
        os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
        end_torn_line(cache_path)
    with tqdm(total=len(todo), desc=desc, unit="task", disable=not todo) as bar:
        for start in range(0, len(todo), batch_prompts):
            batch = todo[start:start + batch_prompts]
            outs = generate_fn(batch, n)
            if len(outs) != len(batch) * n:
                raise RuntimeError(f"{desc}: generate_fn returned {len(outs)} samples for "
                                   f"{len(batch)} tasks x n={n}")
            texts = [o["text"] for o in outs]
            scores = [float(s) for s in score_fn(texts, [t for t in batch for _ in range(n)])]
            if len(scores) != len(texts):
                raise RuntimeError(f"{desc}: score_fn returned {len(scores)} scores for "
                                   f"{len(texts)} completions")
            new = []
            for i, task in enumerate(batch):
                rows = outs[i * n:(i + 1) * n]
                new.append({
                    "id": task["id"],
                    "scores": scores[i * n:(i + 1) * n],
                    "lengths": [len(o["response_ids"]) for o in rows],
                    "truncated": sum(o.get("finish_reason") == "length" for o in rows),
                    "texts": [o["text"][:text_chars] for o in rows] if text_chars > 0 else [],
                    "sampling": sampling,
                })
            if cache_path:  # append + flush per batch: an interruption loses one batch at most
                with open(cache_path, "a") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in new)
            cached.update((r["id"], r) for r in new)
            bar.update(len(batch))
    return {i: cached[i] for i in ids}


def checkpoint_label(path: str) -> str:
    """Short name: ".../step_000200/policy" -> "step_000200", ".../warmstart" -> "warmstart"."""
    parts = [p for p in os.path.normpath(path).split(os.sep) if p not in ("", ".")]
    if len(parts) >= 2 and parts[-1] in ("policy", "model", "hf"):
        return parts[-2]
    return parts[-1] if parts else path


def checkpoint_slug(path: str) -> str:
    """Cache dir name: the readable label plus a hash of the path and its files' sizes and
    mtimes, so re-trained weights at the same path never reuse a stale cache."""
    h = hashlib.sha1(os.path.abspath(path).encode())
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            st = os.stat(os.path.join(path, name))
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return f"{checkpoint_label(path)}-{h.hexdigest()[:10]}"


def unique_labels(paths: list[str]) -> list[str]:
    labels = [checkpoint_label(p) for p in paths]
    return [lab if labels.count(lab) == 1 else f"{lab}#{i}" for i, lab in enumerate(labels)]


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------
def task_metrics(scores, ks: list[int], threshold: float = CORRECT_THRESHOLD) -> dict:
    n, c = len(scores), count_correct(scores, threshold)
    row = {"n": n, "c": c}
    row.update({f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n})
    return row


def standard_error(vals) -> float:
    """Standard error of a suite's mean over its problems: the noise of a suite this size (the sampling
    noise of each problem's estimate is inside it). 0 for a single problem."""
    return float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0


def add_standard_errors(results: dict) -> None:
    """Fill pass@k_se from the per-problem values (results.json files written before it was stored)."""
    for per_suite in results["results"].values():
        for r in per_suite.values():
            for key in [k for k in r if k.startswith("pass@") and not k.endswith("_se")]:
                vals = [t[key] for t in r["tasks"].values() if key in t]
                if len(vals) == r["n_tasks"]:
                    r.setdefault(key + "_se", standard_error(vals))


def suite_metrics(records: dict[str, dict], ks: list[int], threshold: float = CORRECT_THRESHOLD) -> dict:
    """Per-task metrics and their means over the suite's problems."""
    tasks = {tid: task_metrics(r["scores"], ks, threshold) for tid, r in records.items()}
    out = {"n_tasks": len(tasks)}
    for k in ks:
        vals = [t[f"pass@{k}"] for t in tasks.values() if f"pass@{k}" in t]
        if vals and len(vals) == len(tasks):
            out[f"pass@{k}"] = float(np.mean(vals))
            out[f"pass@{k}_se"] = standard_error(vals)
    lengths = [x for r in records.values() for x in r.get("lengths", [])]
    samples = sum(len(r["scores"]) for r in records.values())
    out["mean_length"] = float(np.mean(lengths)) if lengths else None
    out["truncated_frac"] = (sum(r.get("truncated", 0) for r in records.values()) / samples
                             if samples else None)
    out["tasks"] = tasks
    return out


def load_suites(spec: str) -> dict[str, list[dict]]:
    """{suite name: tasks} from a data spec, through data.py."""
    suites = data.eval_suites(spec)
    if not isinstance(suites, dict) or not suites:
        raise ValueError(f"data.eval_suites({spec!r}) gave no suites (got {type(suites).__name__})")
    for name, tasks in suites.items():
        if not re.fullmatch(r"[\w.\-]+", name):
            raise ValueError(f"suite name {name!r} (spec {spec!r}) is not a safe file name: use a label=")
        if not tasks:
            raise ValueError(f"suite {name!r} from spec {spec!r} is empty")
    return suites


def make_generate_fn(engine, tokenizer, cfg: Config, max_tokens: int):
    """generate_fn for sample_and_score over a rollout.Rollout engine."""
    def generate_fn(tasks: list[dict], n: int) -> list[dict]:
        prompts = [data.format_prompt(t, tokenizer) for t in tasks]
        return engine.generate(prompts, n=n, temperature=cfg.temperature, top_p=cfg.top_p,
                               max_tokens=max_tokens, seed=cfg.seed)
    return generate_fn


def rollout_sampler(path: str, cfg: Config, max_tokens: int):
    """(generate_fn, close) for one checkpoint: a rollout.Rollout engine and its tokenizer."""
    settings = json.loads(cfg.engine)
    if "max_model_len" not in settings:
        # evaluation prompts (e.g. boxnet) can be long: give the engine the model's whole context
        with open(os.path.join(path, "config.json")) as fh:
            context = json.load(fh).get("max_position_embeddings")
        if context:
            settings["max_model_len"] = int(context)
    engine = rollout.Rollout(path, **settings)
    # the engine's tokenizer is the checkpoint's own, chat template included
    return make_generate_fn(engine, engine.tokenizer, cfg, max_tokens), engine.close


def config_suites(cfg: Config) -> dict[str, list[dict]]:
    """--suites, or the embedded default's held-out suites (minus any question seen in training)."""
    if cfg.suites:
        return load_suites(cfg.suites)
    import embedded

    return embedded.mini_eval_suites(n=cfg.problems or embedded.EVAL_N)


def evaluate(cfg: Config, suites: dict[str, list[dict]] | None = None,
             sampler_factory=rollout_sampler, score_fn=None) -> dict:
    """Sample (through the cache), score and summarise every checkpoint x suite.

    sampler_factory(path, cfg, max_tokens) -> (generate_fn, close) is called only for a
    checkpoint with uncached tasks, and close() runs before the next checkpoint starts.
    """
    paths = cfg.checkpoints or default_checkpoints()
    suites = suites if suites is not None else config_suites(cfg)
    score_fn = score_fn or (lambda texts, tasks: rewards.score_batch(
        texts, tasks, workers=cfg.workers, allow_unsafe_code=cfg.allow_unsafe_code))
    max_tokens = cfg.max_tokens or default_max_tokens()
    n, ks = cfg.num_samples, ks_up_to(cfg.passk)
    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": max_tokens,
                "seed": cfg.seed}
    labels = unique_labels(paths)
    results = {"ks": ks, "passk": cfg.passk, "n": n, "checkpoints": labels,
               "checkpoint_paths": dict(zip(labels, paths)), "suites": list(suites),
               "sampling": sampling, "correct_threshold": cfg.correct_threshold,
               "graph_color_train_vertices": (parse_vertices(cfg.train_vertices) if cfg.train_vertices
                                              else default_train_vertices(cfg.suites is None)),
               "results": {}}
    for label, path in zip(labels, paths):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint {path!r} is not a directory (--checkpoints)")
        cache_dir = os.path.join(cfg.out, "cache", checkpoint_slug(path))
        caches = {s: os.path.join(cache_dir, f"{s}.jsonl") for s in suites}
        missing = sum(len(tasks_to_sample(t, read_cache(caches[s], sampling), n))
                      for s, t in suites.items())
        generate_fn, close = None, None
        if missing:
            log.info("%s: starting an engine for %d uncached tasks", label, missing)
            generate_fn, close = sampler_factory(path, cfg, max_tokens)
        try:
            results["results"][label] = {
                s: suite_metrics(
                    sample_and_score(tasks, generate_fn, score_fn, n, caches[s], cfg.batch_prompts,
                                     sampling, cfg.cache_text_chars, desc=f"{label}/{s}"),
                    ks, cfg.correct_threshold)
                for s, tasks in suites.items()}
        finally:
            if close is not None:
                close()  # one engine per checkpoint: free its KV cache before the next starts
    results["chance"] = {s: c for s, tasks in suites.items() if (c := chance_metrics(tasks, ks)) is not None}
    results["regime_params"] = {"margin": cfg.regime_margin, "plateau_frac": cfg.plateau_frac}
    results["regimes"] = classify_suites(results, cfg.regime_margin, cfg.plateau_frac)
    return results


# ---------------------------------------------------------------------------
# Regimes (rule in the module docstring)
# ---------------------------------------------------------------------------
def classify_regime(curve, margin: float = REGIME_MARGIN, plateau_frac: float = PLATEAU_FRAC) -> str:
    """curve: pass@K of one suite per checkpoint, base first. Returns the regime name."""
    p = np.asarray(curve, dtype=float)
    if p.ndim != 1 or len(p) < 2:
        raise ValueError(f"classify_regime needs pass@K of >= 2 checkpoints, got {curve!r}")
    gain, m = p[-1] - p[0], len(p) - 1
    if gain < -margin:
        return "diminished"
    if abs(gain) <= margin:
        return "plateau"
    if m >= 2 and p[-1] - p[-2] < plateau_frac * gain / m:
        return "plateau"
    return "sustained"


def passk_curve(results: dict, suite: str, k: int | None = None) -> list[float]:
    key = f"pass@{k or largest_k(results, suite)}"
    return [results["results"][c][suite].get(key, np.nan) for c in results["checkpoints"]]


def largest_k(results: dict, suite: str) -> int:
    """Largest k every checkpoint reports for this suite."""
    have = [k for k in results["ks"]
            if all(f"pass@{k}" in results["results"][c][suite] for c in results["checkpoints"])]
    if not have:
        raise ValueError(f"suite {suite!r}: no pass@k common to all checkpoints")
    return max(have)


def boundary_changes(results: dict, suite: str) -> dict[str, int]:
    """Problems the final checkpoint solves at least once that the base never solved
    (c_base = 0 < c_final: the expanded boundary), and the reverse (lost)."""
    base, final = results["checkpoints"][0], results["checkpoints"][-1]
    b, f = results["results"][base][suite]["tasks"], results["results"][final][suite]["tasks"]
    common = b.keys() & f.keys()
    return {"newly_solved": sum(b[t]["c"] == 0 < f[t]["c"] for t in common),
            "lost": sum(f[t]["c"] == 0 < b[t]["c"] for t in common),
            "never_solved": sum(b[t]["c"] == 0 == f[t]["c"] for t in common)}


def classify_suites(results: dict, margin: float = REGIME_MARGIN,
                    plateau_frac: float = PLATEAU_FRAC) -> dict[str, dict]:
    if len(results["checkpoints"]) < 2:
        return {}
    out = {}
    for s in results["suites"]:
        k = largest_k(results, s)
        curve = passk_curve(results, s, k)
        out[s] = {"regime": classify_regime(curve, margin, plateau_frac), "k": k,
                  "curve": curve, "gain": curve[-1] - curve[0], **boundary_changes(results, s)}
    return out


# ---------------------------------------------------------------------------
# Figures: each PNG has its data beside it as JSON
# ---------------------------------------------------------------------------
def _save(fig, payload: dict, out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, name + ".png")
    fig.tight_layout()
    fig.savefig(png, dpi=FIG_DPI)
    plt.close(fig)
    with open(os.path.join(out_dir, name + ".json"), "w") as fh:
        json.dump(payload, fh, indent=1, default=float)
    return png


def _grid(count: int, width: float = 3.6, height: float = 3.0):
    cols = min(count, 4)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def plot_passk_curves(results: dict, out_dir: str) -> str:
    """pass@k vs k (log2 x) per suite, one line per checkpoint."""
    suites, payload = results["suites"], {}
    fig, axes = _grid(len(suites))
    for ax, s in zip(axes, suites):
        payload[s] = {}
        for c in results["checkpoints"]:
            r = results["results"][c][s]
            ks = [k for k in results["ks"] if f"pass@{k}" in r]
            ys = [r[f"pass@{k}"] for k in ks]
            payload[s][c] = dict(zip(map(str, ks), ys))
            ax.plot(ks, ys, marker="o", ms=3, label=c)
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["ks"], [str(k) for k in results["ks"]], fontsize=7)
        regime = (results.get("regimes") or {}).get(s, {}).get("regime")
        ax.set(title=f"{s} ({regime})" if regime else s, xlabel="k", ylabel="pass@k", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, payload, out_dir, "passk_curves")


REGIMES = ("diminished", "plateau", "sustained")
REGIME_RULE = ("G = final - base pass@K, L = final - previous, m = intervals: diminished if "
               "G < -margin; plateau if |G| <= margin or (m >= 2 and L < plateau_frac * G / m); "
               "else sustained")


def plot_regimes(results: dict, out_dir: str) -> str:
    """One panel per regime: pass@K across checkpoints for each suite classified there."""
    regimes = results.get("regimes") or classify_suites(results)
    fig, axes = plt.subplots(1, len(REGIMES), figsize=(4 * len(REGIMES), 3.2), squeeze=False)
    x = np.arange(len(results["checkpoints"]))
    for ax, name in zip(axes[0], REGIMES):
        members = [s for s, r in regimes.items() if r["regime"] == name]
        for s in members:
            ax.plot(x, regimes[s]["curve"], marker="o", ms=3, label=s)
        ax.set_xticks(x, results["checkpoints"], rotation=30, fontsize=7)
        ax.set(title=f"{name} ({len(members)})", ylabel="pass@K (K = largest k)", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        if members:
            ax.legend(fontsize=6)
    return _save(fig, {"rule": REGIME_RULE, **results.get("regime_params", {}),
                       "checkpoints": results["checkpoints"], "suites": regimes}, out_dir, "regimes")


def plot_gain_vs_base(results: dict, out_dir: str) -> str:
    """Base pass@K vs the final checkpoint's gain in pass@K, one point per suite, with a
    least-squares line and Pearson r (the paper finds a negative correlation)."""
    base, final = results["checkpoints"][0], results["checkpoints"][-1]
    pts = {}
    for s in results["suites"]:
        k = largest_k(results, s)
        b = results["results"][base][s][f"pass@{k}"]
        pts[s] = {"k": k, "base": b, "gain": results["results"][final][s][f"pass@{k}"] - b}
    xs = np.array([p["base"] for p in pts.values()])
    ys = np.array([p["gain"] for p in pts.values()])
    fit = None
    if len(xs) >= 2 and np.ptp(xs) > 0:
        slope, intercept = np.polyfit(xs, ys, 1)
        r = float(np.corrcoef(xs, ys)[0, 1]) if np.ptp(ys) > 0 else float("nan")
        fit = {"slope": float(slope), "intercept": float(intercept), "pearson_r": r}
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ax.scatter(xs, ys)
    for s, p in pts.items():
        ax.annotate(s, (p["base"], p["gain"]), fontsize=6)
    if fit:
        line = np.linspace(xs.min(), xs.max(), 2)
        ax.plot(line, fit["slope"] * line + fit["intercept"], "--",
                label=f"fit, r = {fit['pearson_r']:.2f}")
        ax.legend(fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel=f"{base} pass@K", ylabel=f"gain in pass@K ({final} - {base})")
    ax.grid(alpha=0.3)
    return _save(fig, {"base": base, "final": final, "points": pts, "fit": fit}, out_dir,
                 "gain_vs_base")


def plot_pass1_hist(results: dict, out_dir: str) -> str:
    """Distribution of per-problem pass@1 per suite, base vs final."""
    base, final = results["checkpoints"][0], results["checkpoints"][-1]
    bins = np.linspace(0, 1, HIST_BINS + 1)
    fig, axes = _grid(len(results["suites"]))
    payload = {"bins": bins.tolist()}
    for ax, s in zip(axes, results["suites"]):
        payload[s] = {}
        for c in dict.fromkeys([base, final]):  # one histogram when base is final
            vals = [t["pass@1"] for t in results["results"][c][s]["tasks"].values()]
            payload[s][c] = np.histogram(vals, bins)[0].tolist()
            ax.hist(vals, bins, alpha=0.5, label=c)
        ax.set(title=s, xlabel="pass@1 per problem", ylabel="problems")
    axes[0].legend(fontsize=7)
    return _save(fig, payload, out_dir, "pass1_hist")


def graph_color_sizes(results: dict) -> dict[int, str]:
    sizes = {}
    for s in results["suites"]:
        m = GRAPH_COLOR_RE.match(s)
        if m:
            sizes[int(m.group(1))] = s
    return dict(sorted(sizes.items()))


def plot_graph_color(results: dict, out_dir: str) -> str | None:
    """graph_color pass@1 and pass@K vs vertex count (suites graph_color_v<N>)."""
    sizes = graph_color_sizes(results)
    if not sizes:
        log.info("no graph_color_v<N> suites: no graph_color figure")
        return None
    k = min(largest_k(results, s) for s in sizes.values())
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    payload = {"k": k, "vertices": list(sizes)}
    trained = results.get("graph_color_train_vertices")
    payload["train_vertices"] = trained
    for ax in axes if trained else ():
        ax.axvspan(trained[0] - 0.4, trained[1] + 0.4, color="grey", alpha=0.15, label="trained sizes")
    for c in results["checkpoints"]:
        payload[c] = {}
        for ax, key in zip(axes, ("pass@1", f"pass@{k}")):
            ys = [results["results"][c][s][key] for s in sizes.values()]
            payload[c][key] = ys
            ax.plot(list(sizes), ys, marker="o", ms=3, label=c)
            ax.set(xlabel="vertices", ylabel=key, title=f"graph_color {key}", ylim=(-0.02, 1.02))
            ax.grid(alpha=0.3)
    chance = results.get("chance") or {}
    if all(s in chance for s in sizes.values()):
        payload["chance"] = {}
        for ax, key in zip(axes, ("pass@1", f"pass@{k}")):
            ys = [chance[s][key] for s in sizes.values()]
            payload["chance"][key] = ys
            ax.plot(list(sizes), ys, color="black", ls="--", lw=1, label="chance (uniform guess)")
    axes[0].legend(fontsize=7)
    return _save(fig, payload, out_dir, "graph_color")


def plot_boxnet(results: dict, out_dir: str) -> str | None:
    """BoxNet (OOD): pass@1 and pass@K bars per checkpoint, one group per boxnet suite."""
    suites = [s for s in results["suites"] if s.startswith(BOXNET_PREFIX)]
    if not suites:
        log.info("no boxnet suite: no BoxNet figure")
        return None
    k = min(largest_k(results, s) for s in suites)
    keys = ("pass@1", f"pass@{k}")
    ckpts = results["checkpoints"]
    width = 0.8 / len(ckpts)
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(suites) * len(keys), 3.2))
    payload = {"k": k}
    x = np.arange(len(suites) * len(keys))
    for i, c in enumerate(ckpts):
        ys = [results["results"][c][s][key] for s in suites for key in keys]
        payload[c] = {f"{s}/{key}": y for (s, key), y in zip([(s, kk) for s in suites for kk in keys], ys)}
        ax.bar(x + (i - (len(ckpts) - 1) / 2) * width, ys, width, label=c)
    ax.set_xticks(x, [f"{s}\n{key}" for s in suites for key in keys], fontsize=7)
    ax.set(ylabel="rate", title="BoxNet (out of distribution)", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    return _save(fig, payload, out_dir, "boxnet")


# Training dynamics: the first present key of each list is plotted (train.py's names first).
DYNAMICS_PANELS = {
    "reward": ("rollout/reward", "train/reward", "reward"),
    "entropy": ("train/entropy", "rollout/entropy", "entropy"),
    "KL": ("train/kl", "kl/k3", "kl"),
    "response length": ("rollout/response_len", "rollout/response_length", "response_length"),
}


def read_metrics(path: str) -> list[dict]:
    """train.py's metrics.jsonl; a malformed (torn) line is skipped and counted."""
    recs, bad = [], 0
    with open(path) as fh:
        for line in fh:
            if line.strip():
                try:
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        recs.append(rec)
                        continue
                except json.JSONDecodeError:
                    pass
                bad += 1
    if bad:
        log.warning("%s: skipped %d malformed line(s)", path, bad)
    return recs


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _first_key(recs: list[dict], candidates: tuple[str, ...]) -> str | None:
    for key in candidates:
        if any(_is_num(r.get(key)) for r in recs):
            return key
    return None


def reset_steps(recs: list[dict]) -> list[dict]:
    """Steps where a reference reset is logged ("reset/reason" set or "reset/happened" == 1)."""
    out = []
    for i, r in enumerate(recs):
        if r.get("reset/reason") not in (None, "") or r.get("reset/happened") == 1:
            out.append({"step": r.get("step", i), "reason": r.get("reset/reason")})
    return out


def plot_training_dynamics(metrics_path: str, out_dir: str) -> str:
    """Reward, entropy, KL, response length and validation metrics ("val/*") vs step, with
    dashed lines at reference resets. Missing keys leave an empty, labelled panel."""
    recs = read_metrics(metrics_path)
    steps = [r.get("step", i) for i, r in enumerate(recs)]
    resets = reset_steps(recs)
    val_keys = sorted({k for r in recs for k, v in r.items() if k.startswith("val/") and _is_num(v)})
    panels = list(DYNAMICS_PANELS) + ["validation"]
    fig, axes = _grid(len(panels), width=4.0)
    payload = {"source": metrics_path, "resets": resets, "series": {}}
    for ax, name in zip(axes, panels):
        keys = val_keys if name == "validation" else [_first_key(recs, DYNAMICS_PANELS[name])]
        keys = [k for k in keys if k]
        for key in keys:
            pts = [(s, r[key]) for s, r in zip(steps, recs) if _is_num(r.get(key))]
            payload["series"][key] = pts
            ax.plot(*zip(*pts), lw=1, label=key)
        for rs in resets:
            ax.axvline(rs["step"], color="red", ls="--", lw=0.8)
        if keys:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
    return _save(fig, payload, out_dir, "training_dynamics")


COMPARISON_PANELS = {"entropy": "train/entropy", "reward (T=1.2)": "rollout/reward", "KL to reference": "train/kl",
                     "validation pass@1 (blend)": "val/blend"}


COMPARISON_SMOOTH = 10  # per-step curves are drawn as a trailing mean over this many steps


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each point (fewer at the start)."""
    c = np.cumsum([0.0, *values])
    return [(c[i + 1] - c[max(0, i + 1 - window)]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(values))]


def plot_run_comparison(runs: dict[str, str], out_dir: str) -> str:
    """Several training runs (label -> metrics.jsonl) overlaid per metric: the ablation figure. Per-step
    metrics are smoothed (trailing mean of COMPARISON_SMOOTH steps); the JSON beside it keeps the raw values."""
    fig, axes = _grid(len(COMPARISON_PANELS), width=4.0)
    payload = {"runs": runs, "series": {}}
    for ax, (title, key) in zip(axes, COMPARISON_PANELS.items()):
        for label, path in runs.items():
            recs = read_metrics(path)
            pts = [(r.get("step", i), r[key]) for i, r in enumerate(recs) if _is_num(r.get(key))]
            payload["series"][f"{label}:{key}"] = pts
            if pts and key.startswith("val/"):
                ax.plot(*zip(*pts), lw=1, marker="o", ms=3, label=label)
            elif pts:
                ax.plot([p[0] for p in pts], trailing_mean([p[1] for p in pts], COMPARISON_SMOOTH), lw=1, label=label)
        smooth = "" if key.startswith("val/") else f" ({COMPARISON_SMOOTH}-step mean)"
        ax.set(title=title + smooth, xlabel="step")
        if ax.get_legend_handles_labels()[0]:  # a metric no run logged leaves an empty panel
            ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    return _save(fig, payload, out_dir, "run_comparison")


def make_figures(results: dict, out_dir: str, metrics_path: str | None = None) -> list[str]:
    """Every figure the results support; returns the PNG paths written."""
    pngs = [plot_passk_curves(results, out_dir), plot_pass1_hist(results, out_dir),
            plot_graph_color(results, out_dir), plot_boxnet(results, out_dir)]
    if len(results["checkpoints"]) >= 2:
        pngs += [plot_regimes(results, out_dir), plot_gain_vs_base(results, out_dir)]
    else:
        log.info("one checkpoint: no regime or gain figure (they compare checkpoints)")
    if metrics_path:
        pngs.append(plot_training_dynamics(metrics_path, out_dir))
    else:
        log.info("no metrics.jsonl: no training-dynamics figure (pass --metrics)")
    return [p for p in pngs if p]


# ---------------------------------------------------------------------------
# Summary table
# ---------------------------------------------------------------------------
def _pct_se(r: dict, key: str) -> str:
    se = r.get(key + "_se")  # absent in results.json files written before it was added
    return f"{100 * r[key]:.1f}" + ("" if se is None else f" ± {100 * se:.1f}")


def summary_table(results: dict) -> str:
    """Markdown: per suite, pass@1 and pass@K (%) of each checkpoint, and the regime."""
    ckpts, regimes = results["checkpoints"], results.get("regimes") or {}
    chance = results.get("chance") or {}
    head = ["suite", "problems", "K"] + [f"{c} {m}" for c in ckpts for m in ("pass@1", "pass@K")]
    if chance:
        head += ["chance pass@1", "chance pass@K"]
    if regimes:
        head += ["newly solved", "lost", "regime"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in results["suites"]:
        k = largest_k(results, s)
        row = [s, str(results["results"][ckpts[0]][s]["n_tasks"]), str(k)]
        for c in ckpts:
            r = results["results"][c][s]
            row += [_pct_se(r, "pass@1"), _pct_se(r, f"pass@{k}")]
        if chance:
            row += [f"{100 * chance[s]['pass@1']:.1f}", f"{100 * chance[s][f'pass@{k}']:.1f}"] if s in chance else ["-", "-"]
        if regimes:
            r = regimes.get(s, {})
            row += [str(r.get("newly_solved", "")), str(r.get("lost", "")), r.get("regime", "")]
        lines.append("| " + " | ".join(row) + " |")
    samp = results.get("sampling", {})
    lines.append("")
    lines.append(f"pass@k in % ± its standard error over the suite's problems, n = {results.get('n')} samples per problem, T = "
                 f"{samp.get('temperature')}, top-p = {samp.get('top_p')}, max tokens = "
                 f"{samp.get('max_tokens')}; correct = score >= {results.get('correct_threshold')}.")
    if chance:
        lines.append("chance: a uniform random answer per sample (graph_color: a random colour per vertex), "
                     "pass@k = 1 - (1 - q)^k with q = proper colourings / colours^vertices, counted exactly.")
    if regimes:
        lines.append(f"newly solved / lost: problems {ckpts[-1]} solves at least once and {ckpts[0]} never "
                     "does, and the reverse. Regime rule: " + REGIME_RULE + ".")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    results_path = os.path.join(cfg.out, "results.json")
    if cfg.plots_only:
        if not os.path.isfile(results_path):
            raise FileNotFoundError(f"--plots-only: {results_path} not found; run without it first")
        with open(results_path) as fh:
            results = json.load(fh)
        add_standard_errors(results)
        results["regime_params"] = {"margin": cfg.regime_margin, "plateau_frac": cfg.plateau_frac}
        results["regimes"] = classify_suites(results, cfg.regime_margin, cfg.plateau_frac)
    else:
        results = evaluate(cfg)
        os.makedirs(cfg.out, exist_ok=True)
        with open(results_path, "w") as fh:
            json.dump(results, fh, indent=1)
        log.info("wrote %s", results_path)
    metrics_path = cfg.metrics or default_metrics_path()
    for png in make_figures(results, cfg.out, metrics_path):
        log.info("wrote %s", png)
    if cfg.runs:
        log.info("wrote %s", plot_run_comparison(dict(r.split("=", 1) for r in cfg.runs), cfg.out))
    table = summary_table(results)
    with open(os.path.join(cfg.out, "summary.md"), "w") as fh:
        fh.write(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
