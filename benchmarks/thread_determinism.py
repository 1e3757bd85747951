"""Does PyTorch's thread count change what a model computes? One training step and one sampling
run of a saved model, repeated at each thread count, compared bit for bit.

A figure that does not reproduce is often blamed on the thread count (a parallel reduction sums
in another order). This checks it for a given model instead of assuming it: the loss and every
gradient of one forward/backward pass on a seeded random batch, and the tokens sampled from a
seeded random prompt batch, at 1 thread and at each other count asked for:

    python benchmarks/thread_determinism.py --model runs/fold0/seed0/sft --threads 1 2

Prints one line per thread count and the verdict (identical or the largest difference).
"""

from __future__ import annotations

import argparse

import torch


def _step(model, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return float(loss.detach()), grads.detach().clone()


def _sample(model, prompts: torch.Tensor, new_tokens: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=True,
            top_k=0,
            max_new_tokens=new_tokens,
            pad_token_id=model.config.pad_token_id or 0,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved model directory (safetensors)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=16, help="sequences in the training batch")
    parser.add_argument("--length", type=int, default=160, help="tokens per training sequence")
    parser.add_argument("--new-tokens", type=int, default=30, help="tokens sampled per prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, use_safetensors=True)
    gen = torch.Generator().manual_seed(args.seed)
    vocab = model.config.vocab_size
    batch = torch.randint(0, vocab, (args.batch, args.length), generator=gen)
    prompts = torch.randint(0, vocab, (64, 40), generator=gen)
    counts = [1] + [t for t in args.threads if t != 1]
    results = {}
    for threads in counts:
        torch.set_num_threads(threads)
        model.train()
        loss, grads = _step(model, batch)
        model.eval()
        tokens = _sample(model, prompts, args.new_tokens, args.seed)
        results[threads] = (loss, grads, tokens)
        print(f"threads={threads}: loss {loss!r}, gradient norm {float(grads.norm())!r}")
    loss1, grads1, tokens1 = results[1]
    for threads in counts[1:]:
        loss, grads, tokens = results[threads]
        same = loss == loss1 and torch.equal(grads, grads1) and torch.equal(tokens, tokens1)
        if same:
            print(f"{threads} vs 1 thread: identical loss, gradients and sampled tokens")
        else:
            print(
                f"{threads} vs 1 thread: loss differs by {abs(loss - loss1):.3g}, largest gradient "
                f"difference {float((grads - grads1).abs().max()):.3g}, sampled tokens "
                f"{'identical' if torch.equal(tokens, tokens1) else 'differ'}"
            )


if __name__ == "__main__":
    main()
