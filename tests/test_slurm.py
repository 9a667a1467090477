"""Slurm: submitit jobs on a real (loopback) Slurm cluster, preemption by USR2, requeue, resume.

The cluster is the one slurm/local_cluster.sh starts: 4 "nodes" n1..n4 (several slurmd on
127.0.0.1), partition `debug`. Under CI (env CI=true) .ci/run must have started it and
exported its client environment (`eval "$(slurm/local_cluster.sh env)"`); a missing cluster
then FAILS. Outside CI the session fixture starts it itself (and stops it afterwards), or
skips with the reason when Slurm is not installed or we are not root.

What the tests pin down (issue 6, "A real Slurm in CI"):
- a 2-node x 2-task submitit job can rendezvous and all_reduce over gloo;
- `scancel --signal=USR2` (what Slurm sends before a time limit with --signal, and at
  preemption with preempt_send_user_signal) makes a submitit Checkpointable call
  checkpoint() on rank 0, requeue itself, and resume from exactly the saved state;
- train.py --nodes 2 runs through submitit, and resumes exactly after USR2.

Every wait has a deadline (a killed job can otherwise leave job.result() waiting forever),
every submission goes to a fresh tmp folder (job ids can repeat across cluster restarts),
and every job a test submits is cancelled in teardown.

Run: eval "$(slurm/local_cluster.sh env)" && .venv/bin/pytest tests/test_slurm.py -q
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

REPO = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER = REPO / "slurm" / "local_cluster.sh"
PARTITION = "debug"
IN_CI = os.environ.get("CI", "").lower() == "true"

JOB_TIMEOUT_S = 120  # one short job, queued + run (the cluster is idle: ~5 s in practice)
REQUEUE_TIMEOUT_S = 180  # run, USR2, requeue (held ~cred_expire=10 s), run again
TRAIN_TIMEOUT_S = 600  # train.py: engine start per rank, per attempt, on 2 cores
JOB_END_TIMEOUT_S = 60  # results written -> tasks exit -> Slurm marks the job ended
POLL_S = 0.2

TRAIN_USR2_STEPS = 30  # enough steps that USR2 (sent after the first metrics line) lands mid-run
TRAIN_NO_PERIODIC_CKPT = ["--ckpt-every", "1000"]  # so a mid-run checkpoint can only be USR2's


# ---------------------------------------------------------------- cluster fixture


def _sinfo_ok() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and PARTITION in out.stdout


def _load_client_env() -> None:
    """Apply `local_cluster.sh env` (SLURM_CONF, PATH with the sacct wrapper) to this process."""
    out = subprocess.run(
        ["bash", str(LOCAL_CLUSTER), "env"], capture_output=True, text=True, timeout=30, check=True
    )
    env = subprocess.run(
        ["bash", "-c", out.stdout + '\nprintf "%s\\0%s" "$SLURM_CONF" "$PATH"'],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    os.environ["SLURM_CONF"], os.environ["PATH"] = env.stdout.split("\0")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A Slurm cluster with partition `debug`; started here only outside CI."""
    if _sinfo_ok():
        # A local_cluster.sh cluster without its sacct wrapper on PATH: submitit would poll a
        # failing sacct; put the wrapper first.
        wrapper_dir = Path(os.environ.get("SLURM_CONF", "/nonexistent")).parent.parent / "bin"
        if (wrapper_dir / "sacct").exists() and shutil.which("sacct") != str(wrapper_dir / "sacct"):
            os.environ["PATH"] = f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}"
        yield
        return
    if IN_CI:
        pytest.fail(
            "CI=true but no Slurm cluster answers `sinfo`: .ci/run must run "
            '`slurm/local_cluster.sh start` and `eval "$(slurm/local_cluster.sh env)"` before pytest'
        )
    if shutil.which("slurmctld") is None or os.geteuid() != 0:
        pytest.skip("no local Slurm: needs root and `apt-get install munge slurmctld slurmd slurm-client`")
    subprocess.run(["bash", str(LOCAL_CLUSTER), "start"], check=True, timeout=120)
    _load_client_env()
    assert _sinfo_ok(), "slurm/local_cluster.sh start returned but sinfo does not answer"
    yield
    subprocess.run(["bash", str(LOCAL_CLUSTER), "stop"], timeout=180)


