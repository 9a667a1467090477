"""Session fixtures shared by every test file.

tiny_model_dir   a random Qwen2 (hidden 128, 2 layers, 2 heads of 64, ~0.5M params) with a local
                 byte-level BPE tokenizer and chat template (tests/tiny.py); EOS has ~10 % per step.
rollout_engine   ONE vLLM rollout.Rollout on that model for the whole session (an engine takes
                 15-30 s to start on 2 cores). fp32, so log-probs compare to transformers at 1e-4.
                 Tests that push weights must push the originals back before they return.
engine           the same object (alias).

Without vLLM these fixtures skip, except under CI=true, where a missing vLLM is a failure.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):        # the flat repo's modules and tests/tiny.py, from any cwd
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

TINY_ENGINE = dict(dtype="float32", max_model_len=2048, kv_cache_gb=1.0, seed=0)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_vllm():
    """Import vllm; under CI=true a failure is an error, elsewhere the test skips."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        if in_ci():
            raise RuntimeError(f"vllm must be importable under CI=true: {e}") from e
        pytest.skip(f"vllm not importable: {e}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import tiny
    return tiny.build_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def rollout_engine(tiny_model_dir):
    require_vllm()
    import rollout
    engine = rollout.Rollout(tiny_model_dir, **TINY_ENGINE)
    assert engine.backend == "vllm"
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def engine(rollout_engine):
    return rollout_engine
