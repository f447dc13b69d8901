"""Hugging Face CLIP towers (transformers' CLIPTextModelWithProjection / CLIPVisionModelWithProjection) behind the
open_clip model interface that `ClipEncoder` reads, so every family's own CLIP (Karlo's OpenAI ViT-L/14 text
tower, Kandinsky 2.2's ViT-bigG/14 towers, Stable unCLIP's) encodes text and images through the one class.

A folder in diffusers' layout holds the towers as subfolders: `text_encoder/` + `tokenizer/` and/or
`image_encoder/` (+ an optional `image_processor/` or `feature_extractor/` with preprocessor_config.json).
`load_hf_clip(folder)` reads whichever are present; a missing tower makes its encode_* raise a ValueError that
names the folder it needs. transformers is imported only here, and only when such a folder is loaded.

Conventions, as diffusers' pipelines use them:
  * z_t is `text_embeds` (the text projection of the [EOT] token), z_i is `image_embeds`; ClipEncoder
    L2-normalises them unless asked not to (normalize=False, what Karlo and Kandinsky consume);
  * token features are `last_hidden_state` (after the final layer norm); the text mask ends at the tokenizer's
    end-of-text id (ClipEncoder.token_mask), which equals the tokenizer's attention mask;
  * images are resized (shortest side, bicubic), centre-cropped and normalised with the processor's mean and std
    (OpenAI CLIP's when the folder has no processor config).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .clip import ClipEncoder

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSOR_FOLDERS = ("image_processor", "feature_extractor")


class HFTextTower(nn.Module):
    """HF CLIPTextModelWithProjection as an open_clip-like tower: z_t = text_embeds, tokens = last_hidden_state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.transformer = model
        self.output_tokens = False
        # a CLIPTextModel (Stable Diffusion's text encoder) has no projection: token features only, no z_t
        self.has_projection = hasattr(model, "text_projection")

    @property
    def text_projection(self) -> nn.Linear | None:
        return getattr(self.transformer, "text_projection", None)

    @property
    def width(self) -> int:
        return int(self.transformer.config.hidden_size)

    def forward(self, ids: Tensor) -> Tensor | tuple[Tensor | None, Tensor]:
        out = self.transformer(input_ids=ids)
        z_t = out.text_embeds if self.has_projection else None
        if self.output_tokens:
            return z_t, out.last_hidden_state
        if z_t is None:
            raise ValueError("this text tower is a CLIPTextModel without a projection (as Stable Diffusion's text "
                             "encoder): it gives token features (text_tokens), not text embeddings z_t; load a "
                             "CLIPTextModelWithProjection for z_t")
        return z_t


