"""evaluate.py: pass@k estimator, regime rule, cache/resume, figures, table, one real run."""
import itertools
import json
import math
import os
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import evaluate as ev  # noqa: E402


# --------------------------------------------------------------------------- pass@k
def brute_force_pass_at_k(n, c, k):
    """Fraction of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_enumeration_of_all_k_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert ev.pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_pass_at_k_equals_exact_binomial_ratio_at_large_n(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert ev.pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-9)


def test_pass_at_k_edge_cases():
    assert ev.pass_at_k(128, 0, 128) == 0.0        # c = 0: never solved
    assert ev.pass_at_k(128, 0, 1) == 0.0
    assert ev.pass_at_k(128, 128, 1) == 1.0        # c = n: always solved
    assert ev.pass_at_k(128, 1, 128) == 1.0        # k = n: solved iff any sample is correct
    assert ev.pass_at_k(5, 0, 5) == 0.0
    assert ev.pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2)


def test_pass_at_k_refuses_k_above_n_with_clear_message():
    with pytest.raises(ValueError, match=r"k=5 > n=4.*at least k samples"):
        ev.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        ev.pass_at_k(4, 5, 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        ev.pass_at_k(4, 1, 0)


def test_pass_at_1_is_mean_correctness():
    for n, c in [(1, 0), (1, 1), (7, 3), (128, 5), (256, 255)]:
        assert ev.pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_pass_at_k_per_problem_is_elementwise():
    got = ev.pass_at_k_per_problem([4, 4, 8], [0, 2, 8], 2)
    assert got.tolist() == pytest.approx([0.0, 5 / 6, 1.0])
    with pytest.raises(ValueError, match="differ"):
        ev.pass_at_k_per_problem([4, 4], [1], 2)


def test_correct_means_score_exactly_one_unless_threshold_given():
    scores = [1.0, 0.99, 0.01, 1.0, 0.0]          # partial credit (e.g. Reasoning Gym's 0.01) is no solve
    assert ev.count_correct(scores) == 2
    assert ev.count_correct(scores, threshold=0.5) == 3


def test_ks_are_powers_of_two_up_to_passk():
    assert ev.ks_up_to(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert ev.ks_up_to(1) == [1]
    assert ev.ks_up_to(100) == [1, 2, 4, 8, 16, 32, 64, 100]


def test_suite_metrics_hand_computed():
    records = {"a": {"id": "a", "scores": [1.0, 0.0, 0.0, 1.0], "lengths": [2, 4, 6, 8], "truncated": 1},
               "b": {"id": "b", "scores": [0.5, 0.0, 0.0, 0.0], "lengths": [1, 1, 1, 1], "truncated": 0}}
    m = ev.suite_metrics(records, [1, 2, 4])
    assert m["tasks"]["a"] == {"n": 4, "c": 2, "pass@1": 0.5, "pass@2": pytest.approx(5 / 6), "pass@4": 1.0}
    assert m["tasks"]["b"]["c"] == 0                       # 0.5 is not a solve
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx(5 / 12)
    assert m["pass@4"] == pytest.approx(0.5)
    assert m["mean_length"] == pytest.approx(3.0)
    assert m["truncated_frac"] == pytest.approx(1 / 8)


# --------------------------------------------------------------------------- regimes
@pytest.mark.parametrize("curve, regime", [
    ([0.80, 0.72, 0.65], "diminished"),    # pass@K falls by 0.15 > margin
    ([0.30, 0.60, 0.61], "plateau"),       # gain 0.31, last interval adds 0.01 < 0.5 * 0.31 / 2
    ([0.50, 0.50, 0.51], "plateau"),       # no gain beyond the noise margin
    ([0.30, 0.45, 0.62], "sustained"),     # still rising in the last interval
    ([0.10, 0.40], "sustained"),           # two checkpoints: any clear gain is sustained
    ([0.40, 0.39], "plateau"),             # two checkpoints, within the margin
])
def test_regime_classifier_on_crafted_curves(curve, regime):
    assert ev.classify_regime(curve) == regime


def test_regime_plateau_boundary_is_half_the_mean_interval_gain():
    # G = 0.4 over m = 2 intervals: mean interval gain 0.2, plateau below 0.1 in the last
    assert ev.classify_regime([0.2, 0.49, 0.6]) == "sustained"   # last adds 0.11
    assert ev.classify_regime([0.2, 0.51, 0.6]) == "plateau"     # last adds 0.09
    with pytest.raises(ValueError, match=">= 2 checkpoints"):
        ev.classify_regime([0.5])


# --------------------------------------------------------------------------- cache + resume
def make_tasks(count, prefix="t"):
    return [{"id": f"{prefix}{i}", "domain": "logic", "prompt": [{"role": "user", "content": f"q{i}"}]}
            for i in range(count)]


class FakeSampler:
    """generate_fn that records which tasks it was asked for; sample j of task i is
    "<id>:<j>", correct (score 1) when j is even."""

    def __init__(self):
        self.asked = []

    def __call__(self, tasks, n):
        self.asked += [t["id"] for t in tasks]
        return [{"text": f"{t['id']}:{j}", "response_ids": [0] * (j + 1),
                 "finish_reason": "length" if j == n - 1 else "stop"} for t in tasks for j in range(n)]


def fake_score(texts, tasks):
    assert all(x.startswith(t["id"] + ":") for x, t in zip(texts, tasks))  # alignment kept
    return [1.0 if int(x.split(":")[1]) % 2 == 0 else 0.01 for x in texts]


SAMPLING = {"temperature": 0.6, "top_p": 0.95, "max_tokens": 64, "seed": 0}


def test_cache_resume_samples_only_missing_tasks(tmp_path):
    n, tasks = 4, make_tasks(5)
    cache = tmp_path / "cache" / "suite.jsonl"
    cache.parent.mkdir()
    done = {"scores": [0.0] * n, "lengths": [3] * n, "truncated": 0, "texts": [], "sampling": SAMPLING}
    partial = {"id": "t2", "scores": [1.0], "lengths": [3], "truncated": 0, "texts": [], "sampling": SAMPLING}
    with open(cache, "w") as fh:
        fh.write(json.dumps({"id": "t0", **done}) + "\n")
        fh.write(json.dumps({"id": "t1", **done}) + "\n")
        fh.write(json.dumps(partial) + "\n")                 # fewer than n samples: re-sampled
        fh.write('{"id": "t3", "scores": [1.0, ')            # torn write of an interrupted run
    sampler = FakeSampler()
    out = ev.sample_and_score(tasks, sampler, fake_score, n, str(cache), batch_prompts=2, sampling=SAMPLING)
    assert sorted(sampler.asked) == ["t2", "t3", "t4"]
    assert list(out) == [t["id"] for t in tasks]
    assert out["t0"]["scores"] == [0.0] * n                   # kept from the cache, not re-scored
    assert out["t3"]["scores"] == [1.0, 0.01, 1.0, 0.01]
    assert out["t3"]["lengths"] == [1, 2, 3, 4] and out["t3"]["truncated"] == 1
    assert out["t3"]["texts"] == ["t3:0", "t3:1", "t3:2", "t3:3"]

    # second pass: everything is cached, the sampler must not run
    def must_not_sample(tasks, n):
        raise AssertionError(f"re-sampled {[t['id'] for t in tasks]}")
    again = ev.sample_and_score(tasks, must_not_sample, fake_score, n, str(cache), sampling=SAMPLING)
    assert {k: v["scores"] for k, v in again.items()} == {k: v["scores"] for k, v in out.items()}


def test_cache_refuses_records_sampled_with_other_settings(tmp_path):
    cache = tmp_path / "s.jsonl"
    ev.sample_and_score(make_tasks(1), FakeSampler(), fake_score, 2, str(cache), sampling=SAMPLING)
    with pytest.raises(ValueError, match=r"s\.jsonl:1: cached with sampling"):
        ev.sample_and_score(make_tasks(1), FakeSampler(), fake_score, 2, str(cache),
                            sampling={**SAMPLING, "temperature": 1.2})


def test_sample_and_score_rejects_bad_generator_output_and_duplicate_ids(tmp_path):
    def short(tasks, n):
        return FakeSampler()(tasks, n)[:-1]
    with pytest.raises(RuntimeError, match="returned 7 samples for 2 tasks x n=4"):
        ev.sample_and_score(make_tasks(2), short, fake_score, 4)
    with pytest.raises(ValueError, match="duplicate task ids"):
        ev.sample_and_score(make_tasks(2) + make_tasks(1), FakeSampler(), fake_score, 4)


def test_evaluate_starts_an_engine_only_for_checkpoints_with_uncached_tasks(tmp_path):
    ckpts = []
    for name in ("warmstart", "step_10/policy"):
        d = tmp_path / name
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        ckpts.append(str(d))
    cfg = ev.Config(checkpoints=ckpts, passk=4, max_tokens=64, out=str(tmp_path / "eval"))
    suites = {"graph_color_v4": make_tasks(3, "g"), "boxnet": make_tasks(2, "b"),
              "triangles": [graph_color_task(range(3), [(0, 1), (1, 2), (0, 2)])]}
    started, closed = [], []

    def factory(path, cfg, max_tokens):
        started.append(path)
        return FakeSampler(), lambda: closed.append(path)

    res = ev.evaluate(cfg, suites, sampler_factory=factory, score_fn=fake_score)
    assert started == ckpts and closed == ckpts
    assert res["checkpoints"] == ["warmstart", "step_10"]
    assert res["results"]["step_10"]["boxnet"]["pass@1"] == pytest.approx(0.5)   # 2 of 4 even samples
    assert res["results"]["step_10"]["boxnet"]["pass@4"] == 1.0
    assert res["regimes"]["boxnet"]["regime"] == "plateau"                       # identical checkpoints
    # a chance baseline only where every answer space can be enumerated (make_tasks are not real graphs)
    assert list(res["chance"]) == ["triangles"] and res["chance"]["triangles"]["pass@1"] == pytest.approx(6 / 27)

    def no_engine(path, cfg, max_tokens):
        raise AssertionError("engine started although everything is cached")
    again = ev.evaluate(cfg, suites, sampler_factory=no_engine, score_fn=fake_score)
    assert again["results"] == res["results"]

    # a checkpoint whose files change (re-trained at the same path) gets a fresh cache
    (tmp_path / "warmstart" / "config.json").write_text('{"changed": 1}')
    os.utime(tmp_path / "warmstart" / "config.json", ns=(1, 1))
    started.clear()
    ev.evaluate(cfg, suites, sampler_factory=factory, score_fn=fake_score)
    assert started == [ckpts[0]]


# --------------------------------------------------------------------------- defaults + CLI
def test_default_checkpoints_are_warmstart_and_newest_complete_step(tmp_path):
    root = tmp_path / "mini"
    with pytest.raises(FileNotFoundError, match="no checkpoints found.*python train.py"):
        ev.default_checkpoints(str(root))
    ckpts = root / "run" / "checkpoints"
    for sub in ("warmstart", "run/checkpoints/step_000009/policy", "run/checkpoints/step_000010/policy",
                "run/checkpoints/step_000011.tmp/policy", "run/checkpoints/step_000012/policy"):
        (root / sub).mkdir(parents=True)
    for step in ("step_000009", "step_000010", "step_000011.tmp"):
        (ckpts / step / "COMPLETE").write_text("")
    # step_000012 is being written (no COMPLETE yet), step_000011.tmp is a partial rename
    assert ev.default_checkpoints(str(root)) == [str(root / "warmstart"), str(ckpts / "step_000010" / "policy")]


def test_help_documents_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        ev.parse_args(["--help"])
    text = capsys.readouterr().out
    for f in ev.Config.__dataclass_fields__:
        assert "--" + f.replace("_", "-") in text
    assert "0.6" in text and "0.95" in text and "128" in text


def test_cli_parses_and_rejects_bad_values():
    cfg = ev.parse_args(["--checkpoints", "a", "b", "--passk", "16", "--n", "32", "--plots-only"])
    assert cfg.checkpoints == ["a", "b"] and cfg.num_samples == 32 and cfg.plots_only
    assert ev.parse_args(["--passk", "64"]).num_samples == 64
    with pytest.raises(SystemExit):
        ev.parse_args(["--engine", "[1]"])
    with pytest.raises(SystemExit):
        ev.parse_args(["--correct-threshold", "0"])
    with pytest.raises(SystemExit):
        ev.parse_args(["--train-vertices", "9-4"])
    assert ev.parse_vertices("10") == [10, 10] and ev.parse_vertices("4-6") == [4, 6]


# --------------------------------------------------------------------------- figures + table
def crafted_results(ks=(1, 2, 4, 8)):
    """3 checkpoints x 5 suites, built from crafted per-problem correct counts (n = 8)."""
    n = max(ks)
    correct = {  # suite -> checkpoint -> correct counts of its 4 problems
        "graph_color_v4": ([2, 0, 8, 1], [5, 1, 8, 3], [7, 2, 8, 6]),
        "graph_color_v8": ([0, 0, 1, 0], [1, 0, 3, 0], [2, 1, 4, 0]),
        "boxnet": ([0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0]),
        "chain_sum": ([8, 4, 2, 6], [8, 8, 1, 0], [8, 8, 0, 0]),
        "leg_counting": ([1, 1, 0, 0], [6, 6, 3, 0], [6, 6, 3, 0]),
    }
    ckpts = ["warmstart", "step_50", "step_100"]
    res = {"ks": list(ks), "passk": n, "n": n, "checkpoints": ckpts, "suites": list(correct),
           "sampling": SAMPLING, "correct_threshold": 1.0, "graph_color_train_vertices": [4, 4],
           "results": {c: {} for c in ckpts}}
    for s, per_ckpt in correct.items():
        for c, cs in zip(ckpts, per_ckpt):
            records = {f"{s}/{i}": {"scores": [1.0] * ci + [0.0] * (n - ci), "lengths": [5] * n}
                       for i, ci in enumerate(cs)}
            res["results"][c][s] = ev.suite_metrics(records, list(ks))
    res["regimes"] = ev.classify_suites(res)
    return res


def write_metrics(path):
    recs = [{"step": s, "rollout/reward": 0.1 * s, "train/entropy": 1.0 - 0.05 * s, "train/kl": 0.01 * s,
             "rollout/response_len": 50 + s, "reset/happened": 0}  # train.py's keys
            for s in range(10)]
    recs[5]["reset/reason"] = "patience"
    recs[2]["reset/reason"] = None                           # null reason: no reset
    recs[3]["val/graph_color/pass@1"] = 0.2
    recs[6]["val/graph_color/pass@1"] = 0.3
    recs[8]["reset/happened"] = 1
    del recs[7]["train/entropy"]                           # missing key: tolerated
    with open(path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in recs)
        fh.write('{"step": 10, "rollout/rew')                # torn last line


FIGURES = ["passk_curves", "pass1_hist", "graph_color", "boxnet", "regimes", "gain_vs_base",
           "training_dynamics"]


def test_every_figure_is_written_with_its_data(tmp_path):
    res = crafted_results()
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics)
    pngs = ev.make_figures(res, str(tmp_path / "fig"), str(metrics))
    assert sorted(Path(p).stem for p in pngs) == sorted(FIGURES)
    for name in FIGURES:
        png, data = tmp_path / "fig" / f"{name}.png", tmp_path / "fig" / f"{name}.json"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert json.loads(data.read_text())
    gc = json.loads((tmp_path / "fig" / "graph_color.json").read_text())
    assert gc["vertices"] == [4, 8] and gc["k"] == 8 and gc["train_vertices"] == [4, 4]
    assert gc["warmstart"]["pass@1"][0] == pytest.approx((2 + 0 + 8 + 1) / 32)
    dyn = json.loads((tmp_path / "fig" / "training_dynamics.json").read_text())
    assert [r["step"] for r in dyn["resets"]] == [5, 8]
    assert dyn["series"]["val/graph_color/pass@1"] == [[3, 0.2], [6, 0.3]]
    assert len(dyn["series"]["train/entropy"]) == 9
    assert dyn["series"]["train/kl"][2] == [2, 0.02] and "rollout/response_len" in dyn["series"]


def test_regimes_of_crafted_results():
    regimes = {s: r["regime"] for s, r in crafted_results()["regimes"].items()}
    # chain_sum: pass@8 1 -> 0.5 (two problems lost); leg_counting: gains stop after step_50
    assert regimes == {"graph_color_v4": "plateau", "graph_color_v8": "sustained", "boxnet": "sustained",
                       "chain_sum": "diminished", "leg_counting": "plateau"}


def test_boundary_changes_count_newly_solved_and_lost_problems():
    regimes = crafted_results()["regimes"]
    got = {s: (r["newly_solved"], r["lost"], r["never_solved"]) for s, r in regimes.items()}
    assert got == {"graph_color_v4": (1, 0, 0), "graph_color_v8": (2, 0, 1), "boxnet": (2, 0, 2),
                   "chain_sum": (0, 2, 0), "leg_counting": (1, 0, 1)}


def test_gain_vs_base_fit_recovers_a_line(tmp_path):
    res = crafted_results()
    # overwrite pass@8 so that gain = 0.4 - 0.5 * base exactly
    for s, b in zip(res["suites"], [0.0, 0.2, 0.4, 0.6, 0.8]):
        res["results"]["warmstart"][s]["pass@8"] = b
        res["results"]["step_100"][s]["pass@8"] = b + 0.4 - 0.5 * b
    ev.plot_gain_vs_base(res, str(tmp_path))
    fit = json.loads((tmp_path / "gain_vs_base.json").read_text())["fit"]
    assert fit["slope"] == pytest.approx(-0.5) and fit["intercept"] == pytest.approx(0.4)
    assert fit["pearson_r"] == pytest.approx(-1.0)


def test_training_dynamics_with_no_known_keys_still_draws(tmp_path):
    metrics = tmp_path / "m.jsonl"
    metrics.write_text('{"step": 0}\n{"step": 1, "other": 3}\n')
    png = ev.plot_training_dynamics(str(metrics), str(tmp_path))
    assert Path(png).stat().st_size > 1000


def test_summary_table_lists_every_suite_and_checkpoint():
    res = crafted_results()
    table = ev.summary_table(res)
    lines = table.splitlines()
    assert lines[0] == ("| suite | problems | K | warmstart pass@1 | warmstart pass@K | step_50 pass@1 | "
                        "step_50 pass@K | step_100 pass@1 | step_100 pass@K | newly solved | lost | regime |")
    row = next(x for x in lines if x.startswith("| graph_color_v4 "))
    # warmstart pass@1 = 11/32 = 34.4 %, pass@8 = 3 of 4 problems solved at least once = 75.0 %; standard
    # errors over the 4 problems: std([.25, 0, 1, .125], ddof=1) / 2 = 22.5 %, std([1, 0, 1, 1], ddof=1) / 2 = 25 %
    assert row.startswith("| graph_color_v4 | 4 | 8 | 34.4 ± 22.5 | 75.0 ± 25.0 |") and row.endswith("| 1 | 0 | plateau |")
    assert len([x for x in lines if x.startswith("| ") and "---" not in x]) == 1 + len(res["suites"])


def test_plots_only_redraws_from_results_json(tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(crafted_results()))
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics)
    ev.main(["--plots-only", "--out", str(out), "--metrics", str(metrics)])
    assert "| boxnet |" in (out / "summary.md").read_text()
    assert "| boxnet |" in capsys.readouterr().out
    assert all((out / f"{f}.png").exists() for f in FIGURES)
    with pytest.raises(FileNotFoundError, match="results.json not found"):
        ev.main(["--plots-only", "--out", str(tmp_path / "nowhere")])


# --------------------------------------------------------------------------- real path
@pytest.mark.slow
def test_end_to_end_on_tiny_model(tiny_model_dir, engine, tmp_path):
    """Real vLLM engine (shared fixture), real data.py tasks, real rewards: sample, cache,
    score, results, figures, table; a second run samples nothing."""
    import data
    tasks = data.ood_suite("graph_color", size=4, n=2, seed=0)
    suites = {"graph_color_v4": tasks}
    cfg = ev.Config(checkpoints=[str(tiny_model_dir)], passk=4, max_tokens=16, out=str(tmp_path / "eval"))
    calls = []

    def shared_engine(path, cfg, max_tokens):  # the session's engine: never closed here
        calls.append(path)
        return ev.make_generate_fn(engine, engine.tokenizer, cfg, max_tokens), lambda: None

    res = ev.evaluate(cfg, suites, sampler_factory=shared_engine)
    m = res["results"][res["checkpoints"][0]]["graph_color_v4"]
    assert m["n_tasks"] == 2 and all(t["n"] == 4 for t in m["tasks"].values())
    assert 0.0 <= m["pass@1"] <= m["pass@2"] <= m["pass@4"] <= 1.0
    assert 0 < m["mean_length"] <= 16
    cache = next((tmp_path / "eval" / "cache").rglob("graph_color_v4.jsonl"))
    assert len(cache.read_text().splitlines()) == 2
    assert ev.make_figures(res, str(tmp_path / "eval"))
    assert "graph_color_v4" in ev.summary_table(res)
    assert ev.evaluate(cfg, suites, sampler_factory=shared_engine)["results"] == res["results"]
    assert len(calls) == 1


def test_run_comparison_overlays_each_run_and_checks_its_flag(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"step": 1, "train/entropy": 0.5}\n{"step": 2, "train/entropy": 0.4, "val/blend": 0.3}\n')
    b.write_text('{"step": 1, "train/entropy": 0.9}\n{"step": 2, "train/entropy": 1.1, "val/blend": 0.1}\n')
    png = ev.plot_run_comparison({"base": str(a), "no reset": str(b)}, str(tmp_path))
    assert Path(png).stat().st_size > 1000
    series = json.loads((tmp_path / "run_comparison.json").read_text())["series"]
    assert series["no reset:train/entropy"] == [[1, 0.9], [2, 1.1]]
    assert series["base:val/blend"] == [[2, 0.3]] and series["base:rollout/reward"] == []
    assert ev.parse_args(["--runs", f"x={a}", f"y={b}"]).runs == [f"x={a}", f"y={b}"]
    for bad in ([f"{a}"], ["x=/no/such/metrics.jsonl"]):
        with pytest.raises(SystemExit):
            ev.parse_args(["--runs", *bad])


def test_standard_errors_are_refilled_for_old_results_files():
    res = crafted_results()
    r = res["results"]["warmstart"]["graph_color_v4"]
    want = r.pop("pass@1_se"), r.pop("pass@8_se")
    ev.add_standard_errors(res)
    assert (r["pass@1_se"], r["pass@8_se"]) == pytest.approx(want) and want[1] == pytest.approx(0.25)


def test_trailing_mean_by_hand():
    assert ev.trailing_mean([1.0, 3.0, 5.0, 7.0], 2) == pytest.approx([1.0, 2.0, 4.0, 6.0])
    assert ev.trailing_mean([2.0, 4.0], 10) == pytest.approx([2.0, 3.0])


# --------------------------------------------------------------------------- chance baseline
def brute_force_colorings(n, edges, k):
    return sum(all(c[u] != c[v] for u, v in edges) for c in itertools.product(range(k), repeat=n))


def test_count_proper_colorings_known_answers():
    triangle, path3 = [(0, 1), (1, 2), (0, 2)], [(0, 1), (1, 2)]
    k4 = list(itertools.combinations(range(4), 2))
    assert ev.count_proper_colorings(3, triangle, 3) == 6  # 3!
    assert ev.count_proper_colorings(3, path3, 3) == 3 * 2 * 2
    assert ev.count_proper_colorings(4, [], 3) == 81  # no edges: every colouring
    assert ev.count_proper_colorings(4, k4, 3) == 0  # K4 needs 4 colours
    assert ev.count_proper_colorings(4, k4, 4) == 24
    # a cycle C_n: chromatic polynomial (k-1)^n + (-1)^n (k-1)
    for n in range(3, 9):
        cycle = [(i, (i + 1) % n) for i in range(n)]
        assert ev.count_proper_colorings(n, cycle, 3) == 2**n + (-1) ** n * 2
    assert ev.count_proper_colorings(2, [(1, 1)], 3) == 0  # a self-loop
    assert ev.count_proper_colorings(0, [], 3) == 1


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 7), k=st.integers(1, 4), data=st.data())
def test_count_proper_colorings_equals_enumeration(n, k, data):
    pairs = [(u, v) for u in range(n) for v in range(u + 1, n)]
    edges = data.draw(st.lists(st.sampled_from(pairs), unique=True) if pairs else st.just([]))
    edges = [(v, u) if data.draw(st.booleans()) else (u, v) for u, v in edges]  # either orientation
    assert ev.count_proper_colorings(n, edges, k) == brute_force_colorings(n, edges, k)


def graph_color_task(vertices, edges, colors=(1, 2, 3)):
    puzzle = {"vertices": list(vertices), "edges": [list(e) for e in edges], "color_options": list(colors)}
    return {"id": "gc", "domain": "logic", "prompt": [{"role": "user", "content": "colour it"}], "rg_task": "graph_color",
            "rg_entry": {"metadata": {"puzzle": puzzle}}}


def test_chance_metrics_of_a_uniform_guesser_by_hand():
    triangle = graph_color_task(range(3), [(0, 1), (1, 2), (0, 2)])  # q = 6 / 27
    edgeless = graph_color_task(range(2), [])  # q = 1
    assert ev.guess_rate(triangle) == pytest.approx(6 / 27)
    assert ev.guess_rate({"id": "x", "rg_task": "chain_sum"}) is None
    m = ev.chance_metrics([triangle, edgeless], [1, 4])
    q = 6 / 27
    assert m["pass@1"] == pytest.approx((q + 1) / 2)
    assert m["pass@4"] == pytest.approx((1 - (1 - q) ** 4 + 1) / 2)
    assert m["pass@4_se"] == pytest.approx(abs(1 - (1 - q) ** 4 - 1) / 2)  # std (ddof 1) of 2 values / sqrt 2
    assert ev.chance_metrics([triangle, {"id": "x", "rg_task": "chain_sum"}], [1]) is None


def test_chance_of_real_reasoning_gym_graphs_matches_enumeration():
    import data

    for task in data.reasoning_gym_tasks("graph_color", 5, 0, min_num_vertices=5, max_num_vertices=6,
                                         num_colors=3, edge_probability=0.3):
        puzzle = task["rg_entry"]["metadata"]["puzzle"]
        n = len(puzzle["vertices"])
        assert ev.guess_rate(task) == pytest.approx(brute_force_colorings(n, puzzle["edges"], 3) / 3**n)
        assert ev.guess_rate(task) > 0  # Reasoning Gym's graphs are colourable


def test_summary_table_and_graph_color_figure_show_chance(tmp_path):
    res = crafted_results()
    res["chance"] = {"graph_color_v4": {"pass@1": 0.25, "pass@8": 0.9}, "graph_color_v8": {"pass@1": 0.05, "pass@8": 0.33}}
    lines = ev.summary_table(res).splitlines()
    assert lines[0].endswith("| chance pass@1 | chance pass@K | newly solved | lost | regime |")
    assert next(x for x in lines if x.startswith("| graph_color_v8 ")).endswith("| 5.0 | 33.0 | 2 | 0 | sustained |")
    assert "| - | - |" in next(x for x in lines if x.startswith("| chain_sum "))
    ev.plot_graph_color(res, str(tmp_path))
    gc = json.loads((tmp_path / "graph_color.json").read_text())
    assert gc["chance"] == {"pass@1": [0.25, 0.05], "pass@8": [0.9, 0.33]}
