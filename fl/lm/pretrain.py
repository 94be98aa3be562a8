"""Pretrain a tiny causal language model on the standard library's docstrings, offline.

Federated LoRA needs a base model every node holds. Downloading one is not always possible (edge
nodes without internet, tests, CI), so this makes one from text every Python installation has: a
byte-level BPE tokenizer trained with ``tokenizers`` and a small ``LlamaForCausalLM`` trained on
the corpus's ``pretrain`` part, then saved with ``save_pretrained`` (safetensors) as any Hugging
Face model folder is, so the rest of ``fl.lm`` treats it exactly like a downloaded one.

    python -m fl.lm.pretrain --out models/tiny-stdlib-lm --minutes 3

The held-out perplexity is measured on the corpus's ``heldout`` part; the ``federated`` part,
which the jobs train and evaluate on, is never seen here.

On a host whose cores other busy processes share, run it with ``OMP_WAIT_POLICY=PASSIVE``: on a
2-core VM beside a running test suite, torch's two spin-waiting OpenMP threads took 2-3.5 s a
step instead of 0.1 s, passive ones 0.2 s (0.145 s when the host is idle).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fl.lm.base import base_model_hash
from fl.lm.corpus import stdlib_corpus
from fl.lm.data import token_blocks, token_stream
from fl.memory import keep_freed_memory
from fl.train import resolve_device, seed_global

EOS = "<|endoftext|>"
PAD = "<|pad|>"
WARMUP_FRACTION = 0.05  # of the budget: linear warm-up, then cosine decay to FINAL_LR_FRACTION
FINAL_LR_FRACTION = 0.1
LOG_EVERY = 0.1  # of the budget between progress lines
RECORD = "pretraining.json"  # what made the model, beside it (not part of base_model_hash)


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run did: where the model is, how long it trained, how good it is."""

    out_dir: str
    steps: int
    seconds: float
    tokens: int
    parameters: int
    train_loss: float  # mean over the last progress interval
    heldout_perplexity: float
    base_model_hash: str


