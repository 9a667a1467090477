"""rollout.py on a real vLLM engine (tests/conftest.py: one fp32 engine on a tiny random Qwen2 per
session) against transformers' forward pass of the same model as the reference:

    logp_ref[t] = log softmax(z_t / T)[o_t],  z from the HF model on prompt + response,
    restricted and renormalised to the top-p nucleus when top_p < 1.
"""
import math
import sys
import warnings

import pytest
import torch

import rollout

TOL = 1e-4          # fp32 engine vs fp32 transformers (FIELD_NOTES saw ~5e-7, ~1e-5 after a push)
T = 1.2


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(tiny_model_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = ["What is 2+3?", "Color the graph: vertices 0 1 2, edges (0, 1) (1, 2).", "Hi"]
    return [tok.apply_chat_template([{"role": "user", "content": m}], tokenize=False, add_generation_prompt=True)
            for m in msgs]


@torch.no_grad()
def reference_logprobs(model, prompt_ids, response_ids, temperature, top_p=1.0):
    """(L,) float64 log-probs of response_ids under model at temperature (and nucleus top_p)."""
    ids = torch.tensor([prompt_ids + response_ids])
    z = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].double()   # (L, V), predicts response
    if temperature > 0:
        z = z / temperature
    if top_p < 1:
        probs = z.softmax(-1)
        sorted_p, order = probs.sort(-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p                  # mass before it already >= p
        z = z.scatter(-1, order, z.gather(-1, order).masked_fill(outside, -math.inf))
    return z.log_softmax(-1).gather(-1, torch.tensor(response_ids).unsqueeze(-1)).squeeze(-1)


def max_err(samples, model, temperature, top_p=1.0):
    return max((torch.tensor(s["logprobs"], dtype=torch.float64)
                - reference_logprobs(model, s["prompt_ids"], s["response_ids"], temperature, top_p)).abs().max().item()
               for s in samples)


def perturbed(state_dict, scale=1.0, seed=123):
    """Weights + noise of `scale` x each tensor's std (norm weights, std 0, get +-scale)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * max(v.float().std().item(), 1.0 if v.dim() == 1 else 0.0) * torch.randn(v.shape, generator=g)
            for k, v in state_dict.items()}


def check_finish(samples, eos_ids, max_tokens):
    """"stop" <=> the sample ends with its first EOS; "length" <=> max_tokens tokens and no EOS."""
    for s in samples:
        r = s["response_ids"]
        assert len(r) == len(s["logprobs"]) and 1 <= len(r) <= max_tokens
        eos_at = [k for k, t in enumerate(r) if t in eos_ids]
        if s["finish_reason"] == "stop":
            assert eos_at == [len(r) - 1]
        else:
            assert s["finish_reason"] == "length" and len(r) == max_tokens and not eos_at


# --------------------------------------------------------------------------- log-probs at T
@pytest.mark.slow
def test_engine_logprobs_equal_transformers_logprobs_at_temperature(rollout_engine, hf_model, prompts):
    samples = rollout_engine.generate(prompts[:2], n=4, temperature=T, max_tokens=24, seed=1)
    assert max_err(samples, hf_model, T) < TOL
    # ...and not the raw (T = 1) log-probs: the comparison can tell the two apart.
    assert max_err(samples, hf_model, 1.0) > 100 * TOL


@pytest.mark.slow
def test_top_p_logprobs_are_renormalised_over_the_nucleus(rollout_engine, hf_model, prompts):
    samples = rollout_engine.generate(prompts[:2], n=4, temperature=T, top_p=0.7, max_tokens=24, seed=2)
    assert all(math.isfinite(x) for s in samples for x in s["logprobs"])   # every token inside the nucleus
    assert max_err(samples, hf_model, T, top_p=0.7) < TOL
    assert max_err(samples, hf_model, T, top_p=1.0) > 100 * TOL


# --------------------------------------------------------------------------- weight push
@pytest.mark.slow
def test_update_weights_moves_logprobs_and_greedy_outputs(rollout_engine, hf_model, prompts, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    def greedy():
        return [s["response_ids"] for s in rollout_engine.generate(prompts, n=1, temperature=0, max_tokens=12)]

    original = {k: v.clone() for k, v in hf_model.state_dict().items()}
    new_weights = perturbed(original)
    new_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    new_model.load_state_dict(new_weights)
    before = greedy()
    try:
        seconds = rollout_engine.update_weights(new_weights)
        assert seconds > 0
        after = greedy()
        assert after != before
        samples = rollout_engine.generate(prompts[:2], n=4, temperature=T, max_tokens=24, seed=3)
        assert max_err(samples, new_model, T) < TOL
        assert max_err(samples, hf_model, T) > 100 * TOL
        greedy_samples = rollout_engine.generate(prompts, n=1, temperature=0, max_tokens=12)
        assert max_err(greedy_samples, new_model, 0) < TOL         # greedy log-probs: of softmax(z)
        for s in greedy_samples:                                     # each greedy token is the new argmax
            ids = torch.tensor([s["prompt_ids"] + s["response_ids"]])
            with torch.no_grad():
                z = new_model(input_ids=ids).logits[0, len(s["prompt_ids"]) - 1:-1]
            assert z.argmax(-1).tolist() == s["response_ids"]
    finally:
        rollout_engine.update_weights(original)                     # leave the shared engine as found
    assert greedy() == before


@pytest.mark.slow
def test_update_weights_rejects_wrong_names_and_shapes(rollout_engine, hf_model):
    sd = hf_model.state_dict()
    with pytest.raises(ValueError, match="missing"):
        rollout_engine.update_weights({k: v for k, v in sd.items() if "layers.1." not in k})
    with pytest.raises(ValueError, match="unknown"):
        rollout_engine.update_weights({**sd, "model.extra.weight": torch.zeros(1)})
    name = "model.norm.weight"
    with pytest.raises(ValueError, match="shape mismatch"):
        rollout_engine.update_weights({**sd, name: torch.ones(3)})
    with pytest.raises(TypeError, match="not tensors"):
        rollout_engine.update_weights({**sd, name: [1.0]})


# --------------------------------------------------------------------------- sampling behaviour
@pytest.mark.slow
def test_sixteen_samples_at_high_temperature_are_diverse_and_seeded(rollout_engine, prompts):
    a = rollout_engine.generate(prompts[:1], n=16, temperature=T, max_tokens=16, seed=7)
    responses = [tuple(s["response_ids"]) for s in a]
    assert len(responses) == 16 and len(set(responses)) >= 8
    b = rollout_engine.generate(prompts[:1], n=16, temperature=T, max_tokens=16, seed=7)
    c = rollout_engine.generate(prompts[:1], n=16, temperature=T, max_tokens=16, seed=8)
    assert [s["response_ids"] for s in b] == [list(r) for r in responses]
    assert [s["response_ids"] for s in c] != [list(r) for r in responses]


@pytest.mark.slow
def test_max_tokens_truncation_reports_length(rollout_engine, prompts):
    samples = rollout_engine.generate(prompts[:2], n=16, temperature=T, max_tokens=3, seed=4)
    check_finish(samples, rollout_engine.eos_ids, 3)
    assert sum(s["finish_reason"] == "length" for s in samples) >= 8    # P(no EOS in 3 steps) ~ 0.7


@pytest.mark.slow
def test_eos_ends_a_sample_with_stop(rollout_engine, prompts):
    samples = rollout_engine.generate(prompts[:2], n=16, temperature=T, max_tokens=200, seed=5)
    check_finish(samples, rollout_engine.eos_ids, 200)
    stopped = [s for s in samples if s["finish_reason"] == "stop"]
    assert len(stopped) >= 28                                            # P(EOS) ~ 0.1 per step
    eos_text = rollout_engine.tokenizer.eos_token
    assert all(eos_text not in s["text"] for s in stopped)               # special: not in the text
    tok = rollout_engine.tokenizer
    assert all(s["text"] == tok.decode(s["response_ids"], skip_special_tokens=True) for s in samples)


def check_stop_string(samples, tok, stop):
    """A sample stopped by a stop string ends with the token that completes it."""
    n_stopped = 0
    for s in samples:
        r = s["response_ids"]
        if stop in s["text"]:
            assert s["finish_reason"] == "stop" and stop not in tok.decode(r[:-1], skip_special_tokens=True)
            n_stopped += 1
    return n_stopped


@pytest.mark.slow
def test_stop_strings_end_a_sample_after_the_completing_token(rollout_engine, prompts):
    samples = rollout_engine.generate(prompts[:2], n=8, temperature=T, max_tokens=40, seed=9, stop=["e"])
    assert check_stop_string(samples, rollout_engine.tokenizer, "e") >= 4


@pytest.mark.slow
def test_samples_are_ordered_prompt_by_prompt(rollout_engine, prompts):
    n = 5
    tok = rollout_engine.tokenizer
    samples = rollout_engine.generate(prompts, n=n, temperature=T, max_tokens=8, seed=6)
    assert len(samples) == len(prompts) * n
    for i, p in enumerate(prompts):
        ids = tok(p, add_special_tokens=False).input_ids
        for j in range(n):
            s = samples[i * n + j]
            assert s["prompt_index"] == i and s["prompt_ids"] == ids
            assert s["prompt_ids"].count(tok.bos_token_id) == 1          # the template's BOS, not a second
            assert set(s) == {"prompt_index", "prompt_ids", "response_ids", "logprobs", "finish_reason", "text"}
    # token-id prompts are the same prompts (no special tokens added to strings)
    by_ids = rollout_engine.generate([s["prompt_ids"] for s in samples[::n]], n=n, temperature=T, max_tokens=8, seed=6)
    assert [s["response_ids"] for s in by_ids] == [s["response_ids"] for s in samples]
    assert rollout_engine.generate([], n=n) == []


@pytest.mark.slow
def test_bad_prompts_are_rejected_by_index(rollout_engine, prompts):
    with pytest.raises(ValueError, match=r"prompts\[1\] has .* tokens >= max_model_len"):
        rollout_engine.generate([prompts[0], list(range(5)) * 1000], n=1)
    with pytest.raises(TypeError, match=r"prompts\[0\] is int"):
        rollout_engine.generate([3], n=1)
    with pytest.raises(TypeError, match="list of str"):
        rollout_engine.generate(prompts[0], n=1)
    with pytest.raises(ValueError, match="n >= 1"):
        rollout_engine.generate(prompts, n=0)


@pytest.mark.slow
def test_sleep_and_wake_up_are_noops_on_cpu(rollout_engine, prompts):
    assert rollout_engine.on_cpu and not rollout_engine.sleep_mode
    rollout_engine.sleep()
    assert len(rollout_engine.generate(prompts[:1], n=2, max_tokens=4, seed=0)) == 2
    rollout_engine.wake_up()


CHILD = """
import sys, time
sys.path.insert(0, {root!r})
import rollout
if __name__ == "__main__":
    engine = rollout.Rollout({model!r}, kv_cache_gb=0.25)
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigterm_to_the_trainer_takes_the_engine_processes_down(tiny_model_dir, tmp_path):
    """Slurm ends jobs with SIGTERM; the engine's processes must not survive their parent."""
    import signal
    import subprocess
    from pathlib import Path

    import psutil
    from conftest import require_vllm
    require_vllm()
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(Path(rollout.__file__).parent), model=str(tiny_model_dir)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    children = []
    try:
        assert any(line.strip() == "ready" for line in proc.stdout)      # vLLM logs to stdout too
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children                                                  # engine core + worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive
    finally:
        for p in [proc] + children:                                      # only what this test started
            try:
                psutil.Process(p.pid).kill()
            except psutil.NoSuchProcess:
                pass


# --------------------------------------------------------------------------- transformers backend
@pytest.mark.slow
def test_hf_backend_has_the_same_interface_and_logprobs(tiny_model_dir, hf_model, prompts):
    with pytest.warns(RuntimeWarning, match="transformers generate"):
        engine = rollout.Rollout(tiny_model_dir, backend="hf", seed=0)
    with engine:
        n, max_tokens = 4, 12
        samples = engine.generate(prompts, n=n, temperature=T, top_p=0.8, max_tokens=max_tokens, seed=0)
        assert [s["prompt_index"] for s in samples] == [i for i in range(len(prompts)) for _ in range(n)]
        tok = engine.tokenizer
        assert all(s["prompt_ids"] == tok(prompts[s["prompt_index"]], add_special_tokens=False).input_ids
                   for s in samples)
        check_finish(samples, engine.eos_ids, max_tokens)
        assert max_err(samples, hf_model, T, top_p=0.8) < TOL
        assert all(s["text"] == tok.decode(s["response_ids"], skip_special_tokens=True) for s in samples)
        again = engine.generate(prompts, n=n, temperature=T, top_p=0.8, max_tokens=max_tokens, seed=0)
        assert [s["response_ids"] for s in again] == [s["response_ids"] for s in samples]
        new_weights = perturbed(hf_model.state_dict())
        engine.update_weights(new_weights)
        stopped = engine.generate(prompts[:2], n=8, temperature=T, max_tokens=40, seed=9, stop=["e"])
        assert check_stop_string(stopped, tok, "e") >= 4
        moved = engine.generate(prompts, n=n, temperature=T, max_tokens=max_tokens, seed=0)
        assert max_err(moved, hf_model, T) > 100 * TOL


@pytest.mark.slow
def test_tied_lm_head_may_come_with_or_without_its_alias(tmp_path):
    """model.state_dict() of a tied model lists lm_head.weight; its checkpoint does not."""
    import tiny
    path = tiny.build_tiny_model(tmp_path / "tied", tie_embeddings=True, eos_prob=0.0)
    with pytest.warns(RuntimeWarning):
        engine = rollout.Rollout(path, backend="hf")
    sd = {k: v.clone() for k, v in engine.model.state_dict().items()}
    assert "lm_head.weight" in sd and "lm_head.weight" not in engine.expected
    prompt = [[5, 6, 7]]
    before = engine.generate(prompt, n=1, temperature=0, max_tokens=4)[0]["logprobs"]
    new = perturbed(sd)
    new["lm_head.weight"] = new["model.embed_tokens.weight"]                  # still tied
    engine.update_weights(new)
    moved = engine.generate(prompt, n=1, temperature=0, max_tokens=4)[0]["logprobs"]
    engine.update_weights({k: v for k, v in sd.items() if k != "lm_head.weight"})
    assert engine.generate(prompt, n=1, temperature=0, max_tokens=4)[0]["logprobs"] == before != moved


def test_failed_vllm_import_raises_under_ci_and_falls_back_elsewhere(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)          # `import vllm` now raises ImportError
    monkeypatch.setenv("CI", "true")
    with pytest.raises(RuntimeError, match="CI=true"):
        rollout.Rollout(tiny_model_dir)
    monkeypatch.delenv("CI")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = rollout.Rollout(tiny_model_dir)
    assert engine.backend == "hf"
    assert any("vllm cannot be imported" in str(w.message) for w in caught)


# --------------------------------------------------------------------------- mismatch metric
def test_logprob_mismatch_is_the_masked_mean_absolute_difference():
    engine = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    trainer = torch.tensor([[-1.5, -2.0, -9.0], [-0.5, -1.5, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # |0.5| + 0 + 0 + |1.0| over 4 tokens (the masked 6 and 7 must not count)
    assert rollout.logprob_mismatch(engine, trainer, mask) == pytest.approx(0.375)
    assert math.isnan(rollout.logprob_mismatch(engine, trainer, torch.zeros_like(mask)))
    with pytest.raises(ValueError, match="shapes differ"):
        rollout.logprob_mismatch(engine, trainer[:, :2], mask)
