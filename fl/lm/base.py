"""A base model and its tokenizer, read from a local folder only, and the hash that pins them.

Every node of a job must fine-tune the very same base model, so a job names it by
:func:`base_model_hash` and each node checks the folder it was pointed at. Loading never falls back
to a hub: ``local_files_only=True`` on every call, and ``HF_HUB_OFFLINE`` (set in ``fl.lm``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from fl.datasets import DatasetError

# a progress bar per model load or save is noise in a node's log, where workers load every job
transformers_logging.disable_progress_bar()

# the files that decide what the model computes: its weights, its shape, its tokenisation (the
# tokenizer's vocabulary, merges, special tokens and settings, in whichever of its formats)
_WEIGHTS = "*.safetensors"
_DEFINING_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja")
_CHUNK = 1 << 20


def model_folder(model_path: str | Path) -> Path:
    """``model_path`` as a folder holding a model, or a clear error (never a hub lookup)."""
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise DatasetError(f"{path} holds no model (no config.json): pretrain one with "
                           f"`python -m fl.lm.pretrain --out {path}` or download one into it")
    return path


def load_tokenizer(model_path: str | Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a padding token (its end-of-text token when it has none)."""
    tokenizer = AutoTokenizer.from_pretrained(model_folder(model_path), local_files_only=True)
    if tokenizer.eos_token_id is None:
        raise DatasetError(f"the tokenizer in {model_path} has no end-of-text token to separate texts with")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_path: str | Path, device: torch.device | str = "cpu") -> PreTrainedModel:
    """The causal LM in float32 (LoRA updates are averaged and hashed: no half-precision
    rounding), in evaluation mode, on ``device``."""
    model = AutoModelForCausalLM.from_pretrained(model_folder(model_path), local_files_only=True,
                                                 dtype=torch.float32, use_safetensors=True)
    return model.to(device).eval()


def base_model_hash(model_path: str | Path) -> str:
    """SHA-256 hex over the model's weight files (``*.safetensors``, the only ones loaded) and the
    files that decide what those weights compute (its config, and the tokenizer files of the
    usual names: ``_DEFINING_FILES``), in sorted name order: for
    each, its name, its length and its bytes. Two folders with the same hash run the same model
    on the same token ids, wherever they were downloaded or copied."""
    folder = model_folder(model_path)
    files = {p for p in folder.glob(_WEIGHTS) if p.is_file()}
    if not files:
        raise DatasetError(f"{folder} holds no *.safetensors weights")
    files |= {folder / name for name in _DEFINING_FILES if (folder / name).is_file()}
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode("utf-8") + b"\0" + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def held_base_model(model_path: str | Path) -> str:
    """What ``model_path`` holds, to compare with a job's pinned base model: its
    :func:`base_model_hash`, or what stands there instead (no path, a folder that cannot be read)."""
    if not str(model_path):
        return "none (no --model-path)"
    try:
        return base_model_hash(model_path)
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