# Set in this pytest process by earlier tests' in-process vLLM engines; sbatch would export them into the
# job, where submitit refuses to overwrite them ("Cannot export environment variables as ... is set").
DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def clean_dist_env(monkeypatch):
    for key in DIST_ENV:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def job_ids(slurm_cluster):
    """Ids of jobs a test submitted; whatever is still queued or running is cancelled afterwards."""
    ids: list[str] = []
    yield ids
    live = [i for i in ids if job_state(i) in LIVE_STATES - {"UNKNOWN"}]
    if live:
        subprocess.run(["scancel", *live], capture_output=True, timeout=30)


# ---------------------------------------------------------------- helpers


def job_state(job_id: str) -> str:
    """Newest state of a job from `sacct` (on PATH: local_cluster.sh's wrapper without slurmdbd)."""
    out = subprocess.run(
        ["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job_id],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    states = [line.split("|")[1] for line in out.splitlines()[1:] if line.split("|")[0] == job_id]
    return states[-1] if states else "UNKNOWN"


def ended_runs(job_id: str) -> list[str]:
    """One state per run of the job that has ended (Slurm's job-completion log): 2 = requeued once."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-o", "JobID,State", "-j", job_id], capture_output=True, text=True, timeout=30
    ).stdout
    return [line.split("|")[1] for line in out.splitlines() if line.split("|")[0] == job_id]


LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED", "UNKNOWN"}


def wait_until(predicate, timeout_s: float, what: str):
    """Poll predicate() until it returns something truthy; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def job_logs(job: submitit.Job) -> str:
    return f"--- stdout ---\n{job.stdout()}\n--- stderr ---\n{job.stderr()}"


def results_with_timeout(job: submitit.Job, timeout_s: float) -> list:
    """job.results(), but never waiting past timeout_s (it can hang forever for a killed job)."""
    # done(): every task's result file exists (or sacct says the job is over).
    wait_until(lambda: job.done() or job_state(job.job_id) not in LIVE_STATES, timeout_s, f"job {job.job_id}")
    try:
        results = job.results()
    except Exception as e:
        pytest.fail(f"job {job.job_id} failed ({job_state(job.job_id)}): {e}\n{job_logs(job)}")
    # The results exist a moment before the tasks exit and Slurm marks the job done.
    wait_job_end(job.job_id, JOB_END_TIMEOUT_S)
    return results


def wait_job_end(job_id: str, timeout_s: float) -> str:
    """Wait until Slurm no longer runs the job; returns its final state (COMPLETED, FAILED, ...)."""
    return wait_until(
        lambda: (s := job_state(job_id)) not in LIVE_STATES and s, timeout_s, f"job {job_id} to end"
    )


def make_executor(folder: Path, **params) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    # submitit pickles module-level functions by reference: the job must import this module.
    pythonpath = os.pathsep.join([str(Path(__file__).parent), str(REPO), "$PYTHONPATH"])
    executor.update_parameters(
        slurm_partition=PARTITION,
        timeout_min=10,
        cpus_per_task=1,
        slurm_setup=[f"export PYTHONPATH={pythonpath}"],
        **params,
    )
    return executor


# ---------------------------------------------------------------- job bodies (run on the cluster)


def all_reduce_job() -> dict:
    """Each rank contributes rank + 1 to a gloo all_reduce; returns what this rank saw."""
    import datetime

    import torch
    import torch.distributed as dist

    dist_env = submitit.helpers.TorchDistributedEnvironment().export()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # every "node" is 127.0.0.1
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    x = torch.tensor([float(dist_env.rank + 1)])
    dist.all_reduce(x)  # collective over 4 processes on 2 slurmd "nodes"
    dist.destroy_process_group()
    return {
        "rank": dist_env.rank,
        "world_size": dist_env.world_size,
        "local_rank": dist_env.local_rank,
        "node": os.environ["SLURMD_NODENAME"],
        "sum": x.item(),
    }


class ProgressLoop(submitit.helpers.Checkpointable):
    """Writes "attempt step" lines, one per step; checkpoint() saves the next step to run."""

    def __init__(self, progress: str, marks: str, num_steps: int, step_s: float, start: int = 0):
        self.progress, self.marks = progress, marks
        self.num_steps, self.step_s = num_steps, step_s
        self.next_step = start

    def __call__(self) -> int:
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        while self.next_step < self.num_steps:
            # Block USR2 while a step is half done, so checkpoint() sees whole steps only.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
            with open(self.progress, "a") as f:
                f.write(f"{attempt} {self.next_step}\n")
            self.next_step += 1
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
            time.sleep(self.step_s)
        return self.next_step

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        with open(self.marks, "a") as f:
            f.write(f"checkpoint {os.environ.get('SLURM_RESTART_COUNT', '0')} {self.next_step}\n")
        resumed = ProgressLoop(self.progress, self.marks, self.num_steps, self.step_s, start=self.next_step)
        return submitit.helpers.DelayedSubmission(resumed)


# ---------------------------------------------------------------- submitit on the cluster


@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT_S + 60)
def test_two_node_gloo_all_reduce_sums_every_rank(tmp_path, job_ids):
    executor = make_executor(tmp_path / "submitit", nodes=2, tasks_per_node=2)
    job = executor.submit(all_reduce_job)
    job_ids.append(job.job_id)

    results = results_with_timeout(job, JOB_TIMEOUT_S)

    world_size = 4
    assert len(results) == world_size
    assert sorted(r["rank"] for r in results) == list(range(world_size))
    assert all(r["world_size"] == world_size for r in results)
    assert all(r["sum"] == world_size * (world_size + 1) / 2 for r in results)  # 1+2+3+4 = 10
    # two tasks on each of two distinct slurmd nodes, local ranks 0 and 1 on each
    by_node: dict[str, list[int]] = {}
    for r in results:
        by_node.setdefault(r["node"], []).append(r["local_rank"])
    assert len(by_node) == 2 and all(sorted(v) == [0, 1] for v in by_node.values()), by_node


@pytest.mark.slow
@pytest.mark.timeout(REQUEUE_TIMEOUT_S + 60)
def test_usr2_checkpoints_requeues_and_resumes_from_saved_step(tmp_path, job_ids):
    num_steps, step_s, signal_after = 30, 0.2, 3
    progress, marks = tmp_path / "progress.txt", tmp_path / "marks.txt"
    executor = make_executor(tmp_path / "submitit", nodes=1, tasks_per_node=1)
    job = executor.submit(ProgressLoop(str(progress), str(marks), num_steps, step_s))
    job_ids.append(job.job_id)

    def lines(path: Path) -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    wait_until(lambda: len(lines(progress)) >= signal_after, JOB_TIMEOUT_S, "the first steps")
    # Steps only (no --full): the batch shell would die of USR2; submitit's task catches it.
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=30)

    results = results_with_timeout(job, REQUEUE_TIMEOUT_S)
    assert results == [num_steps], job_logs(job)

    # checkpoint() ran exactly once, in the first attempt, and saved the next step to run
    mark_lines = lines(marks)
    assert len(mark_lines) == 1 and mark_lines[0].startswith("checkpoint 0 "), mark_lines
    saved_step = int(mark_lines[0].split()[2])
    assert signal_after <= saved_step < num_steps, f"USR2 arrived after the run ended? {mark_lines}"

    runs = [tuple(map(int, line.split())) for line in lines(progress)]
    attempts = sorted({a for a, _ in runs})
    assert attempts == [0, 1], f"expected one requeue (SLURM_RESTART_COUNT 0 then 1), got {attempts}"
    first = [s for a, s in runs if a == 0]
    second = [s for a, s in runs if a == 1]
    # resumed exactly where the checkpoint was: no step lost, none repeated
    assert first == list(range(saved_step))
    assert second == list(range(saved_step, num_steps))
    # the job kept its id through the requeue and ended COMPLETED, after exactly two runs
    assert wait_job_end(job.job_id, JOB_END_TIMEOUT_S) == "COMPLETED"
    assert len(ended_runs(job.job_id)) == 2, ended_runs(job.job_id)


