"""ProRL training: prolonged GRPO with DAPO clipping, dynamic sampling, k3 KL and reference resets.

One training step (paper §3, App. E), each phase a named block in `train()`:

    1. prompts    draw the next prompts of the five-domain mixture          data.Mixture.next_batch
    2. rollout    n = 16 samples per prompt at T = 1.2 with vLLM             rollout.Rollout.generate
    3. reward     verifiers score every sample in [0, 1]                     rewards.score_batch
    4. filter     DAPO dynamic sampling: keep groups whose rewards are not
                  all equal, generate more rounds until the batch is full   grpo.fill_batch
                  (a round is gen_batch_factor x the batch; verl's gen_batch_size)
    5. advantage  A_i = (r_i - mean(r_group)) / (std(r_group) + eps)         grpo.group_advantages
    6. log-probs  old log-probs of the policy and of the reference policy,
                  both on logits / T                                        grpo.token_logprobs
    7. update     B / mini-batch AdamW steps on
                  L = L_clip(eps_low = 0.2, eps_high = 0.4) + beta * KL_k3  grpo.policy_loss, grpo.kl_penalty
    8. push       the policy's new weights into the vLLM engine             rollout.Rollout.update_weights
    9. log        one jsonlines record per step (+ TensorBoard, tqdm)
   10. validate   every `val_every` steps: pass@1 per suite, blended
   11. reset      reference <- policy (and optimizer state cleared) on schedule or stall
                                                                            grpo.ReferenceResetController
   12. save       atomic checkpoint every `ckpt_every` steps, newest `keep_last` kept

Where we depart from ProRL / verl (and why):
  * Dynamic sampling fills the batch per rank (each rank samples its own shard of the data). When the
    round cap is hit the batch is topped up with filtered groups, whose advantage is 0: they add no policy
    gradient, and every rank keeps the same number of micro-batches, which FSDP's collectives need.
  * Old log-probs are recomputed by the trainer (as verl does); the engine's log-probs are only used for
    the `rollout/logprob_mismatch` metric.
  * Precision: fp32 master weights and optimizer always. `--dtype bfloat16` runs vLLM in bf16 and the
    trainer's forward/backward in bf16 mixed precision: FSDP's MixedPrecisionPolicy across GPUs, torch.autocast
    on one rank or on CPU (AMX makes it ~2.4x faster per step on the bench model); the log-softmax stays fp32.
  * On USR2 (Slurm time limit or preemption) all ranks finish the current step, write a checkpoint, and
    then the job is requeued through submitit; the requeued job resumes from that checkpoint.

Run:
    python train.py                                   # embedded default: a small model on CPU, ~20 min
    python train.py --steps 2 --out out/smoke         # a 2-step smoke run
    python train.py --resume                          # continue from the newest complete checkpoint
    torchrun --nproc_per_node 2 train.py              # N local processes (gloo on CPU, nccl on GPU)
    python train.py --preset prorl --model <R1-Distill-Qwen-1.5B dir> --train-data <spec> \\
        --nodes 4 --gpus-per-node 8 --partition gpu  # the paper's run, submitted to Slurm via submitit
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import data
import grpo
import rewards
import rollout

log = logging.getLogger("train")


# ----------------------------------------------------------------------------------------------------
# Config: the defaults are the embedded default (CPU, minutes); `--preset prorl` is the paper's run.
def _f(default, help):  # a dataclass field whose help text becomes the argparse --help line
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # run
    preset: str = _f("mini", "mini: the embedded default (CPU). prorl: the paper's run (App. E), defaults below in []")
    out: str = _f("out/mini/run", "run directory: metrics.jsonl, tb/, checkpoints/")
    model: str = _f("", "HF model dir or hub name; '' builds the embedded warm start [DeepSeek-R1-Distill-Qwen-1.5B]")
    train_data: str = _f("", "data spec (see data.py); '' = the embedded default's Reasoning Gym tasks [5 domains, 136K]")
    val_data: str = _f("", "validation spec for reset decisions; '' = embedded default [AIME24, Codeforces, GPQA-D, IFEval, graph_color]")
    seed: int = _f(0, "seed of data order, sampling and init")
    steps: int = _f(100, "training steps [> 2,000 over 8 runs]")
    resume: bool = _f(False, "continue from the newest complete checkpoint in --out")
    # rollout
    n: int = _f(16, "samples per prompt (group size G) [16; 32 in runs 6-7]")
    temperature: float = _f(1.2, "rollout temperature; log-probs use logits / T [1.2]")
    top_p: float = _f(1.0, "rollout nucleus sampling [1.0]")
    max_prompt_tokens: int = _f(160, "prompts longer than this are filtered (counted) [not reported]")
    max_response_tokens: int = _f(128, "response budget [8192; 16384 in run 8]")
    # batch
    prompts_per_step: int = _f(8, "prompt groups per training step, over all ranks [256]")
    mini_batch_prompts: int = _f(4, "prompt groups per gradient update [64, i.e. 4 updates per step]")
    micro_batch_seqs: int = _f(64, "sequences per forward/backward (gradient accumulation) [memory bound]")
    # objective (grpo.py)
    eps_low: float = _f(0.2, "lower clip: ratio >= 1 - eps_low [0.2]")
    eps_high: float = _f(0.4, "upper clip (DAPO clip-higher): ratio <= 1 + eps_high [0.4]")
    clip_ratio_c: float = _f(3.0, "dual clip for A < 0; <= 0 turns it off [verl default 3.0]")
    loss_agg: str = _f("token-mean", "token-mean | seq-mean-token-mean | seq-mean-token-sum [token-mean]")
    adv_norm_by_std: bool = _f(True, "divide by the group std (GRPO); False = Dr. GRPO [True]")
    kl_coef: float = _f(0.1, "beta of the k3 KL penalty to the reference; 0 disables the reference [not reported; 1e-4]")
    kl_kind: str = _f("k3", "KL estimator k1 | k2 | k3 [k3]")
    dynamic_sampling: bool = _f(True, "drop groups whose rewards are all equal and refill (DAPO) [on]")
    max_gen_rounds: int = _f(4, "cap on generation rounds per step when refilling [not reported]")
    gen_batch_factor: float = _f(1.0, "prompt groups generated per dynamic-sampling round, as a multiple of "
                                      "prompts_per_step (>= 1): above 1 the batch fills in fewer, larger rounds, and "
                                      "mixed groups beyond it are dropped (dyn/surplus_groups) [not reported; verl's "
                                      "DAPO recipe: 3]")
    overlong_buffer: int = _f(0, "DAPO soft overlong penalty buffer in tokens; 0 = off [off]")
    overlong_factor: float = _f(1.0, "DAPO soft overlong penalty at the full budget [1.0]")
    no_eos_penalty: float = _f(0.0, "reward penalty for a response that never emits EOS; 0 = off [runs 4-5: on, value not given]")
    # optimizer
    lr: float = _f(2e-4, "AdamW learning rate, constant [2e-6]")
    weight_decay: float = _f(0.0, "AdamW weight decay [0.01 in verl]")
    grad_clip: float = _f(1.0, "global gradient-norm clip [1.0]")
    max_bad_updates: int = _f(3, "abort after this many non-finite updates in a row (each one is skipped)")
    # reference reset (grpo.ReferenceResetController)
    reset_every: int = _f(40, "hard-reset the reference to the policy every N steps; 0 = off [at run boundaries, ~200-500 steps]")
    reset_patience: int = _f(0, "also reset when validation has not improved for N evaluations; 0 = off [on stall]")
    reset_optimizer: bool = _f(True, "re-initialise the optimizer state at each reset [True; ProRL v2: False]")
    # validation
    val_every: int = _f(20, "validate every N steps; 0 = never")
    val_n: int = _f(8, "samples per validation problem for pass@1 [16]")
    val_temperature: float = _f(0.6, "validation temperature [0.6, top-p 0.95]")
    val_top_p: float = _f(0.95, "validation nucleus sampling [0.95]")
    val_problems: int = _f(64, "problems per validation suite (0 = all)")
    # checkpoints
    ckpt_every: int = _f(20, "checkpoint every N steps (and at the end, and on USR2)")
    keep_last: int = _f(10, "checkpoints kept")
    # system
    dtype: str = _f("float32", "engine dtype and trainer precision: float32 | bfloat16 (vLLM in bf16; the trainer "
                               "keeps fp32 weights and runs bf16 mixed precision, on GPU and on CPU) [bfloat16]")
    grad_checkpointing: bool = _f(False, "activation checkpointing (on in the prorl preset)")
    keep_freed_memory: bool = _f(True, "CPU trainer: glibc keeps freed memory for reuse instead of returning "
                                       "it to the kernel (see keep_freed_memory(); --no-keep-freed-memory = "
                                       "glibc's defaults)")
    kv_cache_gb: float = _f(1.0, "vLLM KV cache budget on CPU in GiB")
    gpu_memory_utilization: float = _f(0.35, "vLLM share of GPU memory (the trainer keeps the rest)")
    reward_workers: int = _f(0, "verifier processes; 0 = number of CPU cores")
    # Slurm via submitit (only with --nodes > 0)
    nodes: int = _f(0, "submit to Slurm on this many nodes through submitit; 0 = run here [4]")
    tasks_per_node: int = _f(0, "ranks per node; 0 = gpus_per_node or 1 [8]")
    gpus_per_node: int = _f(0, "GPUs per node [8]")
    cpus_per_task: int = _f(1, "CPU cores per rank")
    partition: str = _f("", "Slurm partition")
    account: str = _f("", "Slurm account")
    time_min: int = _f(60, "Slurm time limit per job in minutes; the job requeues itself at the limit")
    slurm_folder: str = _f("", "submitit logs; '' = <out>/submitit")
    wait: bool = _f(True, "wait for the Slurm job to finish (--no-wait: submit and return)")


PRESETS = {
    # The paper's run (§3.3, App. E). The model and data specs must point at local copies or hub names.
    "prorl": dict(
        out="out/prorl/run", model="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", steps=2000,
        max_prompt_tokens=2048, max_response_tokens=8192, prompts_per_step=256, mini_batch_prompts=64,
        micro_batch_seqs=4, kl_coef=1e-4, lr=2e-6, weight_decay=0.01, reset_every=0, reset_patience=3,
        val_every=50, val_n=16, val_problems=0, ckpt_every=25, keep_last=5, max_gen_rounds=8,
        dtype="bfloat16", grad_checkpointing=True, gpu_memory_utilization=0.35,
        gpus_per_node=8, time_min=240,
    ),
}
# The 16k-token stage (run 8) is `--preset prorl --max-response-tokens 16384`.


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"{f.metadata['help']} (default {f.default})")
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(flag, type=typ, default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default {f.default!r})")
    given = vars(p.parse_args(argv))
    preset = given.get("preset", "mini")
    if preset != "mini" and preset not in PRESETS:
        p.error(f"--preset {preset!r}: choose from mini, {', '.join(PRESETS)}")
    cfg = Config(**{**PRESETS.get(preset, {}), **given})
    try:
        check_config(cfg)
    except ValueError as e:
        p.error(str(e))
    return cfg


def check_config(cfg: Config) -> None:
    """Refuse a bad configuration before any work starts."""
    if cfg.prompts_per_step % cfg.mini_batch_prompts:
        raise ValueError(f"--prompts-per-step {cfg.prompts_per_step} must be a multiple of --mini-batch-prompts {cfg.mini_batch_prompts}")
    if cfg.loss_agg not in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        raise ValueError(f"--loss-agg {cfg.loss_agg!r}: token-mean | seq-mean-token-mean | seq-mean-token-sum")
    if cfg.kl_kind not in ("k1", "k2", "k3"):
        raise ValueError(f"--kl-kind {cfg.kl_kind!r}: k1 | k2 | k3")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype {cfg.dtype!r}: float32 | bfloat16")
    for name in ("n", "steps", "prompts_per_step", "mini_batch_prompts", "micro_batch_seqs", "max_response_tokens", "max_gen_rounds"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    if not cfg.gen_batch_factor >= 1:
        raise ValueError(f"--gen-batch-factor must be >= 1 (a round generates at least one batch), got {cfg.gen_batch_factor}")
    if not (0 <= cfg.eps_low < 1 and cfg.eps_high >= 0):
        raise ValueError(f"clip range [1 - {cfg.eps_low}, 1 + {cfg.eps_high}] is invalid")
    if cfg.temperature <= 0 or cfg.val_temperature <= 0:
        raise ValueError("temperatures must be > 0")
    if cfg.n < 2:
        raise ValueError("--n must be >= 2: a group of one sample has no relative advantage")


# ----------------------------------------------------------------------------------------------------
# Distributed set-up in plain sight: one process, torchrun, or a Slurm task (env set by SlurmJob).
def setup_distributed(cfg: Config):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(cfg.seed + rank)  # seeds offset by rank
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    return rank, world, device


def keep_freed_memory() -> bool:
    """CPU training: stop glibc from handing large freed blocks back to the kernel. Returns whether it took.

    glibc serves every allocation above its mmap threshold (at most 32 MiB: here the activations, logits
    and gradients of a micro-batch) with a fresh mmap and unmaps it on free, so every micro-batch
    page-faults in newly zeroed pages. On bench_trl's model that was 25-65% of the trainer's CPU time
    spent in the kernel, and the update phase ran twice as long (bench/README.md). M_MMAP_MAX = 0 serves
    large blocks from the heap, and a 2 GiB trim threshold keeps freed heap memory for the next
    micro-batch; the process's RSS then stays near its peak instead of falling between steps. Values and
    results are unchanged. Where libc is not glibc (macOS, musl) nothing is done and False is returned."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    """Sum (or op) over ranks; a no-op in one process. Tensors travel on the backend's device."""
    if dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def print0(rank, *a):
    if rank == 0:
        print(*a, flush=True)


