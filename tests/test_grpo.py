"""Properties of grpo.py, checked against hand-computed values and reference formulas."""

import json
import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import grpo

# ---------------------------------------------------------------------------------- advantages
R_16_4 = torch.tensor([1.0] * 4 + [0.0] * 12)  # one prompt, 16 samples, 4 correct


def test_advantage_16_samples_4_correct_matches_hand_values_with_std():
    # mean 0.25; unbiased var = (4 * 0.75^2 + 12 * 0.25^2) / 15 = 0.2; std 0.4472136 (+1e-6)
    adv = grpo.group_advantages(R_16_4, 16)
    assert adv[:4] == pytest.approx([1.677047] * 4, abs=1e-6)
    assert adv[4:] == pytest.approx([-0.559016] * 12, abs=1e-6)


def test_advantage_16_samples_4_correct_dr_grpo_is_centred_reward():
    adv = grpo.group_advantages(R_16_4, 16, norm_by_std=False)
    assert adv[:4].tolist() == [0.75] * 4
    assert adv[4:].tolist() == [-0.25] * 12


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_identical_rewards_give_zero_advantage(norm_by_std):
    rewards = torch.tensor([1.0] * 4 + [0.0] * 4 + [0.3] * 4)
    assert grpo.group_advantages(rewards, 4, norm_by_std=norm_by_std).tolist() == [0.0] * 12


def test_advantage_groups_are_independent_and_use_unbiased_std():
    rewards = torch.tensor([0.1, 0.9, 0.4, 0.0, 1.0, 1.0])
    adv = grpo.group_advantages(rewards, 3, eps=0.0)
    for g in range(2):
        r = rewards[3 * g:3 * g + 3].tolist()
        mean = sum(r) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)  # divide by G - 1
        assert adv[3 * g:3 * g + 3].tolist() == pytest.approx([(x - mean) / std for x in r], rel=1e-5)


@pytest.mark.parametrize("rewards, group_size", [(torch.zeros(10), 4), (torch.zeros(4), 1), (torch.zeros(2, 4), 4)])
def test_advantage_rejects_bad_shapes(rewards, group_size):
    with pytest.raises(ValueError, match="group_advantages"):
        grpo.group_advantages(rewards, group_size)


# ---------------------------------------------------------------------------------- policy loss
def _one_token_loss(ratio, adv, **kw):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, metrics = grpo.policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), logp.grad.item(), metrics


# (ratio, A, expected per-token loss, clipped branch gives zero gradient?) with eps 0.2 / 0.4, c = 3
CLIP_CASES = [
    (0.5, +1.0, -0.5, False),  # A > 0, ratio below 1 - eps_low: PPO does not clip this side
    (1.0, +1.0, -1.0, False),
    (1.3, +1.0, -1.3, False),  # inside the decoupled upper bound 1.4 (would be clipped at 1.2)
    (2.0, +1.0, -1.4, True),  # clipped at 1 + eps_high
    (0.5, -1.0, 0.8, True),  # clipped at 1 - eps_low
    (1.0, -1.0, 1.0, False),
    (2.0, -1.0, 2.0, False),  # A < 0, ratio above 1 + eps_high: max() keeps the unclipped branch
    (5.0, -1.0, 3.0, True),  # dual clip caps the loss at -A * c
    (5.0, -2.0, 6.0, True),
]


@pytest.mark.parametrize("ratio, adv, expected, clipped", CLIP_CASES)
def test_clip_on_crafted_ratios_and_zero_gradient_exactly_where_clipped(ratio, adv, expected, clipped):
    loss, grad, _ = _one_token_loss(ratio, adv)
    assert loss == pytest.approx(expected, rel=1e-6)
    if clipped:
        assert grad == 0.0
    else:
        assert grad == pytest.approx(-adv * ratio, rel=1e-6)  # d(-A rho)/d logp = -A rho


def test_dual_clip_off_passes_the_unbounded_loss_through():
    loss, grad, metrics = _one_token_loss(5.0, -1.0, clip_ratio_c=None)
    assert loss == pytest.approx(5.0, rel=1e-6)
    assert grad == pytest.approx(5.0, rel=1e-6)
    assert metrics["clipfrac_dual"] == 0.0


