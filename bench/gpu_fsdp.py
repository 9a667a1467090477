"""FSDP2 update throughput and MFU of a GRPO step for a DeepSeek-R1-Distill-Qwen-1.5B-shaped model on one GPU.

What it measures (the trainer side of ProRL's step, phase 7 of train.py, at the paper's model size):
    update      forward + backward + AdamW of a GRPO-shaped loss over micro-batches of B x S tokens:
                    logp = log softmax(z / T)[y]            grpo.token_logprobs (chunked, fp32 softmax)
                    old_logp = logp.detach() + noise, A ~ N(0, 1) per sequence (random advantages)
                    L = grpo.policy_loss(logp, old_logp, A, mask, eps 0.2 / 0.4, dual clip 3, token-mean)
                tokens/s = B * S * accum / step time; peak CUDA memory.
    logprob     the no-grad forward that recomputes old / reference log-probs (phase 6), tokens/s.
    generation  `transformers generate` (NOT vLLM: a stock CUDA PyTorch environment has none), batch x new tokens
                with the length forced (min_new_tokens = max_new_tokens); labelled "transformers generate".

MFU (model FLOPs utilisation) against the card's dense bf16 peak (no sparsity):
    FLOPs per token = 6 * N + 12 * n_layers * d_model * S            (PaLM, App. B; Chowdhery et al. 2022)
  N = parameters that take part in matmuls = all parameters minus the input embedding (a lookup); the untied
  lm_head is counted. 12 * n_layers * d_model * S is the attention score and value matmuls (QK^T and AV,
  forward + backward), counted over the full S x S matrix as PaLM does (no halving for the causal mask).
  Activation checkpointing recomputes the forward: the hardware does 8 * N + 16 * n_layers * d_model * S
  per token, reported as HFU. The loss (log-softmax over 152k entries) and the optimizer are not counted.
  Peaks (TFLOP/s, dense bf16): H100 SXM 989, H100 NVL 835, H100 PCIe 756, H200 989, A100 312; override with
  --peak-tflops.

Set-up: the model is Qwen2ForCausalLM with R1-Distill-Qwen-1.5B's configuration (written below, random weights,
no download), fp32 master weights, FSDP2 `fully_shard` per decoder layer and at the root (as train.py's
load_model) with MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32), HF activation checkpointing
(non-reentrant), SDPA attention with no padding mask, torch AdamW. The process group is a REAL one: nccl
(gloo on CPU) with world size 1 on an in-process HashStore when started plainly, or env:// under torchrun
(then tokens/s is summed over ranks and MFU is per GPU). If a micro-batch runs out of memory the update is
retried with half the sequences (the JSON records each attempt).

Run:
    python bench/gpu_fsdp.py                                   # one H100/H200: 8 x 4096 tokens per micro-batch
    python bench/gpu_fsdp.py --micro-batch 4 --accum 2         # same tokens per step, half the activations
    python bench/gpu_fsdp.py --profile                         # + GPU time by kernel class over one more step
    python bench/gpu_fsdp.py --tiny                            # CPU smoke run: small config, few steps
    bash bench/gpu_suite.sh                                    # the four settings in bench/README.md's table
    torchrun --nproc_per_node 8 bench/gpu_fsdp.py              # one node
Output: one JSON object on stdout, also written to --out (default out/bench/gpu_fsdp.json).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: grpo.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py

import common  # noqa: E402

import grpo  # noqa: E402

# DeepSeek-R1-Distill-Qwen-1.5B's config.json (Qwen2ForCausalLM), as published on its model card.
R1_DISTILL_QWEN_1_5B = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=131072, rope_theta=10000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=False, use_sliding_window=False, hidden_act="silu", attention_dropout=0.0,
)
# --tiny: the same architecture, small enough for 2 CPU cores in seconds.
TINY = dict(R1_DISTILL_QWEN_1_5B, vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, without 2:4 sparsity). First match wins.
DENSE_BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                          ("GH200", 989.0), ("A100", 312.0))

# GRPO loss settings (ProRL §3: T = 1.2, clip 0.2 / 0.4; dual clip 3 as train.py's default)
TEMPERATURE, EPS_LOW, EPS_HIGH, CLIP_RATIO_C = 1.2, 0.2, 0.4, 3.0
OLD_LOGP_NOISE = 0.1  # std of the noise added to old log-probs so ratios differ from 1 and clipping is exercised
PROMPT_FRACTION = 0.125  # the first 1/8 of each sequence is "prompt": masked out of the loss, as in a real batch
LR, WEIGHT_DECAY, GRAD_CLIP = 2e-6, 0.01, 1.0  # ProRL App. E (lr 2e-6), verl's weight decay, clip 1.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small config, short sequences, few steps (CPU test)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per forward/backward (default 8; tiny 2)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 4096; tiny 64)")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--warmup", type=int, default=None, help="untimed optimizer steps first (default 2; tiny 1)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 5; tiny 2)")
    p.add_argument("--logprob-steps", type=int, default=None, help="timed no-grad log-prob forwards (default 3; tiny 1)")
    p.add_argument("--gen-batch", type=int, default=None, help="transformers generate: prompts (default 64; tiny 2)")
    p.add_argument("--gen-tokens", type=int, default=None, help="new tokens per prompt, forced; 0 skips (default 256; tiny 8)")
    p.add_argument("--gen-prompt-tokens", type=int, default=None, help="prompt length for generate (default 256; tiny 8)")
    p.add_argument("--no-grad-ckpt", action="store_true", help="turn activation checkpointing off")
    p.add_argument("--fused-adamw", action="store_true", help="torch AdamW(fused=True) instead of the default (foreach)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one more update step: device time by kernel class and top kernels")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this device (else from its name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/gpu_fsdp.json", help="JSON result file")
    a = p.parse_args(argv)
    defaults = dict(micro_batch=(2, 8), seq_len=(64, 4096), warmup=(1, 2), steps=(2, 5), logprob_steps=(1, 3),
                    gen_batch=(2, 64), gen_tokens=(8, 256), gen_prompt_tokens=(8, 256))
    for k, (tiny, full) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, tiny if a.tiny else full)
    for k in ("micro_batch", "seq_len", "accum", "steps"):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    return a


# ----------------------------------------------------------------------------------------------------
def setup_distributed():
    """A real process group: env:// under torchrun, else world size 1 on an in-process store."""
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        how = f"{backend}, env:// (torchrun), world {world}"
    else:
        rank, world = 0, 1
        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        how = f"{backend}, world 1 on an in-process HashStore"
    return rank, world, device, how


