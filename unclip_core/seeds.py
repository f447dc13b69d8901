"""Seeds, the one home for them: check a seed, draw one when none is given, and make the torch generator.

`seed=None` never means "whatever the global RNG holds": a fresh seed is drawn from the OS, used, and returned so
the output can record it and a rerun with that seed reproduces the output.
"""
from __future__ import annotations

import secrets

import numpy as np
import torch

MAX_SEED = 2**63 - 1


def check_seed(seed: object, name: str = "seed") -> int:
    """An int seed in [0, 2**63 - 1] (numpy ints accepted), else TypeError/ValueError naming `name`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 0, got {type(seed).__name__} {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"{name} must lie in [0, 2**63 - 1], got {seed}")
    return int(seed)


def draw_seed() -> int:
    """A fresh seed from the OS (31 bits, short enough to type back)."""
    return secrets.randbelow(2**31 - 1)


def generator(seed: int | torch.Generator | None, device: torch.device | str = "cpu"
              ) -> tuple[torch.Generator, int | None]:
    """(generator, seed to record): an int seeds a new generator; None draws a seed first; a caller's generator is
    used as given (its seed is the caller's to record: None is returned)."""
    if isinstance(seed, torch.Generator):
        return seed, None
    seed = draw_seed() if seed is None else check_seed(seed)
    return torch.Generator(device=device).manual_seed(seed), seed