def test_clip_fractions_count_valid_tokens_by_side():
    ratios = torch.tensor([[2.0, 1.0, 0.5, 9.0], [0.5, 5.0, 1.0, 2.0], [0.5, 5.0, 0.1, 1.0]])
    adv = torch.tensor([[1.0] * 4, [-1.0] * 4, [-1.0] * 4])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])  # padding would count on every side
    _, m = grpo.policy_loss(ratios.log(), torch.zeros(3, 4), adv, mask)
    assert m["clipfrac_high"] == pytest.approx(1 / 7)  # (2.0, A>0)
    assert m["clipfrac_low"] == pytest.approx(1 / 7)  # (0.5, A<0)
    assert m["clipfrac"] == pytest.approx(2 / 7)
    assert m["clipfrac_dual"] == pytest.approx(1 / 7)  # (5.0, A<0)
    assert m["ppo_kl"] == pytest.approx(-ratios.log()[mask.bool()].mean().item(), rel=1e-6)
    assert all(type(v) is float for v in m.values())


def test_on_policy_gradient_is_the_policy_gradient():
    # at rho = 1 nothing is clipped: loss = -token-mean(A), d loss / d logp = -A m / N
    torch.manual_seed(0)
    logp = torch.randn(3, 5).requires_grad_()
    adv = torch.tensor([1.5, -0.5, 0.2])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    loss, m = grpo.policy_loss(logp, logp.detach(), adv, mask)
    loss.backward()
    n = mask.sum()
    assert loss.item() == pytest.approx(-(adv[:, None] * mask).sum().item() / n.item(), rel=1e-6)
    assert torch.allclose(logp.grad, -adv[:, None] * mask / n)
    assert m["clipfrac"] == 0.0 and m["ppo_kl"] == 0.0


def test_token_level_advantages_are_accepted():
    adv_bt = torch.tensor([[1.0, -1.0]])
    loss, _ = grpo.policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), adv_bt, torch.ones(1, 2))
    assert loss.item() == 0.0


@pytest.mark.parametrize("kw", [dict(eps_low=1.0), dict(eps_high=-0.1), dict(clip_ratio_c=1.0), dict(agg="mean")])
def test_policy_loss_rejects_bad_settings(kw):
    with pytest.raises(ValueError):
        grpo.policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2), **kw)


def test_policy_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="advantages"):
        grpo.policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="old_logprobs"):
        grpo.policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2), torch.ones(2, 3))


# ---------------------------------------------------------------------------------- aggregation
def _loop_aggregate(values, mask, agg):
    """The definitions of docstring section 3, written as plain Python loops."""
    seqs = []
    for i in range(values.shape[0]):
        toks = [values[i, t].item() for t in range(values.shape[1]) if mask[i, t]]
        if toks:
            seqs.append(toks)
    if agg == "token-mean":
        return sum(sum(s) for s in seqs) / sum(len(s) for s in seqs)
    if agg == "seq-mean-token-mean":
        return sum(sum(s) / len(s) for s in seqs) / len(seqs)
    return sum(sum(s) for s in seqs) / len(seqs)


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_each_aggregation_mode_matches_an_explicit_loop(agg):
    torch.manual_seed(1)
    values = torch.randn(4, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    values[mask == 0] = float("nan")  # padding must not leak into the result
    assert grpo.aggregate(values, mask, agg).item() == pytest.approx(_loop_aggregate(values, mask, agg), rel=1e-6)


def test_aggregation_modes_differ_on_ragged_batches():
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    got = [grpo.aggregate(values, mask, agg).item() for agg in grpo.AGG_MODES]
    assert got == pytest.approx([4 / 5, 0.5, 2.0])


def test_aggregate_rejects_empty_mask_and_unknown_mode():
    with pytest.raises(ValueError, match="no valid token"):
        grpo.aggregate(torch.ones(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="agg"):
        grpo.aggregate(torch.ones(2, 3), torch.ones(2, 3), agg="sum")


# ---------------------------------------------------------------------------------- KL
def test_k1_k2_k3_known_values():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.5]]))  # x = ref - logp = -ln2, +ln2, 0
    ln2 = math.log(2)
    assert grpo.kl_penalty(logp, ref, "k1")[0].tolist() == pytest.approx([ln2, -ln2, 0.0], abs=1e-6)
    assert grpo.kl_penalty(logp, ref, "k2")[0].tolist() == pytest.approx([ln2**2 / 2, ln2**2 / 2, 0.0], abs=1e-6)
    assert grpo.kl_penalty(logp, ref, "k3")[0].tolist() == pytest.approx([0.5 + ln2 - 1, 2 - ln2 - 1, 0.0], abs=1e-6)


