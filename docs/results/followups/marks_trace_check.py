"""Where E8's "marks" traces go wrong, from evaluate.py's sample cache (run from the repository root).

    python docs/results/followups/marks_trace_check.py <eval out>/cache/<checkpoint> [...]

For each graph_color_v<N>.jsonl: the share of samples whose trace has N lines; whose lines stop parsing as
"v=c w/c ..." in vertex order (bad line); per vertex line before that, the share whose marks are exactly the
prompt's edges (v, w) with v's colour, and whose colour is the smallest not forbidden by the marks the
sample itself wrote above it; and the share of samples whose <answer> map equals the trace's colours.
"""
import collections
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, ".")
import embedded  # noqa: E402


def analyse(cache_dir: Path, tasks: dict) -> None:
    for f in sorted(cache_dir.glob("graph_color_v*.jsonl"), key=lambda p: int(p.stem.split("_v")[1])):
        v = int(f.stem.split("_v")[1])
        c = collections.Counter()
        for line in f.open():
            row = json.loads(line)
            edges = [tuple(e) for e in tasks[row["id"]]["rg_entry"]["metadata"]["puzzle"]["edges"]]
            for text in row["texts"]:
                c["samples"] += 1
                m = re.search(r"<think>\n(.*?)\n</think>", text or "", re.S)
                if not m:
                    c["no_think"] += 1
                    continue
                lines = m.group(1).split("\n")
                c["right_line_count"] += len(lines) == v
                forbidden = collections.defaultdict(set)
                for i, ln in enumerate(lines):
                    mm = re.fullmatch(r"(\d+)=(\d)((?: \d+/\d)*)", ln)
                    if not mm or int(mm.group(1)) != i:
                        c["bad_line"] += 1
                        break
                    colour = int(mm.group(2))
                    marks = [tuple(map(int, x.split("/"))) for x in mm.group(3).split()]
                    if i < v:
                        c["steps"] += 1
                        c["ok_colour"] += colour == min(k for k in range(1, 5) if k not in forbidden[i])
                        c["ok_marks"] += marks == [(w, colour) for u, w in edges if u == i]
                    for w, k in marks:
                        forbidden[w].add(k)
                a = re.search(r"<answer>(.*?)</answer>", text or "")
                try:
                    answer = json.loads(a.group(1)) if a else None
                except ValueError:
                    answer = None
                trace = {mm.group(1): int(mm.group(2)) for mm in (re.match(r"(\d+)=(\d)", ln) for ln in lines) if mm}
                c["answer_is_trace"] += answer == trace
        n, s = c["samples"], max(c["steps"], 1)
        print(f"v{v}: {n} samples; {c['no_think'] / n:.2f} without a <think> block; "
              f"{c['right_line_count'] / n:.2f} with {v} lines, {c['bad_line'] / n:.2f} with a bad line; "
              f"per vertex line: marks right {c['ok_marks'] / s:.2f}, colour right given the marks above "
              f"{c['ok_colour'] / s:.2f}; answer = trace {c['answer_is_trace'] / n:.2f}")


if __name__ == "__main__":
    tasks = {t["id"]: t for ts in embedded.mini_eval_suites().values() for t in ts}
    for d in map(Path, sys.argv[1:]):
        print(d)
        analyse(d, tasks)