# ----------------------------------------------------------------------------------------------------
# Model: HF Qwen2-family causal LM, FSDP2 when distributed.
def load_model(path: str, cfg: Config, device, world: int, trainable: bool):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # fp32 master weights
    model.config.use_cache = False
    if cfg.grad_checkpointing and trainable:
        model.gradient_checkpointing_enable()
    model.to(device)
    if world > 1:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if (
            cfg.dtype == "bfloat16" and device.type == "cuda") else MixedPrecisionPolicy()
        for layer in model.model.layers:  # shard each decoder layer, then the root (embeddings, head)
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    if not trainable:
        model.requires_grad_(False)
    model.train(trainable)
    return model


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """Full (unsharded) weights on CPU, on every rank. Collective under FSDP: every rank must call it."""
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in model.state_dict().items():
        v = v.full_tensor() if isinstance(v, DTensor) else v  # all-gather of one parameter
        out[k] = v.detach().to("cpu", copy=True)
    if getattr(model.config, "tie_word_embeddings", False):
        out.pop("lm_head.weight", None)  # tied to embed_tokens; safetensors refuses shared storage
    return out


@torch.no_grad()
def copy_weights(dst, src) -> None:
    """reference <- policy (a hard reset, §3). Under FSDP2 shards copy onto shards, no communication; the
    root module keeps its parameters unsharded after a forward, so both are resharded first."""
    for m in (dst, src):
        if hasattr(m, "reshard"):  # an FSDP2 module
            m.reshard()
    for p_dst, p_src in zip(dst.parameters(), src.parameters(), strict=True):
        p_dst.copy_(p_src)


