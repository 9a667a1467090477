"""Rollout throughput: rollout.Rollout.generate vs raw vLLM LLM.generate vs transformers generate,
and the cost of a weight push relative to a training step.

Setup (issue 5): a ~15M-parameter random Qwen2 (hidden 512, 6 layers, 8 heads of 64, 2 KV heads,
local BPE tokenizer; tests/tiny.py), 8 chat prompts x n=16 samples, up to 256 new tokens, T=1.2,
fp32, every process on the machine's cores (2 here). Random weights end a sample at EOS with
p ~ 1/vocab per step, so some samples stop early; throughput counts the response tokens produced.

Measured, in alternating order on ONE engine (so machine-load drift hits both alike), R rounds:
  A  Rollout.generate(prompts, n=16, ...)                  -> the list of sample dicts
  B  LLM.generate(same token ids, same SamplingParams)     -> wrapper overhead = B/A tok/s
  C  LLM.generate(prompt strings, SamplingParams(n, T, max_tokens, logprobs=0)), a plain user call
     (detokenises, nested log-prob dicts)
then update_weights (the full fp32 state dict) x U, then, with the engine closed, transformers
`model.generate` on the same batch (128 rows, left-padded) and one training step estimate:

  step = 8 micro-batches x (old-logp forward + ref-logp forward + forward/backward) + AdamW step,
         timed on ONE micro-batch of 16 sequences of (prompt + 256) tokens and scaled by 8,

which is GRPO's per-step trainer work for this batch (ProRL recomputes pi_old and pi_ref).
update share = push / (rollout + step).

Run: .venv/bin/python bench/bench_rollout.py [--rounds 3] [--hf-rounds 1]
(~10 min on 2 idle cores; transformers generate is most of it: --hf-rounds 0 skips it)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import tiny  # noqa: E402
import torch  # noqa: E402

import rollout  # noqa: E402

MODEL = dict(hidden=512, layers=6, heads=8, kv_heads=2, head_dim=64, intermediate=1152, vocab_size=512,
             init_std=0.02, eos_prob=0.0, seed=0)
N_PROMPTS, N, MAX_TOKENS, TEMPERATURE = 8, 16, 256, 1.2
MICRO_BATCH = 16
QUESTIONS = ["What is 17 + 25?", "Color the graph with 3 colors: edges (0, 1) (1, 2) (2, 0).",
             "Find the sum of the first 10 odd numbers.", "Move the box to the target square.",
             "Compute 12 * 13 and put the answer inside \\boxed{}.", "Solve for x: 3x + 4 = 19.",
             "Is 97 a prime number? Reason step by step.", "What is the product of 6 and 7?"]


def model_dir(out: Path) -> Path:
    d = out / "model15m"
    spec = json.dumps({**MODEL, "tiny.py": hashlib.sha1(Path(tiny.__file__).read_bytes()).hexdigest()}, sort_keys=True)
    if not (d / "spec.json").exists() or (d / "spec.json").read_text() != spec:
        tiny.build_tiny_model(d, **MODEL)
        (d / "spec.json").write_text(spec)
    return d


def tok_per_s(n_tokens: int, seconds: float) -> float:
    return n_tokens / seconds


def tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and its live descendants (the
    engine's processes). This machine is shared: wall-clock rates swing with other people's load,
    CPU time per token much less."""
    import psutil
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def med(xs):
    return statistics.median(xs) if xs else float("nan")   # nan: not measured (--hf-rounds 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hf-rounds", type=int, default=1)
    ap.add_argument("--pushes", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "out" / "bench_rollout"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    path = model_dir(out)
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"model: {n_params / 1e6:.1f}M params, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")

    engine = rollout.Rollout(path, dtype="float32", max_model_len=1024, kv_cache_gb=1.0, seed=0)
    tok = engine.tokenizer
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in QUESTIONS[:N_PROMPTS]]
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    from vllm import SamplingParams
    same = SamplingParams(n=N, temperature=TEMPERATURE, top_p=1.0, top_k=0, max_tokens=MAX_TOKENS,
                          logprobs=0, flat_logprobs=True, detokenize=False)
    plain = SamplingParams(n=N, temperature=TEMPERATURE, max_tokens=MAX_TOKENS, logprobs=0)

    # The wrapper's own time (tokenising, building the dicts, decoding) = Rollout.generate's wall time
    # minus the time spent inside LLM.generate: a load-independent measure of the overhead.
    inner = []
    llm_generate = engine.llm.generate

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return llm_generate(*a, **k)
        finally:
            inner.append(time.perf_counter() - t)

    engine.llm.generate = timed_generate
    own = []

    def run_wrapper():
        t = time.perf_counter()
        s = engine.generate(prompts, n=N, temperature=TEMPERATURE, max_tokens=MAX_TOKENS)
        own.append(time.perf_counter() - t - inner[-1])
        return sum(len(x["response_ids"]) for x in s)

    def run_raw(inputs, params):
        outs = llm_generate(inputs, params, use_tqdm=False)
        return sum(len(o.token_ids) for r in outs for o in r.outputs)

    runs = {"A_rollout": run_wrapper,
            "B_raw_same_params": lambda: run_raw([{"prompt_token_ids": x} for x in ids], same),
            "C_raw_plain": lambda: run_raw(prompts, plain)}
    run_wrapper()    # warm-up at full size: the first big batch also pays first-touch of the KV cache pages
    rates = {k: [] for k in runs}
    cpu_rates = {k: [] for k in runs}
    seconds = {k: [] for k in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))       # ABC, CBA, ...
        for k in order:
            t, c = time.perf_counter(), tree_cpu_s()
            n_tok = runs[k]()
            dt, dc = time.perf_counter() - t, tree_cpu_s() - c
            rates[k].append(tok_per_s(n_tok, dt))
            cpu_rates[k].append(tok_per_s(n_tok, dc))
            seconds[k].append(dt)
            print(f"  round {r} {k:18s} {n_tok:6d} tokens {dt:6.2f} s {rates[k][-1]:7.0f} tok/s "
                  f"{cpu_rates[k][-1]:7.0f} tok/cpu-s  (load {os.getloadavg()[0]:.1f})", flush=True)

    sd = hf.state_dict()
    pushes = [engine.update_weights(sd) for _ in range(args.pushes)]
    engine.close()

    # transformers generate on the same batch (engine closed: its idle processes take no CPU)
    pad = tok.pad_token_id
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids]).repeat_interleave(N, 0)
    attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids]).repeat_interleave(N, 0)
    from transformers import GenerationConfig
    cfg = GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_p=1.0, top_k=0, max_new_tokens=MAX_TOKENS,
                           eos_token_id=tok.eos_token_id, pad_token_id=pad)
    hf_rates, hf_seconds = [], []
    hf_cpu_rates = []
    for r in range(args.hf_rounds):
        t, c = time.perf_counter(), tree_cpu_s()
        with torch.no_grad():
            seq = hf.generate(input_ids=input_ids, attention_mask=attn, generation_config=cfg)[:, width:]
        dt, dc = time.perf_counter() - t, tree_cpu_s() - c
        ended = (seq == tok.eos_token_id).int()
        # tokens up to and including the first EOS (the rest is padding)
        n_tok = int(torch.where(ended.any(1), ended.argmax(1) + 1, torch.full_like(ended[:, 0], seq.shape[1])).sum())
        hf_rates.append(tok_per_s(n_tok, dt))
        hf_cpu_rates.append(tok_per_s(n_tok, dc))
        hf_seconds.append(dt)
        print(f"  round {r} {'D_hf_generate':18s} {n_tok:6d} tokens {dt:6.2f} s {hf_rates[-1]:7.0f} tok/s "
              f"{hf_cpu_rates[-1]:7.0f} tok/cpu-s  (load {os.getloadavg()[0]:.1f})", flush=True)

    # one training step, estimated from one micro-batch (see docstring)
    mb = torch.randint(0, len(tok), (MICRO_BATCH, width + MAX_TOKENS))
    with torch.no_grad():
        t = time.perf_counter()
        hf(input_ids=mb)
        t_fwd = time.perf_counter() - t
    hf.train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-6)
    t = time.perf_counter()
    logits = hf(input_ids=mb).logits
    logits.float().log_softmax(-1).mean().backward()
    t_fb = time.perf_counter() - t
    t = time.perf_counter()
    opt.step()
    t_opt = time.perf_counter() - t
    micro = N_PROMPTS * N // MICRO_BATCH
    t_train = micro * (2 * t_fwd + t_fb) + t_opt

    a, b, c = med(rates["A_rollout"]), med(rates["B_raw_same_params"]), med(rates["C_raw_plain"])
    ca, cb, cc = (med(cpu_rates[k]) for k in runs)
    t_roll = med(seconds["A_rollout"])
    push = med(pushes)
    res = {"params_M": round(n_params / 1e6, 2), "cores": os.cpu_count(), "rounds": args.rounds,
           "tok_s": {"rollout": a, "raw_same_params": b, "raw_plain": c, "hf_generate": med(hf_rates)},
           "tok_per_cpu_s": {"rollout": ca, "raw_same_params": cb, "raw_plain": cc, "hf_generate": med(hf_cpu_rates)},
           "cpu_overhead_vs_raw_same_params_pct": 100 * (cb / ca - 1), "cpu_rollout_over_hf": ca / med(hf_cpu_rates),
           "wrapper_own_s": med(own[1:]), "wrapper_own_pct_of_generate": 100 * med(own[1:]) / t_roll,
           "overhead_vs_raw_same_params_pct": 100 * (b / a - 1), "overhead_vs_raw_plain_pct": 100 * (c / a - 1),
           "rollout_over_hf": a / med(hf_rates), "update_weights_s": push, "rollout_s": t_roll,
           "train_step_est_s": t_train, "update_share_of_step_pct": 100 * push / (t_roll + t_train),
           "load_avg_end": os.getloadavg()[0]}
    print(json.dumps(res, indent=1))
    print(f"\nmedians over {args.rounds} alternating rounds (2 cores, fp32, {n_params / 1e6:.1f}M params):")
    print(f"  Rollout.generate          {a:7.0f} tok/s")
    print(f"  raw LLM.generate (same)   {b:7.0f} tok/s  -> wrapper overhead {res['overhead_vs_raw_same_params_pct']:+.1f}%")
    print(f"  wrapper's own time        {res['wrapper_own_s'] * 1e3:.0f} ms per call = "
          f"{res['wrapper_own_pct_of_generate']:.2f}% of Rollout.generate (outside LLM.generate; load-independent)")
    print(f"  raw LLM.generate (plain)  {c:7.0f} tok/s  -> vs plain call     {res['overhead_vs_raw_plain_pct']:+.1f}%")
    print(f"  transformers generate     {med(hf_rates):7.0f} tok/s  -> Rollout / HF = {res['rollout_over_hf']:.2f}x")
    print(f"  per CPU-second: Rollout {ca:.0f}, raw same {cb:.0f} ({res['cpu_overhead_vs_raw_same_params_pct']:+.1f}%), "
          f"raw plain {cc:.0f}, HF {med(hf_cpu_rates):.0f} tok/cpu-s (Rollout / HF = {res['cpu_rollout_over_hf']:.2f}x)")
    print(f"  update_weights            {push:.3f} s = {res['update_share_of_step_pct']:.2f}% of a step "
          f"(rollout {t_roll:.1f} s + train est. {t_train:.1f} s)")
    (out / "results.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":  # vLLM spawns processes
    main()