def test_k1_and_k3_expectations_equal_the_exact_kl():
    # sum_v pi(v) k(v) = KL(pi || pi_ref) for k1 and k3 (unbiased estimators), exactly, as long as
    # no token reaches the k3 cap (x ~ 2.6); beyond it verl's cap biases the estimate low.
    torch.manual_seed(2)
    logp = torch.log_softmax(0.5 * torch.randn(1, 50), -1)
    ref = torch.log_softmax(0.5 * torch.randn(1, 50), -1)
    assert grpo.kl_penalty(logp, ref, "k3").max() < grpo.K3_MAX
    exact = (logp.exp() * (logp - ref)).sum().item()
    for kind in ("k1", "k3"):
        assert (logp.exp() * grpo.kl_penalty(logp, ref, kind)).sum().item() == pytest.approx(exact, rel=1e-5)


def test_k3_is_clamped_for_safety_and_has_the_analytic_gradient():
    logp = torch.tensor([[-50.0, 0.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[0.0, -50.0, -2.0]])  # x = 50 (clamped to 20, capped), -50 (clamped to -20), -1
    k3 = grpo.kl_penalty(logp, ref, "k3")
    assert k3[0].tolist() == pytest.approx([grpo.K3_MAX, grpo.K3_MAX, math.exp(-1) + 1 - 1], rel=1e-6)
    k3.sum().backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, 0.0, 1 - math.exp(-1)], rel=1e-6)  # d k3/d logp = 1 - e^x


def test_kl_penalty_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        grpo.kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# ---------------------------------------------------------------------------------- token log-probs
def test_entropy_of_uniform_distribution_is_log_vocab():
    _, entropy = grpo.token_logprobs(torch.zeros(2, 3, 37), torch.zeros(2, 3, dtype=torch.long))
    assert torch.allclose(entropy, torch.full((2, 3), math.log(37)))


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 10_000])
@pytest.mark.parametrize("temperature", [1.0, 1.2, 0.6])
def test_chunked_logprobs_equal_log_softmax_of_logits_over_temperature(chunk_size, temperature):
    torch.manual_seed(3)
    logits = (3 * torch.randn(3, 5, 11)).requires_grad_()
    targets = torch.randint(0, 11, (3, 5))
    logp, entropy = grpo.token_logprobs(logits, targets, temperature, chunk_size=chunk_size)
    ref_logp_all = torch.log_softmax(logits / temperature, dim=-1)
    ref_logp = ref_logp_all.gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(logp, ref_logp, atol=1e-6)
    assert torch.allclose(entropy, -(ref_logp_all.exp() * ref_logp_all).sum(-1), atol=1e-5)
    assert not entropy.requires_grad  # a monitor only
    (grad,) = torch.autograd.grad(logp.sum(), logits)
    (ref_grad,) = torch.autograd.grad(ref_logp.sum(), logits)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_chunked_logprobs_assemble_the_logit_gradient_once():
    """The chunks' gradients meet in one split() backward (one concatenation), not in one zero-filled
    (N, V) gradient per chunk summed together, which cost 36% of a GPU update step (bench/gpu_fsdp.py)."""
    logits = torch.randn(2, 10, 7, requires_grad=True)
    logp, _ = grpo.token_logprobs(logits, torch.zeros(2, 10, dtype=torch.long), chunk_size=3)  # 7 chunks
    seen, stack, names = set(), [logp.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    assert sum(n.startswith("Split") for n in names) == 1, names
    assert not any(n.startswith("Slice") for n in names), names


def test_bf16_logits_give_fp32_logprobs_and_entropy_can_be_skipped():
    logits = torch.randn(2, 3, 8).to(torch.bfloat16)
    logp, entropy = grpo.token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), with_entropy=False)
    assert logp.dtype == torch.float32 and entropy is None
    expected = torch.log_softmax(logits.float(), -1)[..., 0]
    assert torch.allclose(logp, expected)


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(chunk_size=0)])
def test_token_logprobs_rejects_bad_arguments(kw):
    with pytest.raises(ValueError, match="token_logprobs"):
        grpo.token_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), **kw)


# ---------------------------------------------------------------------------------- dynamic sampling
def test_mixed_groups_keeps_only_groups_with_unequal_rewards():
    rewards = torch.tensor([1, 1, 1, 1,  0, 0, 0, 0,  1, 0, 0, 0,  0.5, 0.5, 0.5, 0.5,  0.2, 0.3, 0.3, 0.3])
    assert grpo.mixed_groups(rewards, 4).tolist() == [False, False, True, False, True]


