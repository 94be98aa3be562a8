"""One line naming the machine a benchmark ran on, for the foot of its table."""

from __future__ import annotations

import os
import platform

import torch


def machine() -> str:
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}, python {platform.python_version()}")
