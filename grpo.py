"""grpo.py: the ProRL objective (GRPO + DAPO tricks + KL + reference resets), on plain tensors.

ProRL (arXiv 2505.24864, §3) trains with GRPO plus four DAPO ideas (decoupled clip, token-mean
loss, dynamic sampling, overlong shaping), KEEPS a k3 KL penalty to a reference policy, and
hard-resets that reference when validation stalls. Everything in that sentence lives here.

Notation. A prompt q gets G sampled responses o_1..o_G (G = group_size; ProRL: 16), with scalar
rewards r_i. o_{i,t} is token t of o_i. pi_theta is the policy being trained, pi_old the policy
that sampled (rollout), pi_ref the reference. m_{i,t} = 1 on response tokens, 0 on padding.

1. Group-relative advantage (GRPO; DeepSeekMath), broadcast to every token of o_i:
       A_i = (r_i - mean_j r_j) / (std_j r_j + eps)          std unbiased (/(G-1)) as verl, eps = 1e-6
   Dr. GRPO (Liu et al. 2025) drops the std:   A_i = r_i - mean_j r_j       (norm_by_std=False)
   A group whose rewards are all equal gets A_i = 0: no signal (hence dynamic sampling, 6.).

2. Clipped surrogate with DAPO's decoupled clip and verl's dual clip. Per token:
       rho_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_old(o_{i,t} | q, o_{i,<t}) = exp(logp - old_logp)
       l_{i,t}   = -min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i)       eps_low 0.2, eps_high 0.4
       if A_i < 0:  l_{i,t} = min(l_{i,t}, -c A_i)                               dual clip, c = 3
   The clipped branch is taken when A > 0 and rho > 1 + eps_high, or A < 0 and rho < 1 - eps_low;
   there the gradient is zero. The dual clip bounds the loss of a negative-advantage token whose
   ratio exploded (rho > c), where plain PPO's max() would pass an unbounded rho * |A| through.

3. Aggregation of l (or of the KL below) over the batch, `agg`:
       token-mean            sum_{i,t} m l / sum_{i,t} m                  DAPO, ProRL (default)
       seq-mean-token-mean   (1/B') sum_i [sum_t m l / sum_t m]             original GRPO
       seq-mean-token-sum    (1/B') sum_i  sum_t m l
   B' counts the sequences with at least one valid token.

4. KL to the reference, per token, with x = log pi_ref - log pi_theta clamped to [-20, 20]:
       k1 = -x      k2 = x^2 / 2      k3 = exp(x) - x - 1   (>= 0, low variance; Schulman 2020)
   k3 is capped at 10, as verl (the trainer ProRL used) does. Training loss (ProRL keeps the KL):
       J = L_pg + beta * token-mean(k3)

5. Log-probs at the sampling temperature tau (ProRL samples at 1.2, and scores with the same tau):
       logp_{i,t} = log softmax(z_{i,t} / tau)[o_{i,t}]        H_{i,t} = -sum_v p_v log p_v
   computed in chunks of positions so a float32 [B, T, V] log-softmax is never held whole more
   than once (the copy autograd keeps for backward). Entropy is a monitor only (no bonus, §3).

6. Dynamic sampling (DAPO; ProRL §3): keep a group iff its accuracy is strictly between 0 and 1,
   i.e. min_j r_j != max_j r_j; generate more rounds until the batch holds enough kept groups.

7. Reward shaping, off by default. DAPO's soft overlong penalty on response length L, with
   L_max the generation limit, L_buf the buffer and f the factor:
       R_len(L) = 0                                    if L <= L_max - L_buf
                = ((L_max - L_buf) - L) / L_buf * f    if L_max - L_buf < L <= L_max   (0 .. -f)
                = -f                                   if L > L_max
   and a no-EOS penalty (ProRL runs 4-5, value not reported): R_eos = -p if o_i never emits EOS.
   Shaped reward r_i + R_len + R_eos. Filter (6.) on the task reward before shaping: DAPO filters on
   accuracy, and a length term would make almost every all-wrong group look "mixed".

8. Reference reset (ProRL §3.2): set pi_ref <- pi_theta (and, separately, re-init the optimizer)
   on a fixed schedule or when the validation metric has not improved for `patience` evaluations.

Where we depart from the ProRL paper (it does not state these; we follow verl, its trainer):
unbiased std, eps 1e-6, dual clip c = 3, log-ratio clamp 20, k3 cap 10. The chunked log-prob is an
implementation choice. Run the checks: `.venv/bin/pytest tests/test_grpo.py -q`; `python grpo.py`
prints the worked 16-sample example.
"""