class HFVisionTower(nn.Module):
    """HF CLIPVisionModelWithProjection as an open_clip-like visual tower: normalised pixels -> image_embeds.

    `preprocess_cfg` (open_clip's keys) and `image_size` let ClipEncoder preprocess images as the processor does.
    """

    def __init__(self, model: nn.Module, preprocess_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.transformer = model
        self.preprocess_cfg = dict(preprocess_cfg)
        self.image_size = int(preprocess_cfg["size"])

    def forward(self, pixels: Tensor) -> Tensor:
        return self.transformer(pixel_values=pixels).image_embeds


class _MissingTower:
    """Stands in for a tower the folder lacks; `preprocess_cfg` keeps ClipEncoder constructible."""

    def __init__(self, what: str, folder: Path) -> None:
        self.what, self.folder = what, folder
        self.preprocess_cfg = {"size": 224, "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
                               "resize_mode": "shortest"}
        self.image_size = 224

    def fail(self) -> None:
        need = "image_encoder/ (a CLIPVisionModelWithProjection)" if self.what == "image" else \
            "text_encoder/ and tokenizer/ (a CLIPTextModelWithProjection and its tokenizer)"
        raise ValueError(f"{self.folder} holds no CLIP {self.what} tower, so {self.what}s cannot be encoded; "
                         f"it needs {need}. For variations, inversion and PCA reconstructions of a family whose "
                         "download has no image tower (Karlo), add the matching CLIP image tower there "
                         "(docs/real_models.md)")


class HFClipModel(nn.Module):
    """Text and/or image towers of a Hugging Face CLIP with open_clip's encode_text / encode_image."""

    def __init__(self, text_model: nn.Module | None, vision_model: nn.Module | None, context_length: int,
                 preprocess_cfg: dict[str, Any], folder: Path) -> None:
        super().__init__()
        self.text = HFTextTower(text_model) if text_model is not None else None
        self._missing_text = _MissingTower("text", folder) if text_model is None else None
        self.visual = (HFVisionTower(vision_model, preprocess_cfg) if vision_model is not None
                       else _MissingTower("image", folder))
        self.context_length = context_length
        proj = text_model.config.projection_dim if self.text is not None and self.text.has_projection else \
            vision_model.config.projection_dim if vision_model is not None else None
        self.embed_dim = int(proj) if proj is not None else None

    def encode_text(self, ids: Tensor, normalize: bool = False) -> Tensor:
        if self.text is None:
            self._missing_text.fail()
        z_t = self.text(ids)
        return F.normalize(z_t, dim=-1) if normalize else z_t

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        if isinstance(self.visual, _MissingTower):
            self.visual.fail()
        z_i = self.visual(images)
        return F.normalize(z_i, dim=-1) if normalize else z_i


class HFTokenizer:
    """A transformers CLIPTokenizer called as open_clip tokenizers are: prompts -> (B, L) ids padded to L.

    `eot_id` is the tokenizer's end-of-text id (ClipEncoder.token_mask reads it)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @property
    def eot_id(self) -> int | None:
        value = getattr(self.tokenizer, "eos_token_id", None)
        return None if value is None else int(value)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        L = context_length or self.tokenizer.model_max_length
        return self.tokenizer(list([texts] if isinstance(texts, str) else texts), padding="max_length",
                              max_length=L, truncation=True, return_tensors="pt").input_ids


def read_preprocess_cfg(folder: Path, image_size: int) -> dict[str, Any]:
    """open_clip preprocess settings from the folder's CLIPImageProcessor config (OpenAI CLIP's without one)."""
    for sub in PROCESSOR_FOLDERS:
        path = folder / sub / "preprocessor_config.json"
        if path.is_file():
            cfg = json.loads(path.read_text(encoding="utf-8"))
            crop = cfg.get("crop_size", image_size)
            size = crop.get("height", image_size) if isinstance(crop, dict) else int(crop)
            return {"size": int(size), "mean": tuple(cfg.get("image_mean", OPENAI_MEAN)),
                    "std": tuple(cfg.get("image_std", OPENAI_STD)), "interpolation": "bicubic",
                    "resize_mode": "shortest"}
    return {"size": int(image_size), "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
            "resize_mode": "shortest"}


def is_hf_clip_folder(folder: str | Path) -> bool:
    """Whether `folder` holds Hugging Face CLIP towers in diffusers' layout (text_encoder/ or image_encoder/)."""
    folder = Path(folder)
    return (folder / "text_encoder" / "config.json").is_file() or (folder / "image_encoder" / "config.json").is_file()


def load_hf_clip(folder: str | Path, device: str = "cpu") -> ClipEncoder:
    """A folder with text_encoder/ + tokenizer/ and/or image_encoder/ -> our ClipEncoder (float32)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    from .clip import ClipEncoder
    folder = Path(folder)
    if not is_hf_clip_folder(folder):
        raise FileNotFoundError(f"{folder} holds no Hugging Face CLIP tower: expected text_encoder/ (+ tokenizer/) "
                                "and/or image_encoder/, each with a config.json")
    text = tok = None
    L = 77
    if (folder / "text_encoder" / "config.json").is_file():
        if not (folder / "tokenizer").is_dir():
            raise FileNotFoundError(f"{folder / 'tokenizer'} not found: the text tower in {folder / 'text_encoder'} "
                                    "needs its tokenizer folder")
        arch = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8")).get("architectures")
        text_cls = CLIPTextModel if arch == ["CLIPTextModel"] else CLIPTextModelWithProjection
        text = text_cls.from_pretrained(str(folder / "text_encoder"), local_files_only=True, torch_dtype=torch.float32)
        tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        L = int(min(tok.model_max_length, text.config.max_position_embeddings))
    vision = None
    image_size = 224
    if (folder / "image_encoder" / "config.json").is_file():
        vision = CLIPVisionModelWithProjection.from_pretrained(str(folder / "image_encoder"), local_files_only=True,
                                                               torch_dtype=torch.float32)
        image_size = int(vision.config.image_size)
    model = HFClipModel(text, vision, L, read_preprocess_cfg(folder, image_size), folder)
    tokenizer = HFTokenizer(tok) if tok is not None else _no_tokenizer(folder)
    return ClipEncoder(model, tokenizer, spec=str(folder), device=device)


def _no_tokenizer(folder: Path) -> Any:
    def tokenize(texts: Any, context_length: int | None = None) -> Tensor:
        _MissingTower("text", folder).fail()
        raise AssertionError("unreachable")
    return tokenize


__all__ = ["HFClipModel", "HFTextTower", "HFTokenizer", "HFVisionTower", "is_hf_clip_folder", "load_hf_clip",
           "read_preprocess_cfg"]
