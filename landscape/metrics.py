"""Metrics besides the loss, with the losses' calling convention (see `landscape.losses`)."""

from __future__ import annotations

import torch


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1.0 where the highest score (dimension 1) is the target class, else 0.0; shape (N, ...)."""
    return (output.argmax(dim=1) == target).to(torch.float32)
