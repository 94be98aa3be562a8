"""A node's network settings (from config.py's keys), shared by supernodes and edge nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeSettings:
    heartbeat_interval: float = 1.0
    dead_after: float = 3.0
    block_interval: float = 0.5
    block_max_txs: int = 500
    max_model_bytes: int = 1024 << 20
    edge_parallelism: int = 0
    model_store_bytes: int = 10240 << 20

    @classmethod
    def from_config(cls, conf: dict[str, Any]) -> "NodeSettings":
        return cls(conf["heartbeat_interval"], conf["dead_after"], conf["block_interval"],
                   conf["block_max_txs"], conf["max_model_mb"] << 20, conf["edge_parallelism"],
                   conf["model_store_mb"] << 20)