# ---------------------------------------------------------------- slurm/prorl.sbatch

# A stand-in for train.py under prorl.sbatch (the real one needs the paper's GPUs): it keeps
# train.py's side of the contract (torchrun env, USR2 -> rank 0 requeues; --resume on every
# attempt) and records what each rank saw, so the test checks the sbatch script, torchrun's
# signal forwarding and Slurm's requeue for real.
SBATCH_STAND_IN = """
import os, signal, subprocess, sys, time
import torch, torch.distributed as dist
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
got_usr2 = []
signal.signal(signal.SIGUSR2, lambda signum, frame: got_usr2.append(signum))
dist.init_process_group("gloo")
log = open(f"rank{rank}.txt", "a")
def say(*words): print(*words, file=log, flush=True)
say("start", attempt, world, os.environ["LOCAL_RANK"], os.environ["SLURMD_NODENAME"], *sys.argv[1:])
if attempt == 0:
    deadline = time.monotonic() + 120
    while not got_usr2 and time.monotonic() < deadline:
        time.sleep(0.1)
    say("usr2", attempt, bool(got_usr2))
    dist.barrier()  # every rank has it before the job goes away
    if rank == 0:
        subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True, timeout=60)
    time.sleep(120)  # the requeue ends this attempt
else:
    x = torch.ones(1)
    dist.all_reduce(x)
    say("done", attempt, x.item())
# Without this, gloo's threads can still be running when the interpreter exits, and the C++
# runtime aborts ("terminate called without an active exception", SIGABRT): seen under load.
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.timeout(REQUEUE_TIMEOUT_S + 60)
def test_sbatch_script_forwards_usr2_to_every_torchrun_rank_and_requeues(tmp_path, job_ids):
    nodes, gpus_per_node = 2, 2
    (tmp_path / "train.py").write_text(SBATCH_STAND_IN)
    env = {
        **os.environ,
        "GPUS_PER_NODE": str(gpus_per_node),
        "PYTHON": sys.executable,
        "SHUTDOWN_TIMEOUT_S": "60",
    }
    # Command-line options override the script's #SBATCH lines: this cluster has no GPUs and 2 CPUs
    # a node. The time limit must stay well above the script's --signal=USR2@300: with --time=5,
    # Slurm's own USR2 comes at once and races the one this test sends.
    submit = subprocess.run(
        ["sbatch", "--parsable", f"--nodes={nodes}", "--gpus-per-node=0", "--cpus-per-task=1", "--time=30",
         f"--partition={PARTITION}", f"--chdir={tmp_path}", f"--output={tmp_path}/slurm-%j.log",
         str(REPO / "slurm" / "prorl.sbatch"), "--steps", "7"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]
    job_ids.append(job_id)
    world = nodes * gpus_per_node
    rank_logs = [tmp_path / f"rank{r}.txt" for r in range(world)]

    def slurm_log() -> str:
        path = tmp_path / f"slurm-{job_id}.log"
        return path.read_text() if path.exists() else ""

    wait_until(
        lambda: (
            all(p.exists() and "start 0" in p.read_text() for p in rank_logs)
            or job_state(job_id) not in LIVE_STATES
        ),
        JOB_TIMEOUT_S,
        "every rank of attempt 0",
    )
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    state = wait_job_end(job_id, REQUEUE_TIMEOUT_S)
    assert state == "COMPLETED", f"job {job_id} ended {state}\n{slurm_log()}"

    nodes_seen = set()
    for r, path in enumerate(rank_logs):
        lines = path.read_text().splitlines()
        starts = [line.split() for line in lines if line.startswith("start")]
        assert [s[1] for s in starts] == ["0", "1"], f"rank {r}: one requeue expected\n{lines}"
        assert all(
            s[2] == str(world) and s[5:] == ["--preset", "prorl", "--resume", "--steps", "7"] for s in starts
        )
        assert "usr2 0 True" in lines, f"rank {r} never got USR2\n{lines}\n{slurm_log()}"
        assert f"done 1 {float(world)}" in lines, lines  # attempt 1 all_reduced over every rank
        nodes_seen |= {s[4] for s in starts}
    assert len(nodes_seen) == nodes, nodes_seen
    assert "attempt 0" in slurm_log() and "attempt 1" in slurm_log()  # --open-mode=append kept both


# ---------------------------------------------------------------- train.py through submitit


@pytest.fixture(scope="module")
def small_args(tiny_model_dir, tmp_path_factory) -> list[str]:
    """train.py on the session's tiny random Qwen2 and instruction-following tasks (test_train.py's)."""
    from test_train import IF_TASK

    tasks = tmp_path_factory.mktemp("slurm_tasks") / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(dict(IF_TASK, id=f"if/{i}")) + "\n" for i in range(8)))
    return ["--model", str(tiny_model_dir), "--train-data", f"tasks:{tasks}", "--prompts-per-step", "4",
            "--mini-batch-prompts", "2", "--n", "8", "--max-response-tokens", "16", "--val-every", "0",
            "--reward-workers", "1", "--kv-cache-gb", "0.5"]


def _train_cmd(tmp_path: Path, steps: int, small_args: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        "--nodes", "2",
        "--tasks-per-node", "1",
        "--partition", PARTITION,
        "--slurm-folder", str(tmp_path / "submitit"),
        "--out", str(tmp_path / "run"),
        "--steps", str(steps),
        *small_args,
        *extra,
    ]  # fmt: skip


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    # A line being written may be incomplete: count only newline-terminated records.
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def _checkpoint_steps(run_dir: Path) -> set[int]:
    """Steps of the checkpoints under run_dir (directory or file names containing step_<N>)."""
    steps = set()
    for path in run_dir.rglob("*"):
        m = re.fullmatch(r"(?:.*[_-])?step[_-]?(\d+)", path.name)
        if m and not path.name.endswith(".tmp"):
            steps.add(int(m.group(1)))
    return steps


@pytest.mark.slow
@pytest.mark.timeout(TRAIN_TIMEOUT_S + 60)
def test_train_two_nodes_through_submitit_writes_one_metrics_line_per_step(tmp_path, job_ids, small_args):
    proc = subprocess.run(
        _train_cmd(tmp_path, 2, small_args), capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S, cwd=REPO
    )
    ids = re.findall(r"submitted job (\d+)", proc.stdout)
    job_ids.extend(ids)
    assert proc.returncode == 0, f"train.py exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert len(ids) == 1, f"train.py must print `submitted job <id>` once:\n{proc.stdout}"
    assert wait_job_end(ids[0], JOB_END_TIMEOUT_S) == "COMPLETED"
    records = _metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2], records


@pytest.mark.slow
@pytest.mark.timeout(2 * TRAIN_TIMEOUT_S + 60)
def test_train_usr2_checkpoints_requeues_and_continues_metrics_exactly(tmp_path, job_ids, small_args):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        _train_cmd(tmp_path, TRAIN_USR2_STEPS, small_args, "--no-wait", *TRAIN_NO_PERIODIC_CKPT),
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S * 3,  # imports torch/transformers, submits, returns: slow on a loaded 2-core box
        cwd=REPO,
    )
    assert proc.returncode == 0, f"train.py --no-wait exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    m = re.search(r"submitted job (\d+)", proc.stdout)
    assert m, f"train.py --no-wait must print `submitted job <id>`; printed:\n{proc.stdout}"
    job_id = m.group(1)
    job_ids.append(job_id)

    wait_until(
        lambda: len(_metrics(run_dir)) >= 1 or job_state(job_id) not in LIVE_STATES, TRAIN_TIMEOUT_S, "step 1"
    )
    steps_before = len(_metrics(run_dir))
    assert steps_before < TRAIN_USR2_STEPS, (
        f"job ended before USR2 ({job_state(job_id)}): raise TRAIN_USR2_STEPS"
    )
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)

    state = wait_job_end(job_id, 2 * TRAIN_TIMEOUT_S)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "submitit").glob(f"{job_id}*.out")))
    assert state == "COMPLETED", f"job {job_id} ended {state}\n{logs}"

    assert len(ended_runs(job_id)) == 2, f"expected one requeue: {ended_runs(job_id)}"
    records = _metrics(run_dir)
    steps = [r["step"] for r in records]
    # no metrics line lost or duplicated across the requeue
    assert len(steps) == TRAIN_USR2_STEPS and len(set(steps)) == len(steps), steps
    assert steps == list(range(steps[0], steps[0] + TRAIN_USR2_STEPS)), steps
    # a checkpoint was written at the interrupt, i.e. mid-run, not only the final one
    interrupt_ckpts = {s for s in _checkpoint_steps(run_dir) if steps_before <= s < steps[-1]}
    assert interrupt_ckpts, (
        f"no checkpoint between step {steps_before} and the end: {_checkpoint_steps(run_dir)}"
    )