def make_optimizer(model, cfg: Config):
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


# ----------------------------------------------------------------------------------------------------
# Batches: right-padded prompt+response sequences; log-probs are taken at response positions only.
def make_batch(samples: list[dict], pad_id: int, device) -> dict[str, torch.Tensor]:
    L = max(len(s["prompt_ids"]) + len(s["response_ids"]) for s in samples)
    B = len(samples)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L - 1)  # (B, L-1): 1 where target token t+1 is a response token
    engine_logp = torch.zeros(B, L - 1)
    for i, s in enumerate(samples):
        P, R = len(s["prompt_ids"]), len(s["response_ids"])
        input_ids[i, : P + R] = torch.tensor(s["prompt_ids"] + s["response_ids"])
        attn[i, : P + R] = 1
        mask[i, P - 1 : P + R - 1] = 1
        engine_logp[i, P - 1 : P + R - 1] = torch.tensor(s["logprobs"], dtype=torch.float32)
    return {"input_ids": input_ids.to(device), "attn": attn.to(device), "mask": mask.to(device),
            "engine_logp": engine_logp.to(device)}


def autocast(cfg: Config, device, world: int):
    """bf16 mixed precision for the trainer's forward/backward where FSDP's MixedPrecisionPolicy does not
    already give it (one rank, or CPU): fp32 master weights and optimizer, bf16 matmuls (AMX on recent Xeon
    CPUs: ~1.9x on the bench model's forward/backward), fp32 log-softmax (grpo.token_logprobs)."""
    on = cfg.dtype == "bfloat16" and not (world > 1 and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def forward_logprobs(model, batch, idx, temperature: float, with_entropy: bool, amp):
    """Per-token log p(y_t | y_<t) at temperature T for the sequences `idx` of `batch`. (b, L-1)
    amp: the autocast context of autocast() above (disabled in full precision) for the model's forward."""
    ids, attn = batch["input_ids"][idx], batch["attn"][idx]
    L = int(attn.sum(1).max())  # trim the padding this micro-batch does not need
    with amp:
        logits = model(input_ids=ids[:, :L], attention_mask=attn[:, :L]).logits[:, :-1]  # (b, L-1, V)
    logp, ent = grpo.token_logprobs(logits, ids[:, 1:L], temperature=temperature, with_entropy=with_entropy)
    return logp, ent, L - 1


def micro_batches(idx: torch.Tensor, size: int):
    return [idx[i : i + size] for i in range(0, len(idx), size)]


# ----------------------------------------------------------------------------------------------------
# Step phases 6-7: old / reference log-probs, then mini-batch updates. Plain function, testable alone.
def policy_update(policy, ref, optimizer, batch, adv, cfg: Config, world: int,
                  times: dict | None = None) -> dict[str, float]:
    """Phases 6-7 of a step on this rank's sequences. `adv` is (B,), one advantage per sequence.
    Seconds spent go into `times` as time/logprob (phase 6) and time/update (phase 7).

    Every rank holds the same number of sequences, so micro-batch counts match across ranks (FSDP needs
    the same collectives everywhere). The token-mean is over the whole mini-batch of ALL ranks: each
    micro-batch's mean loss is scaled by its share of the global token (or sequence) count, times
    `world` because FSDP averages gradients over ranks.
    """
    B = batch["input_ids"].shape[0]
    mask = batch["mask"]
    T = cfg.temperature
    amp = autocast(cfg, mask.device, world)
    n_updates = cfg.prompts_per_step // cfg.mini_batch_prompts
    minibatches = torch.arange(B).chunk(n_updates)  # groups are contiguous, so chunks keep groups whole
    # -- 6. old log-probs (the policy before this step's updates) and reference log-probs, on logits / T.
    # The first mini-batch meets the policy before any update, so its old log-probs are its own training
    # forward's, detached (ratio = 1 exactly): only later mini-batches need this no-grad forward, and with
    # one update per step it disappears.
    times = {} if times is None else times
    old_logp = torch.zeros_like(mask)
    ref_logp = torch.zeros_like(mask)
    ent_sum = torch.zeros(())
    with torch.no_grad(), timed(times, "time/logprob"):
        for idx in micro_batches(torch.arange(len(minibatches[0]), B), cfg.micro_batch_seqs):
            logp, ent, Lm = forward_logprobs(policy, batch, idx, T, with_entropy=True, amp=amp)
            old_logp[idx, :Lm] = logp
            ent_sum += (ent * mask[idx, :Lm]).sum().cpu()
        if ref is not None:
            for idx in micro_batches(torch.arange(B), cfg.micro_batch_seqs):
                logp, _, Lm = forward_logprobs(ref, batch, idx, T, with_entropy=False, amp=amp)
                ref_logp[idx, :Lm] = logp
    n_tok = mask.sum().cpu()

    # -- 7. mini-batch updates: prompts_per_step / mini_batch_prompts optimizer steps
    sums = {k: torch.zeros(()) for k in ("pg_loss", "kl", "clipfrac", "clipfrac_high", "clipfrac_low", "ppo_kl", "tokens")}
    grad_norms, bad = [], 0
    with timed(times, "time/update"):
        for u, mb in enumerate(minibatches):
            mb_tok = all_reduce(mask[mb].sum().cpu().clone())  # tokens of this mini-batch over all ranks
            mb_seq = all_reduce(torch.tensor(float(len(mb))))
            optimizer.zero_grad(set_to_none=True)
            for idx in micro_batches(mb, cfg.micro_batch_seqs):
                logp, ent, Lm = forward_logprobs(policy, batch, idx, T, with_entropy=u == 0, amp=amp)  # (b, Lm)
                if u == 0:  # not updated yet: this forward is the old policy's
                    old_logp[idx, :Lm] = logp.detach()
                    ent_sum += (ent * mask[idx, :Lm]).sum().cpu()
                m, old, a = mask[idx, :Lm], old_logp[idx, :Lm], adv[idx]
                pg_loss, pm = grpo.policy_loss(logp, old, a, m, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                                               clip_ratio_c=cfg.clip_ratio_c if cfg.clip_ratio_c > 0 else None,
                                               agg=cfg.loss_agg)
                tok_share = m.sum() / mb_tok.to(m.device) * world
                share = tok_share if cfg.loss_agg == "token-mean" else len(idx) / mb_seq.item() * world
                loss = pg_loss * share
                if ref is not None and cfg.kl_coef > 0:
                    kl = grpo.aggregate(grpo.kl_penalty(logp, ref_logp[idx, :Lm], kind=cfg.kl_kind), m, "token-mean")
                    loss = loss + cfg.kl_coef * kl * tok_share
                    sums["kl"] += kl.detach().cpu() * m.sum().cpu()
                loss.backward()
                t = m.sum().cpu()
                sums["pg_loss"] += pg_loss.detach().cpu() * t
                for k in ("clipfrac", "clipfrac_high", "clipfrac_low", "ppo_kl"):
                    sums[k] += pm[k] * t
                sums["tokens"] += t
            gn = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn  # global norm: equal on all ranks
            if not torch.isfinite(gn):
                optimizer.zero_grad(set_to_none=True)  # skip this update, count it
                bad += 1
                log.warning("non-finite gradient norm (%s): update skipped", gn.item())
                continue
            optimizer.step()
            grad_norms.append(gn.item())
    tot = all_reduce(torch.stack([sums[k] for k in sums] + [ent_sum, n_tok]))
    out = {f"train/{k}": (tot[i] / tot[len(sums) - 1]).item() for i, k in enumerate(sums) if k != "tokens"}
    out["train/entropy"] = (tot[-2] / tot[-1]).item()
    out["train/grad_norm"] = float(np.mean(grad_norms)) if grad_norms else float("nan")
    out["train/bad_updates"] = bad
    out["train/updates"] = n_updates
    out["_old_logp"] = old_logp  # for the engine-vs-trainer mismatch metric
    return out


# ----------------------------------------------------------------------------------------------------
# Checkpoints: step_XXXXXX/{policy/ (HF format), ref.safetensors, optim.pt, state.json, rng_rank*.pt, COMPLETE}
def save_checkpoint(cfg: Config, step: int, policy, ref, optimizer, tokenizer, state: dict, rank: int,
                    policy_sd: dict[str, torch.Tensor]) -> Path | None:
    """`policy_sd`: the full weights already gathered for this step's engine push (no second all-gather)."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    root = Path(cfg.out) / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f"step_{step:06d}.tmp"
    ref_sd = full_state_dict(ref) if ref is not None else None
    # An optimizer with no state yet (just reset) is saved as None: torch's helper would first "initialise" it
    # with a zero-lr step, advancing Adam's step count, so a resumed run would differ from an uninterrupted one.
    optim_sd = (get_optimizer_state_dict(policy, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
                if optimizer.state else None)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "policy").mkdir(parents=True)
        save_file(policy_sd, tmp / "policy" / "model.safetensors", metadata={"format": "pt"})
        policy.config.save_pretrained(tmp / "policy")
        tokenizer.save_pretrained(tmp / "policy")
        if ref_sd is not None:
            save_file(ref_sd, tmp / "ref.safetensors", metadata={"format": "pt"})
        torch.save(optim_sd, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    barrier()  # rank 0 made tmp/; every rank adds its RNG state before the rename (shared file system)
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
               tmp / f"rng_rank{rank}.pt")
    barrier()
    if rank == 0:
        (tmp / "COMPLETE").write_text(str(step))
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: a checkpoint directory is either whole or absent
        _fsync_dir(root)
        done = sorted(p for p in root.glob("step_*") if (p / "COMPLETE").exists())
        for old in done[: -cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _fsync_dir(path: Path) -> None:
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def latest_checkpoint(out: str) -> Path | None:
    done = sorted(p for p in (Path(out) / "checkpoints").glob("step_*") if p.is_dir() and (p / "COMPLETE").exists())
    return done[-1] if done else None


def barrier():
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------------
# Metrics: jsonlines (fsync per line, so a kill loses nothing already logged) + TensorBoard.
class Metrics:
    def __init__(self, out: str, rank: int, resume_step: int | None):
        self.rank, self.path = rank, Path(out) / "metrics.jsonl"
        self.tb = None
        if rank != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # Lines after the checkpoint belong to steps that will be redone: drop them, atomically.
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run in an old directory starts a fresh log
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out) / "tb"))
        except ImportError:  # TensorBoard is optional; jsonlines is the record
            log.warning("tensorboard not installed: metrics go to metrics.jsonl only")

    def write(self, rec: dict) -> None:
        if self.rank != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self.tb.add_scalar(k, v, rec["step"])
            self.tb.flush()


@contextmanager
def timed(times: dict, key: str):
    t0 = time.perf_counter()
    yield
    times[key] = times.get(key, 0.0) + time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------
# USR2 = Slurm's "time limit / preemption is near". Finish the step, checkpoint, requeue.
class StopFlag:
    def __init__(self):
        self.requested = False
        self.chained = None  # submitit's own USR2 handler, which requeues the job

    def install(self):
        self.chained = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, self._handler)

    def _handler(self, signum, frame):
        log.warning("USR2 received: will checkpoint after this step and requeue")
        self.requested = True

    def agreed(self) -> bool:
        """All ranks stop at the same step boundary: any rank's flag stops everyone."""
        return bool(all_reduce(torch.tensor(float(self.requested)), dist.ReduceOp.MAX if dist.is_initialized() else None).item())

    def requeue_and_exit(self, rank: int):
        if rank == 0:
            if callable(self.chained) and self.chained not in (signal.SIG_DFL, signal.SIG_IGN):
                self.chained(signal.SIGUSR2, None)  # submitit: dump the resubmission, scontrol requeue, exit
            if os.environ.get("SLURM_JOB_ID"):  # plain sbatch (slurm/prorl.sbatch)
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], timeout=60, check=False)
            sys.exit(-1 if os.environ.get("SLURM_JOB_ID") else 0)
        if os.environ.get("SLURM_JOB_ID"):
            # Other ranks wait to be stopped by the requeue: exiting first could make srun kill rank 0 early.
            time.sleep(120)
        sys.exit(-1 if os.environ.get("SLURM_JOB_ID") else 0)


