"""How many vertices each graph_color answer lists, from evaluate.py's sample cache.

    python docs/results/followups/count_answer_vertices.py out/eval/cache/<checkpoint> [...]

For every graph_color_v<N>.jsonl in each directory: the share of samples whose <answer> map has exactly N
keys, and the key counts that hold at least 5% of the samples (-1 = no <answer> tags).
"""
import collections
import json
import re
import sys
from pathlib import Path

for d in map(Path, sys.argv[1:]):
    for f in sorted(d.glob("graph_color_v*.jsonl"), key=lambda p: int(p.stem.split("_v")[1])):
        v = int(f.stem.split("_v")[1])
        hist = collections.Counter()
        for line in f.open():
            for text in json.loads(line)["texts"]:
                answer = re.search(r"<answer>(.*?)</answer>", text or "")
                hist[answer.group(1).count(":") if answer else -1] += 1
        n = sum(hist.values())
        top = ",".join(f"{k}:{c * 100 // n}" for k, c in sorted(hist.items()) if c * 100 >= 5 * n)
        print(d.name[:14], f"v{v}", f"right count {hist[v] / n:.2f}", "hist%", top)
