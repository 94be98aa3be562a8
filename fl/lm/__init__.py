"""Federated LoRA fine-tuning of a causal language model (the learning side, no networking).

- ``corpus``: the standard library's docstrings in topic families (offline, naturally non-IID)
  and readers for a node's own ``*.jsonl`` / ``*.txt`` data;
- ``pretrain``: a byte-level BPE tokenizer and a tiny Llama pretrained on that corpus
  (``python -m fl.lm.pretrain``), so the jobs need no downloaded model;
- ``base``: loading a base model and its tokenizer from a folder, offline, and its pinning hash;
- ``data``: texts → a ``fl.datasets.Dataset`` of token blocks labelled by family, so the usual
  partitioners split them across clients;
- ``worker``: ``LMWorker``, a drop-in for ``fl.federation.ClientWorker`` that trains and shares
  LoRA adapters only (FedAvg of A and B, or FFA-LoRA: A frozen, B shared).

Nothing here may reach a model hub: the hub library reads ``HF_HUB_OFFLINE`` once, when it is
first imported, so it is set here, before any submodule imports transformers.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
