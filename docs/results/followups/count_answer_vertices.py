import json, sys, re, glob, os, collections
for d in sys.argv[1:]:
    for v in range(5, 11):
        f = f"{d}/graph_color_v{v}.jsonl"
        if not os.path.exists(f): continue
        n = right = 0; hist = collections.Counter()
        for line in open(f):
            r = json.loads(line)
            for t in r["texts"]:
                a = re.search(r"<answer>(.*?)</answer>", t or "")
                k = a.group(1).count(":") if a else -1
                hist[k] += 1; n += 1; right += k == v
        top = ",".join(f"{k}:{c*100//n}" for k, c in sorted(hist.items()) if c * 100 >= 5 * n)
        print(os.path.basename(d)[:14], f"v{v}", f"right count {right/n:.2f}", "hist%", top)
