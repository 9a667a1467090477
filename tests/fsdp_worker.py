"""One GRPO update (train.policy_update) on a fixed synthetic batch; run alone or under torchrun.

    python tests/fsdp_worker.py MODEL_DIR OUT.pt                       # one process, no FSDP
    torchrun --nproc_per_node 2 tests/fsdp_worker.py MODEL_DIR OUT.pt  # two ranks, FSDP2 on gloo

The global batch is the same in both: G groups of N samples with fixed token ids and rewards.
Rank r of W takes, from every mini-batch, its r-th 1/W share of groups, so each global mini-batch
holds the same sequences as the single process's. Rank 0 saves the metrics and the full weights.
"""
import sys

import torch
import torch.distributed as dist

import grpo
import train

G, N, UPDATES, PROMPT_LEN, SEED = 8, 4, 2, 6, 0


def synthetic_groups(vocab: int):
    g = torch.Generator().manual_seed(SEED)
    groups = []
    for _ in range(G):
        prompt = torch.randint(3, vocab, (PROMPT_LEN,), generator=g).tolist()
        samples = []
        for _ in range(N):
            R = int(torch.randint(2, 9, (1,), generator=g))
            samples.append({"prompt_ids": prompt, "response_ids": torch.randint(3, vocab, (R,), generator=g).tolist(),
                            "logprobs": [0.0] * R})
        groups.append((samples, torch.randint(0, 2, (N,), generator=g).float()))
    return groups


def main(model_dir: str, out: str):
    cfg = train.Config(model=model_dir, prompts_per_step=G, mini_batch_prompts=G // UPDATES, n=N,
                       micro_batch_seqs=3, kl_coef=0.1, lr=1e-2, temperature=1.2)
    rank, world, device = train.setup_distributed(cfg)
    policy = train.load_model(model_dir, cfg, device, world, trainable=True)
    ref = train.load_model(model_dir, cfg, device, world, trainable=False)
    with torch.no_grad():  # move the reference away from the policy so the KL term has a gradient
        for p in ref.parameters():
            p.mul_(0.9)
    opt = train.make_optimizer(policy, cfg)
    groups = synthetic_groups(policy.config.vocab_size)
    per_mb = G // UPDATES
    mine = [groups[k * per_mb + j] for k in range(UPDATES) for j in range(per_mb) if j * world // per_mb == rank]
    samples = [s for grp, _ in mine for s in grp]
    adv = torch.cat([grpo.group_advantages(r, N) for _, r in mine])
    batch = train.make_batch(samples, pad_id=0, device=device)
    metrics = train.policy_update(policy, ref, opt, batch, adv, cfg, world)
    metrics.pop("_old_logp")
    weights = train.full_state_dict(policy)
    train.copy_weights(ref, policy)  # a reference reset after the update (sharded and root params alike)
    ref_weights = train.full_state_dict(ref)
    if rank == 0:
        torch.save({"metrics": metrics, "weights": weights, "ref_after_reset": ref_weights}, out)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
