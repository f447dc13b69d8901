"""A tiny deterministic stand-in for unclip_core.clip.ClipEncoder, so store/CLI tests need no trained CLIP."""
from __future__ import annotations

import hashlib

import numpy as np
import torch


class FakeEncoder:
    """Each caption / image maps to a fixed random unit vector seeded by a hash of its text / pixels."""

    def __init__(self, spec: str = "test-fake", dim: int = 16, model_id: str | None = None) -> None:
        self.spec = spec
        self.embed_dim = dim
        self.model_id = model_id or f"fake-{dim}"
        self.n_encoded = 0

    def _vec(self, data: bytes) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.embed_dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        self.n_encoded += len(texts)
        return torch.from_numpy(np.stack([self._vec(t.encode()) for t in texts]))

    def encode_image(self, images: list) -> np.ndarray:
        self.n_encoded += len(images)
        return np.stack([self._vec(im.convert("RGB").tobytes()) for im in images])