def train_tokenizer(texts: Sequence[str], vocab_size: int, block_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``texts`` (every byte is a
    token, so any text encodes), with ``EOS`` ending texts and ``PAD`` padding."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=block_size)


def build_model(tokenizer: PreTrainedTokenizerFast, *, layers: int, hidden: int, heads: int, block_size: int,
                seed: int) -> LlamaForCausalLM:
    """A small Llama (tied embeddings, SwiGLU width 8/3 × hidden as in Llama) initialised from ``seed``."""
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=_multiple(hidden * 8 // 3, 32),
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=block_size, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    seed_global(seed)
    return LlamaForCausalLM(config)


def _multiple(value: int, of: int) -> int:
    return max(of, (value + of - 1) // of * of)


@torch.no_grad()
def perplexity(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """exp of the mean next-token cross-entropy of ``model`` over ``blocks``."""
    was_training = model.training
    model.eval()
    loss_sum, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size]
        logits = model(input_ids=batch).logits[:, :-1]
        loss_sum += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                            batch[:, 1:].reshape(-1), reduction="sum"))
        count += batch[:, 1:].numel()
    model.train(was_training)
    return math.exp(loss_sum / count)


def pretrain(
    out_dir: str | Path,
    *,
    seconds: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    vocab_size: int = 2048,
    layers: int = 4,
    hidden: int = 128,
    heads: int = 4,
    block_size: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> PretrainResult:
    """Train a tokenizer and a tiny Llama on the corpus for ``seconds`` of training or ``steps``
    optimiser steps (whichever ends first; one of them is required) and save both into
    ``out_dir``. AdamW, seeded (with ``steps`` alone a CPU run repeats exactly; a time budget ends
    wherever the clock says). The defaults reach a useful model in about three minutes on two
    CPU cores."""
    if seconds is None and steps is None:
        raise ValueError("give a budget: seconds, steps or both")
    run_device = resolve_device(device)
    out = Path(out_dir)
    pretrain_texts = [text for _, text in stdlib_corpus("pretrain")]
    tokenizer = train_tokenizer(pretrain_texts, vocab_size, block_size)
    stream = token_stream(tokenizer, pretrain_texts).to(run_device)
    heldout = token_blocks(tokenizer, [text for _, text in stdlib_corpus("heldout")], block_size).to(run_device)
    model = build_model(tokenizer, layers=layers, hidden=hidden, heads=heads, block_size=block_size,
                        seed=seed).to(run_device)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"corpus: {stream.numel():,} training tokens, {heldout.numel():,} held out; vocabulary {len(tokenizer)}; "
        f"model: {parameters:,} parameters ({layers} layers, hidden {hidden}, {heads} heads) on {run_device}")

    step, seconds_used, train_loss = _fit(model, stream, heldout, seconds=seconds, steps=steps, seed=seed,
                                          batch_size=batch_size, lr=lr, log=log)
    heldout_ppl = perplexity(model, heldout)
    log(f"trained {step} steps ({step * batch_size * block_size:,} tokens) in {seconds_used:.0f} s; "
        f"held-out perplexity {heldout_ppl:.2f}")

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    result = PretrainResult(out_dir=str(out), steps=step, seconds=round(seconds_used, 2),
                            tokens=step * batch_size * block_size, parameters=parameters, train_loss=train_loss,
                            heldout_perplexity=heldout_ppl, base_model_hash=base_model_hash(out))
    settings = dict(seed=seed, vocab_size=vocab_size, layers=layers, hidden=hidden, heads=heads,
                    block_size=block_size, batch_size=batch_size, lr=lr, device=str(run_device))
    (out / RECORD).write_text(json.dumps({"settings": settings, "result": asdict(result)}, indent=2) + "\n")
    log(f"saved to {out} (base model hash {result.base_model_hash})")
    return result


def _fit(model: LlamaForCausalLM, stream: torch.Tensor, heldout: torch.Tensor, *, seconds: float | None,
         steps: int | None, seed: int, batch_size: int, lr: float,
         log: Callable[[str], None]) -> tuple[int, float, float]:
    """AdamW on random windows of ``stream`` (as long as the held-out blocks) until the budget is
    spent, the learning rate following :func:`_schedule` over it; returns the steps taken, the
    seconds they took and the mean training loss of the last progress interval."""
    block_size = heldout.shape[1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.arange(block_size)
    model.train()
    start = time.perf_counter()
    step, next_log, interval_loss, interval_steps, train_loss = 0, LOG_EVERY, 0.0, 0, float("nan")
    while True:
        elapsed = time.perf_counter() - start
        progress = max(elapsed / seconds if seconds else 0.0, step / steps if steps else 0.0)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * _schedule(progress)
        starts = torch.randint(0, stream.numel() - block_size, (batch_size,), generator=generator)
        batch = stream[(starts[:, None] + offsets).to(stream.device)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        interval_loss += float(loss.detach())
        interval_steps += 1
        if progress >= next_log:
            train_loss = interval_loss / interval_steps
            log(f"step {step:5d}  {elapsed:5.0f} s  train loss {train_loss:.3f}  "
                f"held-out perplexity {perplexity(model, heldout):8.2f}  lr {optimizer.param_groups[0]['lr']:.2e}")
            next_log += LOG_EVERY
            interval_loss, interval_steps = 0.0, 0
    if interval_steps:
        train_loss = interval_loss / interval_steps
    return step, time.perf_counter() - start, train_loss


def _schedule(progress: float) -> float:
    """The learning-rate factor at ``progress`` ∈ [0, 1) of the budget."""
    if progress < WARMUP_FRACTION:
        return max(progress / WARMUP_FRACTION, 0.01)
    decay = (progress - WARMUP_FRACTION) / (1 - WARMUP_FRACTION)
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * decay))


_TUNABLE = ("seed", "vocab_size", "layers", "hidden", "heads", "block_size", "batch_size", "lr", "device")


def main(argv: Sequence[str] | None = None) -> PretrainResult:
    parser = argparse.ArgumentParser(prog="python -m fl.lm.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models/tiny-stdlib-lm", help="the model folder to write")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time (default 3)")
    parser.add_argument("--steps", type=int, help="stop after this many steps (also: before --minutes ends)")
    for name, param in inspect.signature(pretrain).parameters.items():  # the function's defaults, once
        if name in _TUNABLE:
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(param.default), default=param.default,
                                help=f"default {param.default}")
    args = vars(parser.parse_args(argv))
    keep_freed_memory()  # a step's activations are mapped afresh otherwise: 5-20× slower steps on small VMs
    return pretrain(args.pop("out"), seconds=args.pop("minutes") * 60, **args)


if __name__ == "__main__":
    main()
