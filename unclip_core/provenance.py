"""Provenance for generated images: hashes of what made them, an optional visible signature, and a policy hook.

DALL·E 2 marks its outputs; we record what made each image (model name and hash, seed, steps, guidance,
a hash of z_i). The PNG files and their text-chunk records are written by explorer.records.save_png.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw



def tensor_hash(x: torch.Tensor | np.ndarray, n_chars: int = 16) -> str:
    """Short SHA-256 of an array's float32 bytes (e.g. of z_i), stable across devices."""
    arr = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).hexdigest()[:n_chars]


def add_signature(image: Image.Image, text: str = "unCLIP") -> Image.Image:
    """Return a copy with a small visible signature (coloured bars and text) in the bottom-right corner."""
    im = image.copy()
    w, h = im.size
    draw = ImageDraw.Draw(im)
    bar = max(2, w // 32)
    colours = [(255, 255, 102), (66, 255, 255), (81, 218, 76), (255, 110, 60), (59, 102, 255)]
    for i, c in enumerate(colours):  # the DALL·E 2 signature is five coloured squares
        x0 = w - (len(colours) - i) * bar
        draw.rectangle([x0, h - bar, x0 + bar - 1, h - 1], fill=c)
    if w >= 128:
        draw.text((w - len(colours) * bar - 6 * len(text) - 2, h - 11), text, fill=(255, 255, 255))
    return im


@dataclass
class ConceptPolicy:
    """Optional check of blocked concepts on the prompt and, by CLIP zero-shot, on the generated image.

    Filtering text and image separately leaves a gap (a harmless prompt can still yield a blocked image),
    so both are checked. `encode_text`/`encode_image` are a CLIP encoder's methods returning unit vectors.
    """

    blocked: Sequence[str]
    encode_text: Callable[[list[str]], torch.Tensor] | None = None
    encode_image: Callable[[list[Image.Image]], torch.Tensor] | None = None
    threshold: float = 0.3
    neutral: Sequence[str] = field(default_factory=lambda: ("a picture", "an image of an object"))

    def __post_init__(self) -> None:
        if not self.blocked:
            raise ValueError("ConceptPolicy needs at least one blocked concept, got an empty list")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")

    def check_prompt(self, prompt: str) -> list[str]:
        """Blocked concepts the prompt names (whole-word match, case-insensitive)."""
        hits = []
        for concept in self.blocked:
            if re.search(rf"\b{re.escape(concept.lower())}\b", prompt.lower()):
                hits.append(concept)
        return hits

    def check_images(self, images: list[Image.Image]) -> list[list[str]]:
        """Per image, the blocked concepts CLIP ranks above the neutral captions with prob > threshold."""
        if self.encode_text is None or self.encode_image is None:
            raise ValueError("check_images needs encode_text and encode_image (pass a CLIP encoder's methods)")
        labels = list(self.blocked) + list(self.neutral)
        z_t = torch.as_tensor(np.asarray(self.encode_text(labels)), dtype=torch.float32)
        z_i = torch.as_tensor(np.asarray(self.encode_image(images)), dtype=torch.float32)
        probs = (100.0 * z_i @ z_t.T).softmax(dim=-1)
        out = []
        for row in probs:
            out.append([c for j, c in enumerate(self.blocked) if row[j] > self.threshold])
        return out


class BlockedContentError(ValueError):
    """Raised when the policy hook finds a blocked concept in a prompt."""
