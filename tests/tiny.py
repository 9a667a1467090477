"""Tiny local models for tests and benchmarks (nothing can be downloaded on this machine).

`build_tiny_model(out_dir)` writes a complete Hugging Face model directory that vLLM and
transformers both load: a random-weight Qwen2 (the architecture of ProRL's base model,
DeepSeek-R1-Distill-Qwen-1.5B), a byte-level BPE tokenizer trained here on a generated
corpus, a Qwen-style chat template, and a generation config whose EOS is `<|im_end|>`.

Two choices make the random model useful for tests:
  * `init_std` (0.1, not transformers' 0.02) gives logits a spread of ~1 nat, so log-prob
    comparisons are not comparing near-uniform distributions.
  * An "EOS channel": residual dimension 0 carries a constant (set in the embeddings; no
    layer writes to it) and the EOS row of lm_head reads only that dimension, calibrated so
    that EOS has about `eos_prob` per step. A plain random model almost never ends a sample
    (p ~ 1/vocab), so "EOS ends a sample" could not be tested. eos_prob=0 turns it off.

Heads are 64 wide: vLLM's CPU attention backend rejects smaller head sizes (FIELD_NOTES).
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

# Special tokens: pad, turn start, turn end (= EOS), and a BOS that, as in DeepSeek-R1-Distill-Qwen,
# both the chat template writes and the tokenizer adds (so encoding a templated string with special
# tokens gives two BOS: rollout.py must not).
PAD, IM_START, IM_END, BOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|bos|>"
THINK_TOKENS = ["<think>", "</think>"]  # ordinary added tokens: they must survive decoding

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}" + IM_START + "{{ m['role'] }}\n{{ m['content'] }}" + IM_END + "\n{% endfor %}"
    "{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
)

_WORDS = ("the answer is what find compute solve number sum product graph color vertex edge box "
          "move agent target step think so we get because therefore let check total each of and "
          "to in a is are with for first then final please reason put your inside").split()


def _corpus(n_lines: int, seed: int) -> list[str]:
    """Generated text with words, numbers, arithmetic, LaTeX and tags, so BPE learns merges
    for what prompts of every domain contain."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = rng.choices(_WORDS, k=rng.randint(4, 12))
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        lines.append(" ".join(words) + f" {a} + {b} = {a + b}. \\boxed{{{a * b}}} <answer>{b}</answer>")
        lines.append(f"<think> {' '.join(rng.choices(_WORDS, k=5))} </think> ({a}, {b}) [{a % 7}]: {{\"0\": {b % 4}}}")
    return lines


def build_tokenizer(vocab_size: int = 512, seed: int = 0):
    """A byte-level BPE PreTrainedTokenizerFast with pad/eos tokens and a chat template.
    Byte level: any text encodes and decodes back exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, IM_START, IM_END, BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(2000, seed), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
                                   additional_special_tokens=[IM_START])
    fast.add_tokens(THINK_TOKENS)  # not special: skip_special_tokens must keep them in the text
    fast.chat_template = CHAT_TEMPLATE
    return fast


@torch.no_grad()
def _add_eos_channel(model, eos_id: int, eos_prob: float, seed: int) -> None:
    """Make EOS have about `eos_prob` per step (see module docstring)."""
    inner = model.model
    inner.embed_tokens.weight[:, 0] = 1.0                      # constant residual channel 0
    for layer in inner.layers:                                  # no sublayer writes to it
        layer.self_attn.o_proj.weight[0, :] = 0.0
        layer.mlp.down_proj.weight[0, :] = 0.0
    model.lm_head.weight[:, 0] = 0.0                            # only EOS reads it
    model.lm_head.weight[eos_id, :] = 0.0
    # Calibrate on random inputs: EOS logit b with e^b / (e^b + sum_other e^l) = eos_prob.
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=g)
    out = model(input_ids=ids, output_hidden_states=True)
    h = out.hidden_states[-1]                                   # (B, T, H), after the final norm
    lse_other = torch.logsumexp(out.logits.float(), dim=-1).mean()  # EOS logit is 0 here
    b = math.log(eos_prob / (1 - eos_prob)) + lse_other.item()
    model.lm_head.weight[eos_id, 0] = b / h[..., 0].mean().item()


def build_tiny_model(out_dir, *, hidden: int = 128, layers: int = 2, heads: int = 2, kv_heads: int | None = None,
                     head_dim: int = 64, intermediate: int | None = None, vocab_size: int = 512,
                     init_std: float = 0.1, eos_prob: float = 0.1, max_positions: int = 4096,
                     tie_embeddings: bool = False, seed: int = 0) -> Path:
    """Write a random Qwen2 + tokenizer directory at out_dir; returns its Path."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size, seed)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        head_dim=head_dim, max_position_embeddings=max_positions, initializer_range=init_std,
        tie_word_embeddings=tie_embeddings, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_id, pad_token_id=pad_id)
    if config.hidden_size // config.num_attention_heads != head_dim:
        raise ValueError(f"tiny.build_tiny_model: hidden={hidden} / heads={heads} must equal head_dim={head_dim}")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float().eval()
    if eos_prob > 0:
        if tie_embeddings:
            raise ValueError("tiny.build_tiny_model: the EOS channel needs an untied lm_head (eos_prob=0 to tie)")
        _add_eos_channel(model, eos_id, eos_prob, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id).save_pretrained(out)
    (out / "tiny.json").write_text(json.dumps({"eos_prob": eos_prob, "init_std": init_std, "seed": seed,
                                               "params": sum(p.numel() for p in model.parameters())}))
    return out
