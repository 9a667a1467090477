"""train.py: config guard rails, batch layout, FSDP equivalence, end-to-end steps, exact resume after kill -9.

The end-to-end runs use the session's tiny random Qwen2 (tests/tiny.py) with instruction-following
tasks whose constraints ("no commas", "fewer than 6 words") a random model meets about half the time,
so groups have mixed rewards and the policy really moves. Real vLLM, real verifiers, real FSDP (gloo).
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import grpo
import train

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
IF_TASK = {"id": "if/0", "domain": "ifeval", "source": "test",
           "prompt": [{"role": "user", "content": "Write a short line without commas."}],
           "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
           "kwargs": [{}, {"num_words": 6, "relation": "less than"}]}
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train_tasks") / "tasks.jsonl"
    rows = [dict(IF_TASK, id=f"if/{i}") for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small_args(model_dir, task_file, out) -> list[str]:
    return ["--model", str(model_dir), "--train-data", f"tasks:{task_file}", "--val-data", f"tasks:{task_file}",
            "--prompts-per-step", "4", "--mini-batch-prompts", "2", "--n", "8", "--max-response-tokens", "16",
            "--val-every", "2", "--val-n", "4", "--ckpt-every", "1", "--keep-last", "10", "--reset-every", "3",
            "--kl-coef", "0.05", "--reward-workers", "1", "--out", str(out)]


def run_train(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([PY, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, **kw)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(rec: dict) -> dict:
    """A metrics record without wall-clock entries."""
    return {k: v for k, v in rec.items() if not k.startswith(("time/", "perf/"))}


# ---------------------------------------------------------------------------------------------- config
def test_every_config_field_has_a_flag_with_help(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    import dataclasses

    for f in dataclasses.fields(train.Config):
        assert "--" + f.name.replace("_", "-") in out, f.name
        assert f.metadata["help"], f.name


def test_no_arguments_gives_the_embedded_default_and_prorl_preset_the_paper():
    mini = train.parse_args([])
    assert (mini.preset, mini.model, mini.n, mini.temperature, mini.eps_low, mini.eps_high) == ("mini", "", 16, 1.2, 0.2, 0.4)
    p = train.parse_args(["--preset", "prorl"])
    assert (p.n, p.temperature, p.eps_low, p.eps_high, p.lr, p.prompts_per_step, p.mini_batch_prompts,
            p.max_response_tokens) == (16, 1.2, 0.2, 0.4, 2e-6, 256, 64, 8192)
    assert p.prompts_per_step // p.mini_batch_prompts == 4  # 4 gradient updates per rollout step (App. E)
    assert "DeepSeek-R1-Distill-Qwen-1.5B" in p.model
    assert train.parse_args(["--no-wait"]).wait is False and train.parse_args([]).wait is True
    # an explicit flag beats the preset
    assert train.parse_args(["--preset", "prorl", "--max-response-tokens", "16384"]).max_response_tokens == 16384


@pytest.mark.parametrize("argv, words", [
    (["--prompts-per-step", "10", "--mini-batch-prompts", "4"], "multiple"),
    (["--loss-agg", "seq-sum"], "loss-agg"),
    (["--kl-kind", "k4"], "kl-kind"),
    (["--n", "1"], "--n"),
    (["--steps", "0"], "--steps"),
    (["--preset", "nope"], "preset"),
    (["--gen-batch-factor", "0.5"], "--gen-batch-factor"),  # a round must generate at least one batch
])
def test_bad_configuration_is_refused_with_a_clear_message(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv)
    assert e.value.code == 2
    assert words in capsys.readouterr().err


# -------------------------------------------------------------------------------------- CPU allocator
_REALLOC_FAULTS = """
import resource, sys
sys.path.insert(0, sys.argv[2])
import torch, train
if sys.argv[1] == "keep":
    assert train.keep_freed_memory(), "mallopt refused"
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):  # 64 MiB: above glibc's largest mmap threshold (32 MiB); the heap settles in two rounds
    x = torch.ones(16 * 2**20); del x
f0 = faults()
for _ in range(5):  # what every micro-batch does with its activations
    x = torch.ones(16 * 2**20); del x