def _rounds(groups_per_round):
    """sample_round that returns, per round, items "r{round}g{j}" with all-equal or mixed rewards."""
    calls = []

    def sample_round(round_idx):
        calls.append(round_idx)
        pattern = groups_per_round[round_idx]  # string: "m" mixed, "u" uniform
        items = [f"r{round_idx}g{j}" for j in range(len(pattern))]
        rewards = [r for p in pattern for r in ([1.0, 0.0] if p == "m" else [1.0, 1.0])]
        return items, torch.tensor(rewards)

    return sample_round, calls


def test_fill_batch_overfill_truncates_and_reports_the_pass_rate():
    sample_round, calls = _rounds(["mumummmu"])
    kept, stats = grpo.fill_batch(sample_round, num_groups=3, group_size=2, max_rounds=5)
    assert calls == [0]
    assert kept == ["r0g0", "r0g2", "r0g4"]
    assert stats == {"rounds": 1, "generated_groups": 8, "mixed_groups": 5, "dropped_groups": 3,
                     "truncated_groups": 2, "kept_groups": 3, "kept_frac": 5 / 8, "filled": True}


def test_fill_batch_accumulates_over_rounds_until_full():
    sample_round, calls = _rounds(["uum", "muu", "mmu", "mmm"])
    kept, stats = grpo.fill_batch(sample_round, num_groups=3, group_size=2, max_rounds=4)
    assert calls == [0, 1, 2]
    assert kept == ["r0g2", "r1g0", "r2g0"]
    assert (stats["rounds"], stats["generated_groups"], stats["filled"]) == (3, 9, True)
    assert stats["kept_frac"] == pytest.approx(4 / 9)


def test_fill_batch_underfill_warns_and_returns_what_it_has(caplog):
    sample_round, calls = _rounds(["uum", "uuu", "mmm"])
    with caplog.at_level(logging.WARNING, logger="grpo"):
        kept, stats = grpo.fill_batch(sample_round, num_groups=3, group_size=2, max_rounds=2)
    assert calls == [0, 1]
    assert kept == ["r0g2"]
    assert stats["filled"] is False and stats["kept_groups"] == 1
    assert any("1/3 mixed groups" in rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING)


def test_fill_batch_underfill_can_raise():
    sample_round, _ = _rounds(["uuu", "uuu"])
    with pytest.raises(RuntimeError, match="max_rounds=2"):
        grpo.fill_batch(sample_round, num_groups=1, group_size=2, max_rounds=2, on_underfill="error")


def test_fill_batch_rejects_rewards_that_do_not_match_items():
    with pytest.raises(ValueError, match="round 0"):
        grpo.fill_batch(lambda i: (["a", "b"], torch.zeros(3)), num_groups=1, group_size=2, max_rounds=1)


# ---------------------------------------------------------------------------------- reward shaping
def test_overlong_penalty_is_piecewise_linear():
    lengths = torch.tensor([0, 50, 80, 85, 90, 100, 101, 500])  # max 100, buffer 20: ramp on (80, 100]
    assert grpo.overlong_penalty(lengths, 100, 20).tolist() == pytest.approx([0, 0, 0, -0.25, -0.5, -1, -1, -1])
    assert grpo.overlong_penalty(lengths, 100, 20, factor=0.5).tolist() == pytest.approx(
        [0, 0, 0, -0.125, -0.25, -0.5, -0.5, -0.5])


@pytest.mark.parametrize("max_len, buffer_len, factor", [(100, 0, 1.0), (100, 101, 1.0), (100, 20, -1.0)])
def test_overlong_penalty_rejects_bad_arguments(max_len, buffer_len, factor):
    with pytest.raises(ValueError, match="overlong_penalty"):
        grpo.overlong_penalty(torch.tensor([1]), max_len, buffer_len, factor)


def test_no_eos_penalty_hits_only_truncated_responses():
    assert grpo.no_eos_penalty(torch.tensor([True, False, True]), 0.5).tolist() == [0.0, -0.5, 0.0]
    with pytest.raises(ValueError, match="no_eos_penalty"):
        grpo.no_eos_penalty(torch.tensor([True]), -1.0)


# ---------------------------------------------------------------------------------- reference reset
def test_reset_schedule_fires_every_n_steps():
    ctl = grpo.ReferenceResetController(every=3)
    fired = {step: ctl.update(step) for step in range(0, 10)}
    assert [s for s, r in fired.items() if r] == [3, 6, 9]
    assert all(fired[s] == "schedule" for s in (3, 6, 9))
    assert [h["step"] for h in ctl.history] == [3, 6, 9]