# ----------------------------------------------------------------------------------------------------
def resolve_defaults(cfg: Config, rank: int) -> Config:
    """Fill '' model / data with the embedded default (built once, cached under out/mini)."""
    if cfg.model and cfg.train_data:
        return cfg
    import embedded

    if not cfg.model:
        if rank == 0:
            embedded.ensure_base()
        barrier()
        cfg = dataclasses.replace(cfg, model=embedded.ensure_base())
    if not cfg.train_data:
        cfg = dataclasses.replace(cfg, train_data=embedded.MINI_TRAIN_SPEC)
    if not cfg.val_data:
        cfg = dataclasses.replace(cfg, val_data=embedded.MINI_VAL_SPEC)
    return cfg


def shard(tasks: list[dict], rank: int, world: int) -> list[dict]:
    return tasks[rank::world]


def train(cfg: Config) -> dict:
    """The training loop. Returns the last metrics record."""
    rank, world, device = setup_distributed(cfg)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if device.type == "cpu" and cfg.keep_freed_memory:
        log.info("keep_freed_memory: %s", "on" if keep_freed_memory() else "not glibc, unchanged")
    cfg = resolve_defaults(cfg, rank)
    if cfg.prompts_per_step % world or cfg.mini_batch_prompts % world:
        raise ValueError(f"--prompts-per-step and --mini-batch-prompts must be multiples of the world size {world}")
    out = Path(cfg.out)
    ckpt = latest_checkpoint(cfg.out) if cfg.resume else None
    if cfg.resume and ckpt is None:
        print0(rank, f"--resume: no complete checkpoint in {out / 'checkpoints'}; starting fresh")
    state = json.loads((ckpt / "state.json").read_text()) if ckpt else {}
    start_step = state.get("step", 0)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))

    # -- data: each rank samples its own shard of every source (disjoint, deterministic)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sources = data.load_spec(cfg.train_data, seed=cfg.seed, tokenizer=tokenizer,
                             max_prompt_tokens=cfg.max_prompt_tokens)  # filtered; counts are logged
    sources = {k: shard(v, rank, world) for k, v in sources.items()}
    mixture = data.Mixture(sources, weights=data.spec_weights(cfg.train_data), seed=cfg.seed)
    if ckpt:
        mixture.load_state_dict(state["mixture"][rank])
    val_suites = {k: shard(v[: cfg.val_problems or None], rank, world)
                  for k, v in (data.eval_suites(cfg.val_data) if cfg.val_data and cfg.val_every else {}).items()}

    # -- models: policy (trainable), reference (frozen; absent when kl_coef == 0), optimizer
    policy_path = str(ckpt / "policy") if ckpt else cfg.model
    policy = load_model(policy_path, cfg, device, world, trainable=True)
    ref = None
    if cfg.kl_coef > 0:
        ref = load_model(policy_path, cfg, device, world, trainable=False)
        if ckpt:  # the reference is its own saved weights, never silently re-anchored to the policy
            from safetensors.torch import load_file

            _load_full_state(ref, load_file(ckpt / "ref.safetensors"))
    optimizer = make_optimizer(policy, cfg)
    if ckpt:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        optim_sd = torch.load(ckpt / "optim.pt", weights_only=False)
        if optim_sd is not None:  # None: saved right after an optimizer reset, the fresh optimizer is that state
            set_optimizer_state_dict(policy, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
        rng = torch.load(ckpt / f"rng_rank{rank}.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    controller = grpo.ReferenceResetController(every=cfg.reset_every or None, patience=cfg.reset_patience or None,
                                               reset_optimizer=cfg.reset_optimizer)
    if ckpt:
        controller.load_state_dict(state["controller"])

    # -- the rollout engine. USR2 is ignored while vLLM's processes are spawned (they inherit SIG_IGN
    #    across exec), so a Slurm warning signal reaches only our handler, never kills the engine.
    stop = StopFlag()
    prev = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    engine = rollout.Rollout(policy_path, dtype=cfg.dtype, max_model_len=cfg.max_prompt_tokens + cfg.max_response_tokens,
                             seed=cfg.seed + rank, kv_cache_gb=cfg.kv_cache_gb,
                             gpu_memory_utilization=cfg.gpu_memory_utilization)
    rewards.score_batch(["warm-up"], [_warmup_task()], workers=cfg.reward_workers or None)  # start the pool now
    signal.signal(signal.SIGUSR2, prev)
    stop.install()

    metrics = Metrics(cfg.out, rank, start_step if ckpt else None)
    G_local = cfg.prompts_per_step // world
    # groups generated per round: with dynamic sampling, gen_batch_factor x the batch (fewer refill rounds)
    G_gen = math.ceil(G_local * cfg.gen_batch_factor) if cfg.dynamic_sampling else G_local
    print0(rank, f"train: {world} rank(s) on {device}, {G_local} groups x {cfg.n} samples per rank per step, "
                 f"{cfg.prompts_per_step // cfg.mini_batch_prompts} updates/step, steps {start_step}->{cfg.steps}, out {out}")
    from tqdm import tqdm

    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, disable=rank != 0, desc="train")
    rec, bad_in_a_row = {}, 0
    for step in bar:
        times: dict[str, float] = {}
        t_step = time.perf_counter()
        # ---- 1-4. prompts -> rollout -> reward -> dynamic-sampling filter (refill until full)
        dropped: list[dict] = []
        gen_tokens = [0]

        def sample_round(r: int):
            tasks = mixture.next_batch(G_gen)
            with timed(times, "time/rollout"):
                prompts = [data.format_prompt(t, tokenizer) for t in tasks]
                samples = engine.generate(prompts, n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                          max_tokens=cfg.max_response_tokens, seed=_seed(cfg.seed, step, r, rank))
            gen_tokens[0] += sum(len(s["response_ids"]) for s in samples)
            with timed(times, "time/reward"):
                scores = rewards.score_batch([s["text"] for s in samples], [tasks[s["prompt_index"]] for s in samples],
                                             workers=cfg.reward_workers or None)
            raw = torch.tensor(scores, dtype=torch.float32)  # (n_groups * n,)
            shaped = raw + _shaping(samples, cfg)
            items = [{"task": t, "samples": samples[i * cfg.n:(i + 1) * cfg.n], "scores": scores[i * cfg.n:(i + 1) * cfg.n],
                      "rewards": shaped[i * cfg.n:(i + 1) * cfg.n]} for i, t in enumerate(tasks)]
            if not cfg.dynamic_sampling:
                return items, torch.full((len(items) * cfg.n,), float("nan"))  # NaN groups count as "mixed": keep all
            # Filter on the task reward, before shaping (DAPO filters on accuracy; see grpo.py, 7.)
            keep = grpo.mixed_groups(raw, cfg.n)
            dropped.extend(it for it, k in zip(items, keep.tolist()) if not k)
            return items, raw

        if cfg.dynamic_sampling:
            groups, ds = grpo.fill_batch(sample_round, G_local, cfg.n, cfg.max_gen_rounds, on_underfill="warn")
        else:
            groups, _ = sample_round(0)
            ds = {"rounds": 1, "kept_frac": 1.0, "generated_groups": len(groups), "kept_groups": len(groups),
                  "truncated_groups": 0}
        padded = G_local - len(groups)
        groups = groups + dropped[:padded]  # zero-advantage filler (see the docstring); 0 when full
        if len(groups) < G_local:
            raise RuntimeError(f"step {step}: only {len(groups)} of {G_local} groups after {ds['rounds']} rounds")

        # ---- 5. advantages, per group
        samples = [s for g in groups for s in g["samples"]]
        r = torch.cat([g["rewards"] for g in groups])  # (B,)
        adv = grpo.group_advantages(r, cfg.n, norm_by_std=cfg.adv_norm_by_std)  # (B,)
        batch = make_batch(samples, pad_id, device)
        adv = adv.to(device)

        # ---- 6-7. old / reference log-probs and the mini-batch updates
        engine.sleep()  # GPU: free the KV cache while the trainer updates (no-op on CPU)
        upd = policy_update(policy, ref, optimizer, batch, adv, cfg, world, times)
        old_logp = upd.pop("_old_logp")
        bad_in_a_row = bad_in_a_row + 1 if upd["train/bad_updates"] == upd["train/updates"] else 0
        if bad_in_a_row >= cfg.max_bad_updates:
            raise RuntimeError(f"step {step}: {bad_in_a_row} steps in a row with only non-finite updates; aborting")

        # ---- 8. push the new weights into the engine (every rank its own engine, full weights)
        with timed(times, "time/push"):
            sd = full_state_dict(policy)
            engine.wake_up()
            engine.update_weights(sd)  # sd is kept for this step's checkpoint

        # ---- 9. metrics of this step (rank sums, then means)
        scores = torch.tensor([x for g in groups for x in g["scores"]])
        lens = torch.tensor([float(len(s["response_ids"])) for s in samples])
        trunc = torch.tensor([float(s["finish_reason"] == "length") for s in samples])
        mism = rollout.logprob_mismatch(batch["engine_logp"], old_logp, batch["mask"])
        sums = all_reduce(torch.tensor([scores.sum(), (scores == 1.0).float().sum(), lens.sum(), trunc.sum(), float(len(samples)),
                                        mism, float(ds["kept_frac"]), float(ds["rounds"]), float(padded), float(gen_tokens[0]),
                                        float(ds["truncated_groups"]), float(ds["generated_groups"])]))
        rec = {"step": step + 1, **upd,
               "rollout/reward": (sums[0] / sums[4]).item(), "rollout/accuracy": (sums[1] / sums[4]).item(),
               "rollout/response_len": (sums[2] / sums[4]).item(), "rollout/truncated": (sums[3] / sums[4]).item(),
               "rollout/logprob_mismatch": (sums[5] / world).item(), "dyn/kept_frac": (sums[6] / world).item(),
               "dyn/rounds": (sums[7] / world).item(), "dyn/padded_groups": int(sums[8].item()),
               "dyn/generated_groups": int(sums[11].item()),  # over all rounds and ranks
               "dyn/surplus_groups": int(sums[10].item()),  # mixed groups generated beyond the batch, not trained on
               "lr": cfg.lr}
        for dom in sorted({g["task"]["domain"] for g in groups}):
            s = torch.tensor([x for g in groups if g["task"]["domain"] == dom for x in g["scores"]])
            rec[f"rollout/reward_{dom}"] = s.mean().item()  # this rank's view (rank 0 is logged)

        # ---- 10-11. validation and the reference / optimizer reset decision
        val = None
        if cfg.val_every and (step + 1) % cfg.val_every == 0 and val_suites:
            with timed(times, "time/val"):
                val = validate(engine, val_suites, tokenizer, cfg, step)
            rec.update({f"val/{k}": v for k, v in val.items()})
        reason = controller.update(step + 1, None if val is None else val["blend"])
        rec["reset/happened"] = int(reason is not None)
        if reason is not None:
            if ref is not None:
                copy_weights(ref, policy)
            if cfg.reset_optimizer:
                optimizer = make_optimizer(policy, cfg)  # fresh AdamW moments (§3: "reset the optimizer")
            rec["reset/reason"] = reason
            print0(rank, f"step {step + 1}: reference reset ({reason}){' + optimizer reset' if cfg.reset_optimizer else ''}")
        times["time/step"] = time.perf_counter() - t_step
        rec.update({k: v for k, v in times.items()})
        rec["perf/gen_tokens_per_s"] = (sums[9] / max(times.get("time/rollout", 1e-9), 1e-9)).item()
        metrics.write(rec)
        bar.set_postfix(reward=f"{rec['rollout/reward']:.3f}", kl=f"{rec.get('train/kl', 0):.4f}", ent=f"{rec['train/entropy']:.2f}")

        # ---- 12. checkpoint (periodic, final, or because Slurm asked us to stop)
        stopping = stop.agreed()
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps or stopping:
            with timed(times, "time/ckpt"):
                st = {"step": step + 1, "config": dataclasses.asdict(cfg), "controller": controller.state_dict(),
                      "mixture": _gather_objects(mixture.state_dict(), world)}
                save_checkpoint(cfg, step + 1, policy, ref, optimizer, tokenizer, st, rank, policy_sd=sd)
        if stopping:
            print0(rank, f"stopping at step {step + 1} (USR2): checkpoint written, requeueing")
            engine.close()
            stop.requeue_and_exit(rank)
    engine.close()
    if metrics.tb is not None:
        metrics.tb.close()
    return rec