def peak_tflops(device, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no GPU: MFU not defined"
    name = torch.cuda.get_device_name(device)
    for key, tf in DENSE_BF16_PEAK_TFLOPS:
        if key in name:
            return tf, f"{name} matched {key!r}"
    return None, f"{name}: unknown peak, pass --peak-tflops"


def build_model(cfg_dict: dict, device, grad_ckpt: bool, seed: int):
    """Random-init Qwen2 (fp32 master weights) with activation checkpointing, sharded with FSDP2."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**cfg_dict)
    cfg.use_cache = False
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: 1.8B fp32 parameters init in seconds on a GPU
        model = Qwen2ForCausalLM(cfg)
    if grad_ckpt:
        # Non-reentrant checkpointing composes with FSDP2's hooks (the reentrant variant re-runs them).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:  # shard each decoder layer, then the root (embeddings, norm, lm_head)
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    model.train()
    return model, cfg


def count_params(cfg) -> dict:
    """Parameter counts from the config (the sharded model holds only this rank's shard)."""
    d, L, V, d_ff = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.intermediate_size
    hd = d // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    attn = d * d + d + 2 * (d * kv + kv) + d * d  # q (+bias), k, v (+bias), o (no bias): Qwen2
    mlp = 3 * d * d_ff  # gate, up, down
    layer = attn + mlp + 2 * d  # + two RMSNorm weights
    embed = V * d
    head = 0 if cfg.tie_word_embeddings else V * d
    total = embed + L * layer + d + head
    return {"total": total, "matmul": total - embed, "embedding": embed}


def flops_per_token(cfg, n_matmul: int, seq_len: int) -> dict:
    attn = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
    return {"model": 6 * n_matmul + attn, "hardware_with_recompute": 8 * n_matmul + attn * 4 // 3,
            "formula": "6*N + 12*n_layers*d_model*S (PaLM App. B); HFU: 8*N + 16*n_layers*d_model*S (recompute)"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def grpo_micro_step(model, ids, n_tok_step: float, gen: torch.Generator):
    """Forward + backward of the GRPO loss on one micro-batch; the loss is scaled to a token-mean over the step."""
    B, S = ids.shape
    logits = model(input_ids=ids).logits[:, :-1]  # (B, S-1, V) bf16
    logp, _ = grpo.token_logprobs(logits, ids[:, 1:], temperature=TEMPERATURE, with_entropy=False)  # (B, S-1)
    del logits
    noise = torch.randn(logp.shape, generator=gen, device="cpu").to(logp.device)
    old_logp = logp.detach() + OLD_LOGP_NOISE * noise  # (B, S-1)
    adv = torch.randn(B, generator=gen).to(logp.device)  # (B,)
    mask = torch.ones_like(logp)  # (B, S-1)
    mask[:, : int(S * PROMPT_FRACTION)] = 0  # prompt tokens carry no loss
    loss, m = grpo.policy_loss(logp, old_logp, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH,
                               clip_ratio_c=CLIP_RATIO_C, agg="token-mean")
    (loss * (mask.sum() / n_tok_step)).backward()  # token-mean over all micro-batches of the step
    return m


def measure_update(model, opt, cfg, a, device, gen) -> dict:
    V = cfg.vocab_size
    times, clipfracs = [], []
    for it in range(a.warmup + a.steps):
        batches = [torch.randint(0, V, (a.micro_batch, a.seq_len), generator=gen).to(device) for _ in range(a.accum)]
        n_tok_step = float(a.accum * a.micro_batch * (a.seq_len - 1 - int(a.seq_len * PROMPT_FRACTION)))
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for ids in batches:
            m = grpo_micro_step(model, ids, n_tok_step, gen)
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
        opt.step()
        sync(device)
        dt = time.perf_counter() - t0
        if it >= a.warmup:
            times.append(dt)
            clipfracs.append(m["clipfrac"])
        if not math.isfinite(float(gn)):
            raise RuntimeError(f"non-finite gradient norm at step {it}")
    return {"step_times_s": [round(t, 4) for t in times], "clipfrac_last": clipfracs[-1]}


# Kernel classes for --profile, first match wins (substrings of lower-cased kernel names).
KERNEL_CLASSES = (("attention (flash / SDPA)", ("flash", "fmha", "attention", "sdpa")),
                  ("matmul (GEMM)", ("gemm", "cutlass", "xmma", "nvjet", "matmul", "cublas", "aten::mm",
                                     "aten::addmm", "aten::bmm", "mmbackward")),
                  ("nccl (all-gather / reduce-scatter)", ("nccl",)),
                  ("softmax / log-prob", ("softmax", "logsumexp", "gather", "scatter")),
                  ("optimizer (AdamW)", ("adam", "multi_tensor", "foreach")),
                  ("copies / casts", ("memcpy", "memset", "copy", "catarray", "split", "chunk")),
                  ("other elementwise / reductions", ("",)))


def profile_update(model, opt, cfg, a, device, gen) -> dict:
    """One more update step under torch.profiler: device time per kernel class and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    one_step = argparse.Namespace(**{**vars(a), "steps": 1, "warmup": 0})
    with profile(activities=acts) as prof:
        measure_update(model, opt, cfg, one_step, device, gen)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0 and
              (device.type != "cuda" or e.device_type == torch.autograd.DeviceType.CUDA)]
    total = sum(getattr(e, attr) for e in events) or 1.0
    classes = {name: 0.0 for name, _ in KERNEL_CLASSES}
    for e in events:
        low = e.key.lower()
        name = next(n for n, subs in KERNEL_CLASSES if any(sub in low for sub in subs))
        classes[name] += getattr(e, attr)
    top = sorted(events, key=lambda e: -getattr(e, attr))[:15]
    return {"time": "device (kernel) time" if device.type == "cuda" else "CPU self time of ops",
            "total_ms": total / 1e3,
            "share_by_class": {k: round(v / total, 4) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
            "top": [{"name": e.key[:120], "calls": e.count, "ms": round(getattr(e, attr) / 1e3, 2),
                     "share": round(getattr(e, attr) / total, 4)} for e in top]}


@torch.no_grad()
def measure_logprob(model, cfg, a, device, gen) -> dict:
    """Phase 6 of train.py: no-grad forward + log-probs with entropy, one micro-batch per call."""
    times = []
    for it in range(1 + a.logprob_steps):
        ids = torch.randint(0, cfg.vocab_size, (a.micro_batch, a.seq_len), generator=gen).to(device)
        sync(device)
        t0 = time.perf_counter()
        logits = model(input_ids=ids).logits[:, :-1]
        grpo.token_logprobs(logits, ids[:, 1:], temperature=TEMPERATURE, with_entropy=True)
        del logits
        sync(device)
        if it >= 1:  # the first call warms up
            times.append(time.perf_counter() - t0)
    tok = a.micro_batch * a.seq_len
    med = common.median(times)
    return {"step_times_s": [round(t, 4) for t in times], "tokens_per_call": tok, "tokens_per_s": tok / med}


@torch.no_grad()
def measure_generate(cfg_dict: dict, a, device, gen) -> dict:
    """`transformers generate` on a plain (unsharded) bf16 copy of the architecture: NOT vLLM."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**cfg_dict)
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype).eval()
    prompts = torch.randint(0, cfg.vocab_size, (a.gen_batch, a.gen_prompt_tokens), generator=gen).to(device)
    gc = GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_p=1.0, top_k=0, max_new_tokens=a.gen_tokens,
                          min_new_tokens=a.gen_tokens, pad_token_id=0, eos_token_id=None, use_cache=True)
    times = []
    for _ in range(2):  # the first call warms up kernels and the cache allocator
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), generation_config=gc)
        sync(device)
        times.append(time.perf_counter() - t0)
    new = (out.shape[1] - a.gen_prompt_tokens) * a.gen_batch
    del model
    return {"engine": "transformers generate (no vLLM)", "dtype": str(dtype).replace("torch.", ""),
            "batch": a.gen_batch, "prompt_tokens": a.gen_prompt_tokens, "new_tokens_per_seq": a.gen_tokens,
            "time_s": round(times[-1], 3), "new_tokens_per_s": new / times[-1]}