print(faults() - f0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_reuses_large_blocks_without_new_page_faults():
    """Default glibc unmaps a freed 64 MiB tensor and page-faults a new one in (16,384 faults of 4 KiB,
    fewer with transparent huge pages); after keep_freed_memory() the block is reused from the heap."""
    faults = {mode: int(subprocess.run([sys.executable, "-c", _REALLOC_FAULTS, mode, str(ROOT)], check=True,
                                       capture_output=True, text=True).stdout.split()[-1])
              for mode in ("default", "keep")}
    assert faults["keep"] < 200, faults
    assert faults["default"] > 10 * max(faults["keep"], 20), faults


# ---------------------------------------------------------------------------------------------- batch
def test_make_batch_marks_exactly_the_response_targets():
    samples = [{"prompt_ids": [5, 6, 7], "response_ids": [8, 9], "logprobs": [-0.5, -0.25]},
               {"prompt_ids": [5], "response_ids": [4, 3, 2], "logprobs": [-1.0, -2.0, -3.0]}]
    b = train.make_batch(samples, pad_id=0, device="cpu")
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 4, 3, 2, 0]]
    assert b["attn"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # target position t predicts input_ids[t + 1]: responses start at t = P - 1
    assert b["mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    assert b["engine_logp"].tolist() == [[0, 0, -0.5, -0.25], [-1.0, -2.0, -3.0, 0]]


# ---------------------------------------------------------------------------------------------- update
def naive_update(policy, ref, optimizer, batch, adv, cfg):
    """The textbook order: every old and reference log-prob first, then one AdamW step per mini-batch."""
    ids, attn, mask, T = batch["input_ids"], batch["attn"], batch["mask"], cfg.temperature

    def logp_of(model):
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        return torch.log_softmax(logits.float() / T, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)

    with torch.no_grad():
        old, ref_lp = logp_of(policy), logp_of(ref)
    for mb in torch.arange(ids.shape[0]).chunk(cfg.prompts_per_step // cfg.mini_batch_prompts):
        optimizer.zero_grad()
        logp = logp_of(policy)[mb]
        ratio = torch.exp(logp - old[mb])
        a = adv[mb, None]
        pg = -torch.minimum(ratio * a, ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high) * a)
        pg = torch.where(a < 0, torch.minimum(pg, -cfg.clip_ratio_c * a), pg)  # dual clip
        d = ref_lp[mb] - logp
        kl = (torch.exp(d) - d - 1).clamp(max=10.0)  # k3
        m = mask[mb]
        ((pg * m).sum() / m.sum() + cfg.kl_coef * (kl * m).sum() / m.sum()).backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        optimizer.step()


@pytest.mark.parametrize("updates", [1, 2])
def test_policy_update_equals_the_textbook_two_pass_update(tiny_model_dir, updates):
    """policy_update reuses the first mini-batch's forward as its old log-probs; the result must be the
    textbook update's: same weights after `updates` optimizer steps (two: the second mini-batch really clips)."""
    import importlib

    fsdp_worker = importlib.import_module("fsdp_worker")
    from transformers import AutoModelForCausalLM

    cfg = train.Config(prompts_per_step=8, mini_batch_prompts=8 // updates, n=4, micro_batch_seqs=3, kl_coef=0.1,
                       temperature=1.2)
    models = []
    for _ in range(2):
        policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        with torch.no_grad():
            for p in ref.parameters():
                p.mul_(0.9)
        # plain SGD: AdamW's first step is ~lr * sign(g), which float noise flips for gradients near 0
        models.append((policy, ref, torch.optim.SGD(policy.parameters(), lr=1.0)))
    groups = fsdp_worker.synthetic_groups(models[0][0].config.vocab_size)
    batch = train.make_batch([s for grp, _ in groups for s in grp], pad_id=0, device="cpu")
    adv = torch.cat([grpo.group_advantages(r, 4) for _, r in groups])
    out = train.policy_update(*models[0], batch, adv, cfg, world=1)
    naive_update(*models[1], batch, adv, cfg)
    assert out["train/updates"] == updates
    if updates == 2:
        assert out["train/clipfrac"] > 0  # the second mini-batch's ratios left the trust region
    a, b = models[0][0].state_dict(), models[1][0].state_dict()
    first = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    moved = max((a[k] - first[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-2 and diff < 1e-6  # measured: moved ~0.08, diff ~1e-7 (float32 rounding)


def test_bf16_mixed_precision_update_keeps_fp32_weights_and_follows_the_fp32_update(tiny_model_dir):
    """--dtype bfloat16 on one rank (CPU here): bf16 autocast forward/backward, fp32 master weights; the
    update is the fp32 update up to bf16 rounding, and differs from it (autocast really ran)."""
    import importlib

    fsdp_worker = importlib.import_module("fsdp_worker")
    from transformers import AutoModelForCausalLM

    first = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    deltas = {}
    for dtype in ("float32", "bfloat16"):
        cfg = train.Config(prompts_per_step=8, mini_batch_prompts=8, n=4, micro_batch_seqs=3, kl_coef=0.1,
                           temperature=1.2, dtype=dtype)
        policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        groups = fsdp_worker.synthetic_groups(policy.config.vocab_size)
        batch = train.make_batch([s for grp, _ in groups for s in grp], pad_id=0, device="cpu")
        adv = torch.cat([grpo.group_advantages(r, 4) for _, r in groups])
        out = train.policy_update(policy, ref, torch.optim.SGD(policy.parameters(), lr=1.0), batch, adv, cfg, world=1)
        assert all(p.dtype == torch.float32 for p in policy.parameters())
        assert math.isfinite(out["train/pg_loss"]) and math.isfinite(out["train/entropy"])
        deltas[dtype] = torch.cat([(v - first[k]).flatten() for k, v in policy.state_dict().items()])
    d32, d16 = deltas["float32"], deltas["bfloat16"]
    rel = ((d16 - d32).norm() / d32.norm()).item()
    assert 0 < rel < 0.1, rel  # bf16 matmuls change the update a little (measured ~0.01), never to another one
    cpu = torch.device("cpu")

    def active(dtype, world):  # (enabled, dtype) inside the context, through torch's public autocast API
        with train.autocast(train.Config(dtype=dtype), cpu, world):
            return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    assert active("bfloat16", 1) == (True, torch.bfloat16)
    assert not active("float32", 1)[0]
    assert active("bfloat16", 2) == (True, torch.bfloat16)  # FSDP on CPU: autocast too


# ---------------------------------------------------------------------------------------------- FSDP
@pytest.mark.slow
def test_two_fsdp_ranks_on_gloo_match_one_process(tiny_model_dir, tmp_path):
    """Same global batch: loss metrics equal to 1e-5 (relative), weights after 2 AdamW steps to 2e-4."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    worker = str(ROOT / "tests" / "fsdp_worker.py")
    subprocess.run([PY, worker, str(tiny_model_dir), str(tmp_path / "one.pt")], env=env, check=True, timeout=600,
                   capture_output=True)
    torchrun = str(Path(PY).parent / "torchrun")
    subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(29_500 + os.getpid() % 1000), worker,
                    str(tiny_model_dir), str(tmp_path / "two.pt")], env=env, check=True, timeout=600, capture_output=True)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for k, v in one["metrics"].items():
        assert two["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert one["metrics"]["train/clipfrac"] > 0  # the update really clipped: the test covers that path
    from transformers import AutoModelForCausalLM

    init = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    moved = max((one["weights"][k] - init[k]).abs().max().item() for k in one["weights"])
    assert moved > 5e-3  # the update moved the weights 25x more than the tolerance below
    diff = max((one["weights"][k] - two["weights"][k]).abs().max().item() for k in one["weights"])
    assert diff < 2e-4
    for run in (one, two):  # a reference reset copies the policy exactly, also under FSDP
        assert all(torch.equal(run["ref_after_reset"][k], run["weights"][k]) for k in run["weights"])


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_steps_end_to_end_log_checkpoint_validate_and_reset(tiny_model_dir, task_file, tmp_path):
    out = tmp_path / "run"
    r = run_train([*small_args(tiny_model_dir, task_file, out), "--steps", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(out)
    assert [x["step"] for x in recs] == [1, 2, 3]
    for key in ("rollout/reward", "rollout/accuracy", "train/entropy", "train/kl", "train/clipfrac", "dyn/kept_frac",
                "dyn/rounds", "rollout/logprob_mismatch", "train/grad_norm", "time/rollout", "time/logprob", "time/update",
                "time/push", "rollout/truncated", "rollout/response_len", "perf/gen_tokens_per_s", "lr"):
        assert key in recs[0], key
    assert 0 < recs[0]["rollout/reward"] < 1  # mixed rewards: the groups carry signal
    assert recs[0]["rollout/logprob_mismatch"] < 1e-3  # engine and trainer agree on log p at T
    assert "val/blend" in recs[1] and "val/blend" not in recs[0]
    assert [x["reset/happened"] for x in recs] == [0, 0, 1] and recs[2]["reset/reason"] == "schedule"
    ckpt = out / "checkpoints" / "step_000003"
    assert (ckpt / "COMPLETE").exists() and not list((out / "checkpoints").glob("*.tmp"))
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 3 and [h["step"] for h in state["controller"]["history"]] == [3]
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(ckpt / "policy")  # Hugging Face format
    ref = load_file(ckpt / "ref.safetensors")
    # the reset at step 3 happened after the updates: the saved reference is the saved policy
    for k, v in policy.state_dict().items():
        if k in ref:
            assert torch.equal(ref[k], v), k
    first = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(first[k], v) for k, v in policy.state_dict().items())  # training moved it
    check_rounds(recs, groups_per_round=4, batch=4)  # --gen-batch-factor 1 (the default): rounds of one batch


@pytest.mark.slow
def test_oversampled_rounds_generate_more_groups_and_drop_the_surplus(tiny_model_dir, task_file, tmp_path):
    """--gen-batch-factor 3 with a batch of 4: each round generates 12 groups; the mixed groups beyond the batch
    are counted as surplus: surplus = mixed - 4 when the step fills (mixed = kept_frac x generated)."""
    out = tmp_path / "run"
    r = run_train([*small_args(tiny_model_dir, task_file, out), "--steps", "2", "--gen-batch-factor", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    check_rounds(records(out), groups_per_round=12, batch=4)


def check_rounds(recs, groups_per_round, batch):
    """Dynamic sampling's bookkeeping per step: every round generates groups_per_round groups; of the mixed ones
    (kept_frac x generated), those beyond the batch are surplus, and a batch left short is padded."""
    for x in recs:
        assert x["dyn/generated_groups"] == groups_per_round * x["dyn/rounds"], x
        mixed = round(x["dyn/kept_frac"] * x["dyn/generated_groups"])
        assert x["dyn/padded_groups"] == max(0, batch - mixed), x
        assert x["dyn/surplus_groups"] == max(0, mixed - batch), x


KILL_STEPS = 4


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, task_file, tmp_path_factory) -> Path:
    full = tmp_path_factory.mktemp("uninterrupted") / "full"
    r = run_train([*small_args(tiny_model_dir, task_file, full), "--steps", str(KILL_STEPS)])
    assert r.returncode == 0, r.stderr[-3000:]
    return full


# kill after step 1 (an ordinary step) and after step 3, where the reference and the optimizer were just reset:
# the run resumes from a checkpoint holding a fresh optimizer (this once resumed with Adam's step count off by one)
@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 3])
def test_kill_9_then_resume_equals_an_uninterrupted_run(tiny_model_dir, task_file, uninterrupted, kill_after, tmp_path):
    steps, full, cut = KILL_STEPS, uninterrupted, tmp_path / "cut"
    # kill -9 (the whole process group: trainer, vLLM engine, verifier pool) once `kill_after` steps are logged
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([PY, str(ROOT / "train.py"), *small_args(tiny_model_dir, task_file, cut), "--steps", str(steps)],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + RUN_TIMEOUT_S
    try:
        while time.time() < deadline and p.poll() is None:
            m = cut / "metrics.jsonl"
            if m.exists() and len(m.read_text().splitlines()) >= kill_after:
                break
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    assert len(records(cut)) < steps, "the run finished before it could be killed"

    r = run_train([*small_args(tiny_model_dir, task_file, cut), "--steps", str(steps), "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = records(full), records(cut)
    assert [x["step"] for x in b] == list(range(1, steps + 1))  # nothing lost, nothing duplicated
    for x, y in zip(a, b):
        assert comparable(x) == comparable(y), f"step {x['step']}"
    from safetensors.torch import load_file

    for name in ("policy/model.safetensors", "ref.safetensors"):
        wa = load_file(full / "checkpoints" / f"step_{steps:06d}" / name)
        wb = load_file(cut / "checkpoints" / f"step_{steps:06d}" / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_train_and_close_destroys_the_process_group_even_when_train_raises(monkeypatch):
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)

    def boom(cfg):
        raise RuntimeError("step failed")

    monkeypatch.setattr(train, "train", boom)
    with pytest.raises(RuntimeError, match="step failed"):
        train.train_and_close(train.Config())
    assert not dist.is_initialized()  # left initialised, gloo's threads can abort the interpreter at exit
