"""Benchmark rewards.py: rewards/s of score_batch on a mixed batch, and sandbox overhead.

Measures, in one run on this machine:
  1. rewards/s for N mixed completions (math, stem, logic, ifeval, code; half right,
     half wrong) through score_batch with WORKERS processes, plus each domain alone;
  2. the cost of one sandboxed program run (bwrap + rlimits + uid, `print(1)`) as a
     ratio to a bare `python3 -c "print(1)"` subprocess measured in the same run.

Run: `.venv/bin/python bench/bench_rewards.py [--n 4096] [--workers 2]`
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rewards  # noqa: E402

SANDBOX_REPEATS = 40
PER_DOMAIN_N = 256


def mixed_items(n: int) -> tuple[list[str], list[dict]]:
    """n (completion, task) pairs cycling over the five domains, alternately right and wrong."""
    import reasoning_gym

    entries = [json.loads(json.dumps(e)) for e in reasoning_gym.create_dataset("basic_arithmetic", seed=0, size=64)]
    program = "a, b = map(int, input().split())\nprint(a + b)"
    completions, tasks = [], []
    for i in range(n):
        right = i % 2 == 0
        domain = rewards.DOMAINS[(i // 2) % len(rewards.DOMAINS)]
        think = "<think>" + "Let me think step by step. " * 40 + "</think>\n"
        if domain == "math":
            task = {"id": f"m{i}", "domain": "math", "answer": "\\frac{3}{4}"}
            text = "\\boxed{0.75}" if right else "\\boxed{\\frac{4}{3}}"
        elif domain == "stem":
            task = {"id": f"s{i}", "domain": "stem", "answer": "C", "choices": ["1", "2", "3", "4"]}
            text = "The answer is (C)." if right else "Answer: **B**"
        elif domain == "logic":
            entry = entries[i % len(entries)]
            task = {"id": f"l{i}", "domain": "logic", "rg_task": "basic_arithmetic", "rg_entry": entry}
            text = f"<answer>{entry['answer'] if right else 'no idea'}</answer>"
        elif domain == "ifeval":
            task = {"id": f"i{i}", "domain": "ifeval",
                    "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_sentences",
                                            "change_case:english_lowercase"],
                    "kwargs": [{}, {"num_sentences": 3, "relation": "at least"}, {}]}
            text = ("this is fine. it has sentences. three of them." if right
                    else "This, however, is Not fine.")
        else:
            task = {"id": f"c{i}", "domain": "code",
                    "tests": [{"input": f"{i} 1\n", "output": f"{i + 1}\n"}, {"input": "2 2\n", "output": "4\n"}]}
            text = f"```python\n{program if right else 'print(0)'}\n```"
        completions.append(think + text)
        tasks.append(task)
    return completions, tasks


def rate(completions: list[str], tasks: list[dict], workers: int) -> tuple[float, float]:
    started = time.perf_counter()
    scores = rewards.score_batch(completions, tasks, workers=workers)
    elapsed = time.perf_counter() - started
    return len(tasks) / elapsed, sum(scores) / len(scores)


def sandbox_overhead() -> tuple[float, float]:
    """Median seconds of a sandboxed `print(1)` and of a bare python3 subprocess."""
    sandboxed, bare = [], []
    for _ in range(SANDBOX_REPEATS):
        started = time.perf_counter()
        assert rewards.run_program("print(1)", "stdio")["status"] == "ok"
        sandboxed.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run([rewards.SANDBOX_PYTHON, "-c", "print(1)"], check=True, capture_output=True)
        bare.append(time.perf_counter() - started)
    return statistics.median(sandboxed), statistics.median(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="mixed completions to score")
    parser.add_argument("--workers", type=int, default=2, help="score_batch worker processes")
    args = parser.parse_args()

    completions, tasks = mixed_items(args.n)
    rewards.score_batch(completions[:10], tasks[:10], workers=args.workers)  # start + warm the workers
    rows = [("mixed (5 domains)", len(tasks), *rate(completions, tasks, args.workers))]
    for domain in rewards.DOMAINS:
        pairs = [(c, t) for c, t in zip(completions, tasks) if t["domain"] == domain][:PER_DOMAIN_N]
        rows.append((domain, len(pairs), *rate([c for c, _ in pairs], [t for _, t in pairs], args.workers)))
    rewards.close_pool()

    print(f"score_batch, {args.workers} workers, {os.cpu_count()} cores")
    print(f"{'batch':20s} {'items':>6s} {'rewards/s':>10s} {'mean reward':>12s}")
    for name, count, per_s, mean in rows:
        print(f"{name:20s} {count:6d} {per_s:10.1f} {mean:12.3f}")
    sandboxed, bare = sandbox_overhead()
    print(f"\nsandbox run of print(1): {sandboxed * 1e3:.1f} ms median; bare python3 -c: {bare * 1e3:.1f} ms; "
          f"ratio {sandboxed / bare:.2f}x (overhead {1e3 * (sandboxed - bare):.1f} ms per program)")


if __name__ == "__main__":
    main()