import logging
import math

import torch

log = logging.getLogger(__name__)

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
KL_KINDS = ("k1", "k2", "k3")
# |log ratio| bound before exp() (verl clamps at 20 too): exp(20) ~ 4.9e8 is finite in fp32/bf16,
# and a token 20 nats away from the other policy is clipped / saturated either way.
LOG_RATIO_CLAMP = 20.0
# verl caps k3 at 10 (reached at log-ratio ~2.6); kept so our KL term matches the trainer ProRL used.
K3_MAX = 10.0
# Token positions per log-softmax chunk: 512 x 152k vocab (Qwen) x 4 B = 0.3 GB transient per chunk.
LOGP_CHUNK_SIZE = 512


# ---------------------------------------------------------------------------------- advantages
def group_advantages(rewards, group_size, norm_by_std=True, eps=1e-6):
    """A_i = (r_i - mean_g) / (std_g + eps) per group of `group_size` (Dr. GRPO: no std). -> (B,)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    r = _groups(rewards, group_size, "group_advantages")  # (num_groups, G)
    adv = r - r.mean(dim=1, keepdim=True)  # (num_groups, G)
    if norm_by_std:
        # unbiased std (/(G-1)) as verl; identical rewards give 0 / (0 + eps) = 0
        adv = adv / (r.std(dim=1, unbiased=True, keepdim=True) + eps)
    return adv.reshape(-1)  # (B,)


def _groups(rewards, group_size, where):
    if rewards.dim() != 1:
        raise ValueError(f"{where}: rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"{where}: group_size must be >= 2 (GRPO compares samples), got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{where}: {rewards.numel()} rewards is not a multiple of group_size={group_size}")
    return rewards.reshape(-1, group_size)


# ---------------------------------------------------------------------------------- aggregation
def aggregate(values, mask, agg="token-mean"):
    """Reduce per-token `values` (B, T) over the valid tokens of `mask` (B, T) to a scalar (see 3.)."""
    if agg not in AGG_MODES:
        raise ValueError(f"aggregate: agg must be one of {AGG_MODES}, got {agg!r}")
    if values.shape != mask.shape or values.dim() != 2:
        raise ValueError(f"aggregate: values {tuple(values.shape)} and mask {tuple(mask.shape)} must both be (B, T)")
    valid = mask.to(torch.bool)  # (B, T) a 0/1 mask; nonzero counts as valid
    tokens_per_seq = valid.sum(dim=1).to(values.dtype)  # (B,)
    if not bool((tokens_per_seq > 0).any()):
        raise ValueError("aggregate: mask has no valid token; nothing to average")
    masked = torch.where(valid, values, torch.zeros_like(values))  # (B, T) padding (even NaN) contributes 0
    if agg == "token-mean":
        return masked.sum() / tokens_per_seq.sum()
    seq_sum = masked.sum(dim=1)  # (B,)
    has_tokens = tokens_per_seq > 0  # (B,) empty sequences would divide by 0: excluded from B'
    if agg == "seq-mean-token-mean":
        seq_sum = seq_sum[has_tokens] / tokens_per_seq[has_tokens]
    else:
        seq_sum = seq_sum[has_tokens]
    return seq_sum.mean()


# ---------------------------------------------------------------------------------- policy loss
def policy_loss(logprobs, old_logprobs, advantages, mask, eps_low=0.2, eps_high=0.4, clip_ratio_c=3.0,
                agg="token-mean"):
    """PPO clipped surrogate with decoupled clip and dual clip (see 2.). -> (loss, metrics of floats)."""
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape or logprobs.dim() != 2:
        raise ValueError(f"policy_loss: logprobs {tuple(logprobs.shape)}, old_logprobs "
                         f"{tuple(old_logprobs.shape)} and mask {tuple(mask.shape)} must all be (B, T)")
    if advantages.dim() == 1 and advantages.shape[0] == logprobs.shape[0]:
        advantages = advantages[:, None]  # (B, 1): one advantage per response, broadcast over tokens
    elif advantages.shape != logprobs.shape:
        raise ValueError(f"policy_loss: advantages must be (B,) or (B, T), got {tuple(advantages.shape)}")
    if not (0.0 <= eps_low < 1.0 and eps_high >= 0.0):
        raise ValueError(f"policy_loss: need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}")
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"policy_loss: clip_ratio_c must be > 1 (or None for off), got {clip_ratio_c}")
    adv = advantages.to(logprobs.dtype).detach()  # (B, T) or (B, 1)
    log_ratio = (logprobs - old_logprobs.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    loss_unclipped = -adv * ratio  # (B, T)
    loss_clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # (B, T)
    pg_loss = torch.maximum(loss_unclipped, loss_clipped)  # (B, T) = -min(rho A, clip(rho) A)
    if clip_ratio_c is not None:
        loss_dual = -adv * clip_ratio_c  # (B, T) or (B, 1): the cap, > 0 only where A < 0
        pg_loss = torch.where(adv < 0, torch.minimum(pg_loss, loss_dual), pg_loss)  # (B, T)
    loss = aggregate(pg_loss, mask, agg)

    with torch.no_grad():  # monitors: fractions of valid tokens, over the whole batch
        valid = mask.to(torch.bool)
        n = valid.sum().clamp(min=1)
        clip_high = (adv > 0) & (ratio > 1.0 + eps_high) & valid  # clipped branch taken, A > 0
        clip_low = (adv < 0) & (ratio < 1.0 - eps_low) & valid  # clipped branch taken, A < 0
        no_dual = clip_ratio_c is None
        dual = torch.zeros_like(valid) if no_dual else (adv < 0) & (ratio > clip_ratio_c) & valid  # capped
        metrics = {
            "pg_loss": float(loss.detach()),
            "clipfrac": float((clip_high | clip_low).sum() / n),
            "clipfrac_high": float(clip_high.sum() / n),
            "clipfrac_low": float(clip_low.sum() / n),
            "clipfrac_dual": float(dual.sum() / n),
            "ppo_kl": float(aggregate(-log_ratio, mask, "token-mean")),  # mean of old - new log-prob
            "ratio_max": float(ratio[valid].max()) if bool(valid.any()) else 1.0,
        }
    return loss, metrics


# ---------------------------------------------------------------------------------- KL penalty
def kl_penalty(logprobs, ref_logprobs, kind="k3"):
    """Per-token KL(pi_theta || pi_ref) estimate (B, T): k1, k2 or k3 (see 4.). Differentiable in logprobs."""
    if kind not in KL_KINDS:
        raise ValueError(f"kl_penalty: kind must be one of {KL_KINDS}, got {kind!r}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"kl_penalty: shapes differ: {tuple(logprobs.shape)} vs {tuple(ref_logprobs.shape)}")
    x = (ref_logprobs.detach() - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B, T) log pi_ref/pi
    if kind == "k1":
        return -x  # unbiased, but negative on individual tokens: high variance
    if kind == "k2":
        return 0.5 * x**2
    return (torch.exp(x) - x - 1.0).clamp(max=K3_MAX)  # (B, T) >= 0


# ---------------------------------------------------------------------------------- token log-probs
def token_logprobs(logits, targets, temperature=1.0, chunk_size=LOGP_CHUNK_SIZE, with_entropy=True):
    """log softmax(logits / T)[targets] -> (logp (B, T), entropy (B, T) or None), chunked (see 5.).

    logits (B, T, V) any float dtype, already aligned so logits[:, t] predicts targets[:, t].
    logp carries gradient; entropy is computed under no_grad (a monitor, never a loss term).
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"token_logprobs: need logits (B, T, V) and targets (B, T), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if not temperature > 0:
        raise ValueError(f"token_logprobs: temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"token_logprobs: chunk_size must be >= 1, got {chunk_size}")
    B, T, V = logits.shape
    flat_logits = logits.reshape(B * T, V)  # (N, V), a view
    flat_targets = targets.reshape(B * T, 1).long()  # (N, 1)
    logp_chunks, entropy_chunks = [], []
    # split(), not slicing in a loop: split's backward concatenates the chunks' gradients once, whereas
    # each slice's backward would write into its own zero-filled (N, V) gradient, all of them then summed
    # (chunks x N x V work: 36% of an update step's GPU time at 8 x 4096 tokens and a 152k vocabulary).
    for logit_chunk, target_chunk in zip(flat_logits.split(chunk_size), flat_targets.split(chunk_size)):
        # fp32 for the softmax: bf16 log-probs are too coarse for ratios near 1. Only this chunk's
        # float copy and its log-softmax exist at once; autograd keeps the log-softmax for backward.
        z = logit_chunk.float() / temperature  # (n, V)
        logp_all = torch.log_softmax(z, dim=-1)  # (n, V)
        logp_chunks.append(logp_all.gather(-1, target_chunk).squeeze(-1))  # (n,)
        if with_entropy:
            with torch.no_grad():
                entropy_chunks.append(-(logp_all.exp() * logp_all).sum(-1))  # (n,)
    logp = torch.cat(logp_chunks).reshape(B, T)  # (B, T)
    entropy = torch.cat(entropy_chunks).reshape(B, T) if with_entropy else None  # (B, T)
    return logp, entropy


# ---------------------------------------------------------------------------------- dynamic sampling
def mixed_groups(rewards, group_size):
    """True for each group whose rewards are not all equal (accuracy strictly in (0, 1)). -> (num_groups,)."""
    r = _groups(torch.as_tensor(rewards, dtype=torch.float32), group_size, "mixed_groups")  # (num_groups, G)
    return r.max(dim=1).values != r.min(dim=1).values  # (num_groups,) bool


def fill_batch(sample_round, num_groups, group_size, max_rounds, on_underfill="warn"):
    """Generate rounds until `num_groups` mixed groups are kept (see 6.). -> (kept_items, stats).

    sample_round(round_idx) -> (items, rewards): one opaque item per group and rewards
    (len(items) * group_size,), ordered group by group. Extra kept groups of the last round are
    truncated (counted in stats). stats["kept_frac"] is the filter's pass rate over every generated
    group (mixed / generated), the number DAPO and ProRL watch fall as prompts become solved.
    If max_rounds pass without filling: on_underfill="warn" logs and returns the partial batch,
    "error" raises RuntimeError.
    """
    if on_underfill not in ("warn", "error"):
        raise ValueError(f"fill_batch: on_underfill must be 'warn' or 'error', got {on_underfill!r}")
    if num_groups < 1 or max_rounds < 1:
        raise ValueError(f"fill_batch: num_groups and max_rounds must be >= 1, got {num_groups}, {max_rounds}")
    kept, generated, mixed, rounds = [], 0, 0, 0
    while len(kept) < num_groups and rounds < max_rounds:
        items, rewards = sample_round(rounds)
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
        if rewards.shape != (len(items) * group_size,):
            raise ValueError(f"fill_batch: round {rounds} returned {len(items)} items but rewards of shape "
                             f"{tuple(rewards.shape)}; expected ({len(items) * group_size},)")
        keep = mixed_groups(rewards, group_size) if items else torch.zeros(0, dtype=torch.bool)
        kept.extend(item for item, k in zip(items, keep.tolist()) if k)
        n_mixed = int(keep.sum())
        log.info("fill_batch round %d: %d/%d groups mixed, %d dropped (all rewards equal); %d/%d kept so far",
                 rounds, n_mixed, len(items), len(items) - n_mixed, len(kept), num_groups)
        generated, mixed, rounds = generated + len(items), mixed + n_mixed, rounds + 1
    filled = len(kept) >= num_groups
    stats = {
        "rounds": rounds,
        "generated_groups": generated,
        "mixed_groups": mixed,
        "dropped_groups": generated - mixed,
        "truncated_groups": max(len(kept) - num_groups, 0),
        "kept_groups": min(len(kept), num_groups),
        "kept_frac": mixed / generated if generated else 0.0,
        "filled": filled,
    }
    if not filled:
        msg = (f"fill_batch: only {len(kept)}/{num_groups} mixed groups after max_rounds={max_rounds} "
               f"({mixed}/{generated} generated groups had unequal rewards)")
        if on_underfill == "error":
            raise RuntimeError(msg)
        log.warning(msg + "; training on the partial batch")
    return kept[:num_groups], stats


# ---------------------------------------------------------------------------------- reward shaping
def overlong_penalty(lengths, max_len, buffer_len, factor=1.0):
    """DAPO soft overlong penalty R_len(L) in [-factor, 0] (see 7.). lengths: response tokens. -> float."""
    if not (0 < buffer_len <= max_len) or factor < 0:
        raise ValueError(f"overlong_penalty: need 0 < buffer_len <= max_len and factor >= 0, got "
                         f"buffer_len={buffer_len}, max_len={max_len}, factor={factor}")
    lengths = torch.as_tensor(lengths, dtype=torch.float32)
    start = max_len - buffer_len  # penalty starts past this length
    ramp = (start - lengths) / buffer_len * factor  # 0 at start, -factor at max_len
    return torch.where(lengths <= start, torch.zeros_like(lengths),
                       torch.where(lengths <= max_len, ramp, torch.full_like(lengths, -factor)))


def no_eos_penalty(ended_with_eos, penalty):
    """-penalty for responses that never emitted EOS (truncated), 0 otherwise (see 7.). -> float."""
    if penalty < 0:
        raise ValueError(f"no_eos_penalty: penalty is a magnitude and must be >= 0, got {penalty}")
    ended = torch.as_tensor(ended_with_eos, dtype=torch.bool)
    return torch.where(ended, 0.0, -float(penalty))


# ---------------------------------------------------------------------------------- reference reset
class ReferenceResetController:
    """Decides when to hard-reset pi_ref <- pi_theta (ProRL §3.2; see 8.). State is checkpointable.

    every:     reset when step % every == 0 (None: no schedule).
    patience:  reset after `patience` evaluations without improving the best metric by > min_delta
               (None: off). Evaluations are the update() calls that pass a val_metric.
    mode:      "max" (accuracy) or "min" (loss).
    reset_optimizer: whether the caller should also re-init the optimizer (paper: yes; ProRL v2: no).
    After any reset, patience tracking restarts: the next evaluation sets a fresh best.
    """

    def __init__(self, every=None, patience=None, min_delta=0.0, mode="max", reset_optimizer=True):
        if every is not None and every < 1:
            raise ValueError(f"ReferenceResetController: every must be >= 1 or None, got {every}")
        if patience is not None and patience < 1:
            raise ValueError(f"ReferenceResetController: patience must be >= 1 or None, got {patience}")
        if mode not in ("max", "min") or min_delta < 0:
            raise ValueError(f"ReferenceResetController: need mode 'max'|'min' and min_delta >= 0, "
                             f"got {mode!r}, {min_delta}")
        self.every, self.patience, self.min_delta, self.mode = every, patience, min_delta, mode
        self.reset_optimizer = reset_optimizer
        self.best = None  # best metric since the last reset
        self.bad_evals = 0  # evaluations since `best` last improved
        self.last_step = None
        self.history = []  # one {"step", "reason", "metric"} per reset

    def update(self, step, val_metric=None):
        """Call once per training step (after the optimizer step). -> "schedule" | "patience" | None."""
        if self.last_step is not None and step < self.last_step:
            raise ValueError(f"ReferenceResetController.update: step {step} is before the last step "
                             f"{self.last_step} (a resumed run must continue, not replay)")
        already_reset = bool(self.history) and self.history[-1]["step"] == step  # never twice per step
        self.last_step = step
        if val_metric is not None:
            val_metric = float(val_metric)
            if not math.isfinite(val_metric):
                raise ValueError(f"ReferenceResetController.update: val_metric is {val_metric} at step {step}")
            sign = 1.0 if self.mode == "max" else -1.0
            if self.best is None or sign * (val_metric - self.best) > self.min_delta:
                self.best, self.bad_evals = val_metric, 0
            else:
                self.bad_evals += 1
        reason = None
        if self.every is not None and step > 0 and step % self.every == 0:
            reason = "schedule"
        elif self.patience is not None and self.bad_evals >= self.patience:
            reason = "patience"
        if reason is None or already_reset:
            return None
        self.history.append({"step": step, "reason": reason, "metric": val_metric})
        self.best, self.bad_evals = None, 0
        log.info("reference reset at step %d (%s, metric=%s, reset_optimizer=%s)",
                 step, reason, val_metric, self.reset_optimizer)
        return reason

    def state_dict(self):
        return {"config": {"every": self.every, "patience": self.patience, "min_delta": self.min_delta,
                           "mode": self.mode, "reset_optimizer": self.reset_optimizer},
                "best": self.best, "bad_evals": self.bad_evals, "last_step": self.last_step,
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state):
        """Restore counters and history; the config comes from the constructor (warned if it differs)."""
        saved = state["config"]
        current = self.state_dict()["config"]
        if saved != current:
            log.warning("ReferenceResetController: checkpoint config %s differs from current %s; "
                        "using the current config with the checkpoint's history", saved, current)
        self.best, self.bad_evals, self.last_step = state["best"], state["bad_evals"], state["last_step"]
        self.history = [dict(h) for h in state["history"]]


if __name__ == "__main__":
    # The worked example of the tests: one prompt, 16 samples, 4 correct.
    r = torch.tensor([1.0] * 4 + [0.0] * 12)
    print("GRPO    A(correct), A(wrong):", group_advantages(r, 16)[[0, -1]].tolist())  # +1.677047, -0.559016
    print("Dr.GRPO A(correct), A(wrong):", group_advantages(r, 16, norm_by_std=False)[[0, -1]].tolist())
