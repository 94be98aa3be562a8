"""Texts as a ``fl.datasets.Dataset`` of token blocks, labelled by family.

A block is one training sample: ``block_size`` consecutive token ids of one family's text (its
texts joined with the end-of-text token). The label ``y`` is the block's family, which the
existing partitioners (iid / pathological / dirichlet over labels) use to deal blocks to clients,
so "two classes per client" becomes "two topic families per client". No block mixes families,
so a client's text is exactly its families' text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from fl.datasets import Dataset, DatasetError
from fl.lm.base import load_tokenizer
from fl.lm.corpus import Texts, data_files, read_data_file, stdlib_corpus

NAME = "text"


def family_names(texts: Texts) -> list[str]:
    """The families of ``texts`` in label order (sorted by name, so labels do not depend on
    the order of the texts)."""
    return sorted({family for family, _ in texts})


def token_stream(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> torch.Tensor:
    """``texts`` tokenized, each followed by the end-of-text token, joined (int64, 1-D): the
    model learns where a text ends and that the next one is unrelated."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor([token for row in encoded for token in (*row, eos)], dtype=torch.int64)


def token_blocks(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], block_size: int) -> torch.Tensor:
    """:func:`token_stream` cut into rows of ``block_size`` ids (int64 N×block_size; the
    incomplete tail is dropped)."""
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 (one token predicts the next), got {block_size}")
    ids = token_stream(tokenizer, texts)
    count = ids.numel() // block_size
    return ids[: count * block_size].view(count, block_size)


def text_dataset(model_path: str | Path, texts: Texts, block_size: int, max_blocks: int | None = None) -> Dataset:
    """``(family, text)`` pairs as token blocks of the model's tokenizer: ``x`` int64
    N×block_size, ``y`` the family's index in :func:`family_names`. ``max_blocks`` keeps at most
    that many blocks *of each family*, evenly spaced through its text (quick runs that still
    see every family and more than its first module)."""
    if not texts:
        raise DatasetError("no texts to make a dataset of")
    if max_blocks is not None and max_blocks < 1:
        raise ValueError(f"max_blocks must be positive, got {max_blocks}")
    tokenizer = load_tokenizer(model_path)
    families = family_names(texts)
    xs, ys = [], []
    for label, family in enumerate(families):
        blocks = token_blocks(tokenizer, [text for f, text in texts if f == family], block_size)
        if max_blocks is not None and len(blocks) > max_blocks:
            blocks = blocks[torch.linspace(0, len(blocks) - 1, max_blocks).round().long()]
        xs.append(blocks)
        ys.append(torch.full((len(blocks),), label, dtype=torch.int64))
    x = torch.cat(xs)
    if len(x) == 0:
        raise DatasetError(f"the texts make no complete block of {block_size} tokens")
    return Dataset(name=NAME, x=x, y=torch.cat(ys), num_classes=len(families))


def stdlib_dataset(model_path: str | Path, block_size: int, max_blocks: int | None = None) -> Dataset:
    """The standard library's docstrings reserved for federated jobs (the ``federated`` part,
    which the pretrained base model never saw), one label per family."""
    return text_dataset(model_path, stdlib_corpus("federated"), block_size, max_blocks)


def folder_dataset(model_path: str | Path, folder: str | Path, block_size: int,
                   max_blocks: int | None = None) -> Dataset:
    """A data folder's ``*.jsonl`` instructions and ``*.txt`` files, one family per file (named
    after it): a node's own data in an own-data job, or in the simulation a corpus the job's
    partition deals out by file."""
    texts = [(path.name, text) for path in data_files(folder) for text in read_data_file(path)]
    if not texts:
        raise DatasetError(f"{folder} holds no *.jsonl or *.txt text to train a language model on")
    return text_dataset(model_path, texts, block_size, max_blocks)


def job_text_dataset(name: str, model_path: str | Path, data_dir: str | Path, block_size: int,
                     max_blocks: int = 0) -> Dataset:
    """A job's text: ``stdlib`` (the standard library's docstrings kept for federated jobs) or
    ``text`` (the files in ``data_dir``); ``max_blocks`` > 0 keeps at most that many blocks of each
    family."""
    cap = max_blocks or None
    if name == "stdlib":
        return stdlib_dataset(model_path, block_size, cap)
    if name == "text":
        return folder_dataset(model_path, data_dir, block_size, cap)
    raise DatasetError(f"{name!r} is not a text dataset; choose stdlib or text")