def test_reset_patience_fires_after_stalled_evaluations_and_restarts_tracking():
    ctl = grpo.ReferenceResetController(patience=2, min_delta=0.01)
    metrics = {10: 0.10, 20: 0.20, 30: 0.205, 40: 0.15, 50: 0.05, 60: 0.04, 70: 0.30, 80: 0.2, 90: 0.1}
    fired = {}
    for step in range(1, 91):
        reason = ctl.update(step, metrics.get(step))
        if reason:
            fired[step] = reason
    # 30: +0.005 < min_delta is no improvement (bad 1); 40: bad 2 -> reset. Tracking restarts at 50
    # (0.05 is the new best despite being below 0.20); 60 bad 1; 70 improves; 80, 90 bad -> reset.
    assert fired == {40: "patience", 90: "patience"}
    assert ctl.history == [{"step": 40, "reason": "patience", "metric": 0.15},
                           {"step": 90, "reason": "patience", "metric": 0.1}]


def test_reset_patience_in_min_mode_tracks_decreases():
    ctl = grpo.ReferenceResetController(patience=1, mode="min")
    assert [ctl.update(s, m) for s, m in enumerate([1.0, 0.5, 0.6], start=1)] == [None, None, "patience"]


def test_reset_never_fires_twice_on_one_step_and_refuses_to_replay_steps():
    ctl = grpo.ReferenceResetController(every=2)
    assert ctl.update(2) == "schedule"
    assert ctl.update(2) is None
    with pytest.raises(ValueError, match="step 1"):
        ctl.update(1)
    with pytest.raises(ValueError, match="val_metric"):
        ctl.update(3, float("nan"))


def test_reset_controller_state_round_trips_through_json():
    seq = [(s, (0.5 if s % 5 == 0 else None)) for s in range(1, 41)]
    full = grpo.ReferenceResetController(every=17, patience=2, reset_optimizer=False)
    half = grpo.ReferenceResetController(every=17, patience=2, reset_optimizer=False)
    out_full = [full.update(s, m) for s, m in seq]
    out_half = [half.update(s, m) for s, m in seq[:22]]
    state = json.loads(json.dumps(half.state_dict()))
    resumed = grpo.ReferenceResetController(every=17, patience=2, reset_optimizer=False)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == half.state_dict()
    out_half += [resumed.update(s, m) for s, m in seq[22:]]
    assert out_half == out_full
    assert resumed.state_dict() == full.state_dict()
    assert {h["reason"] for h in full.history} == {"schedule", "patience"}


def test_reset_controller_warns_when_resumed_with_a_different_config(caplog):
    state = grpo.ReferenceResetController(every=5).state_dict()
    with caplog.at_level(logging.WARNING, logger="grpo"):
        grpo.ReferenceResetController(every=7).load_state_dict(state)
    assert "differs" in caplog.text


# ---------------------------------------------------------------------------------- properties
finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite, finite, st.booleans()), min_size=1, max_size=24),
       st.sampled_from(grpo.AGG_MODES), st.sampled_from([3.0, None]))
def test_loss_and_gradient_stay_finite_for_extreme_inputs(rows, agg, clip_ratio_c):
    logp = torch.tensor([[r[0] for r in rows]], requires_grad=True)  # (1, T): log-ratios up to +-2e4
    old = torch.tensor([[r[1] for r in rows]])
    adv = torch.tensor([[r[2] for r in rows]])
    mask = torch.tensor([[r[3] for r in rows]])
    mask[0, 0] = True  # at least one valid token
    ref = old.flip(-1)
    loss, metrics = grpo.policy_loss(logp, old, adv, mask, clip_ratio_c=clip_ratio_c, agg=agg)
    total = loss + 1e-3 * grpo.aggregate(grpo.kl_penalty(logp, ref, "k3"), mask)
    total.backward()
    assert math.isfinite(total.item())
    assert torch.isfinite(logp.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


@settings(max_examples=30, deadline=None)
@given(st.lists(finite, min_size=4, max_size=4), st.floats(0.05, 5.0))
def test_token_logprobs_stay_finite_for_extreme_logits(row, temperature):
    logits = torch.tensor(row).reshape(1, 1, 4).repeat(1, 3, 1)
    logp, entropy = grpo.token_logprobs(logits, torch.tensor([[0, 1, 3]]), temperature, chunk_size=2)
    assert torch.isfinite(logp).all() and (logp <= 0).all()
    assert torch.isfinite(entropy).all() and (entropy >= -1e-6).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=32).filter(lambda r: len(r) % 2 == 0))
def test_advantages_are_finite_and_centred_per_group(rewards):
    adv = grpo.group_advantages(torch.tensor(rewards), 2)
    assert torch.isfinite(adv).all()
    assert adv.reshape(-1, 2).sum(1).abs().max().item() < 1e-3
