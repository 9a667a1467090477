"""Helpers shared by bench/bench_trl.py and bench/gpu_fsdp.py: machine description, medians, peak memory of a
process tree, JSON output. Nothing here times anything by itself.

Peak memory of a process TREE (train.py spawns vLLM engine processes and verifier workers) is sampled with
psutil: the sum of the resident set sizes of the process and all its descendants, polled every
RSS_POLL_S seconds. A sum of RSS counts pages shared between processes (libtorch, the model file mapped
by two processes) once per process, so it is an upper bound; the largest single process's RSS is reported
next to it. Allocations that live shorter than one poll interval can be missed. The same sampler records the
tree's CPU seconds (user + system, all processes) at the end of each step, which stays meaningful when other
jobs share the cores (wall time does not).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import threading
from pathlib import Path

RSS_POLL_S = 0.25  # seconds between two samples of the tree's RSS
MIB = 2**20


def machine() -> dict:
    """Where a number came from: CPU cores, memory, accelerator, library versions, git commit."""
    import torch

    info = {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__}
    try:
        import psutil

        info["mem_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["git_commit"] = None
    return info


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class TreeRss:
    """Peak RSS of a process and its descendants, sampled on a background thread (see the module docstring).

        with TreeRss(proc.pid, watch="run/metrics.jsonl") as rss:
            proc.wait()
        rss.peak_sum_mib, rss.peak_single_mib, rss.cpu_marks
    """

    def __init__(self, pid: int, interval: float = RSS_POLL_S, watch: str | Path | None = None):
        self.pid, self.interval = pid, interval
        # With `watch` (a jsonlines file the process appends one line per step to), the tree's total CPU
        # seconds are recorded each time a line appears: cpu_marks[i] = CPU used up to the end of step i.
        self.watch, self._lines, self.cpu_marks = (Path(watch) if watch else None), 0, []
        self.peak_sum_mib = 0.0
        self.peak_single_mib = 0.0
        self._cpu: dict[int, tuple[str, float]] = {}  # pid -> (name, user + system CPU seconds at its last sample)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = []
        for p in procs:
            try:
                rss.append(p.memory_info().rss)
                t = p.cpu_times()
                self._cpu[p.pid] = (p.name(), t.user + t.system)
            except psutil.NoSuchProcess:  # a worker that exited between listing and reading
                continue
        if self.watch is not None and self.watch.exists():
            lines = self.watch.read_bytes().count(b"\n")
            if lines > self._lines:
                self.cpu_marks.extend([sum(c for _, c in self._cpu.values())] * (lines - self._lines))
                self._lines = lines
        if rss:
            self.peak_sum_mib = max(self.peak_sum_mib, sum(rss) / MIB)
            self.peak_single_mib = max(self.peak_single_mib, max(rss) / MIB)

    def cpu_seconds_by_name(self) -> dict[str, float]:
        """CPU seconds used per process name (as of each process's last sample): where the cores went."""
        out: dict[str, float] = {}
        for name, sec in self._cpu.values():
            out[name] = round(out.get(name, 0.0) + sec, 1)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")
    return path