def validate(engine, suites: dict, tokenizer, cfg: Config, step: int) -> dict[str, float]:
    """pass@1 per suite (mean of strict correctness over val_n samples), summed over ranks' shards."""
    out, names = {}, sorted(suites)
    sums = torch.zeros(2 * len(names))
    for i, name in enumerate(names):
        tasks = suites[name]
        if not tasks:
            continue
        samples = engine.generate([data.format_prompt(t, tokenizer) for t in tasks], n=cfg.val_n,
                                  temperature=cfg.val_temperature, top_p=cfg.val_top_p,
                                  max_tokens=cfg.max_response_tokens, seed=_seed(cfg.seed, step, 10_000, 0))
        scores = rewards.score_batch([s["text"] for s in samples], [tasks[s["prompt_index"]] for s in samples],
                                     workers=cfg.reward_workers or None)
        sums[2 * i] = sum(float(x == 1.0) for x in scores)
        sums[2 * i + 1] = len(scores)
    sums = all_reduce(sums)
    for i, name in enumerate(names):
        out[f"pass1_{name}"] = (sums[2 * i] / sums[2 * i + 1].clamp(min=1)).item()
    out["blend"] = float(np.mean([out[f"pass1_{n}"] for n in names]))  # the validation blend feeding resets
    return out