def main(argv=None) -> int:
    a = parse_args(argv)
    rank, world, device, how = setup_distributed()
    cfg_dict = TINY if a.tiny else R1_DISTILL_QWEN_1_5B
    gen = torch.Generator().manual_seed(a.seed + rank)
    peak, peak_src = peak_tflops(device, a.peak_tflops)
    result = {"bench": "gpu_fsdp", "machine": common.machine(), "process_group": how,
              "model": {"config": "tiny" if a.tiny else "DeepSeek-R1-Distill-Qwen-1.5B (random weights)", **cfg_dict},
              "settings": {"seq_len": a.seq_len, "accum": a.accum, "warmup_steps": a.warmup, "timed_steps": a.steps,
                           "grad_ckpt": not a.no_grad_ckpt, "fused_adamw": a.fused_adamw,
                           "mixed_precision": "FSDP2 MixedPrecisionPolicy(param bf16, reduce fp32), fp32 master",
                           "loss": f"grpo.policy_loss token-mean, T={TEMPERATURE}, eps {EPS_LOW}/{EPS_HIGH}, c={CLIP_RATIO_C}"},
              "peak_tflops_bf16_dense": peak, "peak_source": peak_src, "attempts": []}

    micro = a.micro_batch
    update = None
    while micro >= 1 and update is None:
        a.micro_batch = micro
        model, cfg = build_model(cfg_dict, device, not a.no_grad_ckpt, a.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY,
                                **({"fused": True} if a.fused_adamw else {}))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            update = measure_update(model, opt, cfg, a, device, gen)
            result["attempts"].append({"micro_batch": micro, "ok": True})
        except torch.OutOfMemoryError as e:
            result["attempts"].append({"micro_batch": micro, "ok": False, "error": str(e).splitlines()[0][:200]})
            del model, opt
            torch.cuda.empty_cache()
            micro //= 2
    if update is None:
        raise SystemExit(f"out of memory even at micro-batch 1 x {a.seq_len}: {result['attempts']}")

    counts = count_params(cfg)
    fpt = flops_per_token(cfg, counts["matmul"], a.seq_len)
    tokens = a.accum * a.micro_batch * a.seq_len
    med = common.median(update["step_times_s"])
    tps_rank = tokens / med
    update.update(micro_batch=a.micro_batch, tokens_per_step_per_rank=tokens, step_time_s_median=round(med, 4),
                  tokens_per_s=tps_rank * world, tokens_per_s_per_gpu=tps_rank,
                  flops_per_token=fpt["model"], flops_formula=fpt["formula"],
                  achieved_tflops_per_gpu=tps_rank * fpt["model"] / 1e12,
                  mfu=(tps_rank * fpt["model"] / (peak * 1e12)) if peak else None,
                  hfu=(tps_rank * fpt["hardware_with_recompute"] / (peak * 1e12)) if peak and not a.no_grad_ckpt else None)
    result["model"]["params"] = counts
    result["update"] = update
    if device.type == "cuda":
        result["memory"] = {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
                            "scope": "the update measurement (model, grads, AdamW states, activations, logits)"}
    else:
        import resource

        result["memory"] = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if a.profile:
        result["profile"] = profile_update(model, opt, cfg, a, device, gen)
    result["logprob_forward"] = measure_logprob(model, cfg, a, device, gen)
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["generation"] = measure_generate(cfg_dict, a, device, gen) if a.gen_tokens > 0 and rank == 0 else None

    if rank == 0:
        import json

        common.write_json(a.out, result)
        print(json.dumps(result, indent=1), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
