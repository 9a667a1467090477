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
        out = []
        for strict in (False, True):
            correct = np.array([
                sum((rewards.score_details(t, {**tasks[r["id"]], "exact_vertices": True})[0] if strict else s) >= 1.0
                    for t, s in zip(r["texts"], r["scores"]))
                for r in rows])
            out.append(f"pass@1 {100 * np.mean(correct / n):.1f} pass@{n} "
                       f"{100 * evaluate.pass_at_k_per_problem([n] * len(rows), correct, n).mean():.1f}")
        chance = evaluate.chance_metrics([tasks[r["id"]] for r in rows], [1, n])
        print(f"{d.name[:14]} {f.stem}: RG's rule {out[0]} | exact vertices {out[1]} | "
              f"chance pass@1 {100 * chance['pass@1']:.1f} pass@{n} {100 * chance[f'pass@{n}']:.1f}")