def _seed(seed: int, step: int, r: int, rank: int) -> int:
    """Sampling seed as a function of (seed, step, round, rank): a resumed run draws the same samples."""
    return (seed * 1_000_003 + step * 10_007 + r * 101 + rank) % (2**31 - 1)


def _shaping(samples: list[dict], cfg: Config) -> torch.Tensor:
    """Reward shaping (off by default): DAPO's soft overlong penalty and the no-EOS penalty (runs 4-5)."""
    out = torch.zeros(len(samples))
    if cfg.overlong_buffer > 0:
        lens = torch.tensor([len(s["response_ids"]) for s in samples])
        out += grpo.overlong_penalty(lens, cfg.max_response_tokens, cfg.overlong_buffer, cfg.overlong_factor)
    if cfg.no_eos_penalty > 0:
        eos = torch.tensor([s["finish_reason"] == "stop" for s in samples])
        out += grpo.no_eos_penalty(eos, cfg.no_eos_penalty)
    return out


def _warmup_task() -> dict:
    return {"id": "warmup", "domain": "math", "source": "warmup", "prompt": [{"role": "user", "content": "1+1"}], "answer": "2"}


def _gather_objects(obj, world: int) -> list:
    if world == 1:
        return [obj]
    objs = [None] * world
    dist.all_gather_object(objs, obj)
    return objs


