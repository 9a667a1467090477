"""Re-score evaluate.py's cached graph_color samples with exact_vertices (the answer must colour exactly the
graph's vertices; data.py) and print both scorings side by side: the same samples, no new generation.
Run from the repository root:

    python docs/results/followups/rescore_exact_vertices.py <eval out>/cache/<checkpoint> [...]
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, ".")
import numpy as np  # noqa: E402

import embedded  # noqa: E402
import evaluate  # noqa: E402
import rewards  # noqa: E402

tasks = {t["id"]: t for ts in embedded.mini_eval_suites().values() for t in ts}
for d in map(Path, sys.argv[1:]):
    for f in sorted(d.glob("graph_color_v*.jsonl"), key=lambda p: int(p.stem.split("_v")[1])):
        rows = [json.loads(line) for line in f.open()]
        n = len(rows[0]["scores"])
        lenient = [evaluate.count_correct(r["scores"]) for r in rows]  # the scores evaluate.py cached
        strict = []
        for r in rows:
            task = {**tasks[r["id"]], "exact_vertices": True}
            strict.append(evaluate.count_correct([rewards.score_details(t, task)[0] for t in r["texts"]]))
        out = [f"pass@1 {100 * np.mean(c) / n:.1f} pass@{n} "
               f"{100 * evaluate.pass_at_k_per_problem([n] * len(rows), np.array(c), n).mean():.1f}"
               for c in (lenient, strict)]
        chance = evaluate.chance_metrics([tasks[r["id"]] for r in rows], [1, n])
        print(f"{d.name[:14]} {f.stem}: RG's rule {out[0]} | exact vertices {out[1]} | "
              f"chance pass@1 {100 * chance['pass@1']:.1f} pass@{n} {100 * chance[f'pass@{n}']:.1f}")