def _load_full_state(model, sd: dict[str, torch.Tensor]) -> None:
    """Load full (unsharded) weights into a possibly FSDP-sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=False))


# ----------------------------------------------------------------------------------------------------
# Slurm through submitit: `python train.py --nodes 4 ...` submits SlurmJob(cfg); each task runs train().
def train_and_close(cfg: Config) -> dict:
    """train(), then destroy the process group setup_distributed made, also when train() raises or exits:
    gloo threads still running at interpreter exit can abort the process (SIGABRT)."""
    try:
        return train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class SlurmJob:
    """The callable submitit pickles. Checkpointable: on requeue it runs again and resumes."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self):
        import submitit

        env = submitit.JobEnvironment()
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
                          MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(20000 + int(str(env.job_id).split("_")[0]) % 20000))
        return train_and_close(dataclasses.replace(self.cfg, resume=True))  # a requeued job continues its checkpoints

    def checkpoint(self):  # called by submitit on rank 0 after our own checkpoint is written (StopFlag)
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmJob(self.cfg))


def submit(cfg: Config) -> int:
    import submitit

    folder = cfg.slurm_folder or str(Path(cfg.out) / "submitit")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    tasks = cfg.tasks_per_node or cfg.gpus_per_node or 1
    params = dict(nodes=cfg.nodes, tasks_per_node=tasks, cpus_per_task=cfg.cpus_per_task, timeout_min=cfg.time_min,
                  name="prorl", slurm_signal_delay_s=120)
    if cfg.gpus_per_node:
        params["gpus_per_node"] = cfg.gpus_per_node
    if cfg.partition:
        params["slurm_partition"] = cfg.partition
    if cfg.account:
        params["slurm_account"] = cfg.account
    ex.update_parameters(**params)
    job = ex.submit(SlurmJob(dataclasses.replace(cfg, nodes=0)))
    print(f"submitted job {job.job_id} ({cfg.nodes} nodes x {tasks} tasks); logs in {folder}", flush=True)
    if not cfg.wait:
        return 0
    job.results()  # one result per task; raises if any task failed (its stderr is in the submitit folder)
    print(f"job {job.job_id} finished; metrics in {Path(cfg.out) / 'metrics.jsonl'}", flush=True)
    return 0


def main(argv=None) -> int:
    cfg = parse_args(argv)
    if cfg.nodes > 0:
        return submit(cfg)
    train_and_close(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
