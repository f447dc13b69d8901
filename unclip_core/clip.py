"""CLIP text and image encoders (Radford et al. 2021) over open_clip: the z_t, z_i and text tokens unCLIP consumes.

`ClipEncoder.load(spec)` accepts:
  - a bundled name: "shapes-clip" (unclip_core/bundled/NAME);
  - "ARCH:/path/to/weights.{pt,pth,bin,safetensors}": any open_clip architecture (`open_clip.list_models()`,
    or one registered with `open_clip.add_model_config`) with local weights, OpenAI's TorchScript .pt included
    (those are built with QuickGELU, as OpenAI trained them);
  - a folder holding open_clip_config.json and open_clip_model.safetensors / open_clip_pytorch_model.bin /
    model.safetensors (+ vocab.json for a word-level tokenizer);
  - "ARCH/pretrained_tag" or "hf-hub:org/name": downloaded by open_clip when online; offline (HF_HUB_OFFLINE=1
    or no answer from huggingface.co within ~1 s) only weights already in the Hugging Face cache load.
Outputs are float32 torch tensors on CPU (call `.numpy()` for arrays). Prompts longer than the context length
are truncated with a warning naming the prompt.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import socket
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2
import torch
from PIL import Image

from unclip_core.checkpoint import BUNDLED_DIR
from unclip_core.checks import check_positive_int
from unclip_core.imageio import ImageLike, load_image
from unclip_core.tokenizer import WordTokenizer

WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "model.safetensors")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_SPEC_FORMS = ("a bundled name (e.g. 'shapes-clip'), 'ARCH:/path/to/weights.pt|.bin|.safetensors', "
               "a folder with open_clip_config.json, 'ARCH/pretrained_tag' or 'hf-hub:org/name'")


def bundled_names() -> list[str]:
    """Names of the CLIP models shipped in unclip_core/bundled (folders with open_clip_config.json)."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(d.name for d in BUNDLED_DIR.iterdir() if (d / "open_clip_config.json").is_file())


def _resolve_bundled(name: str) -> Path:
    # unclip_core.checkpoint.list_bundled() lists folders with config.json / pipeline.json; CLIP folders are
    # open_clip's format (open_clip_config.json), so they are found here
    return BUNDLED_DIR / name


def _hub_offline_reason(timeout_s: float = 1.0) -> str | None:
    """Why downloads cannot work now (HF_HUB_OFFLINE set, or no TCP answer from huggingface.co), else None."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    return _probe_hub(timeout_s)


@lru_cache(maxsize=1)
def _probe_hub(timeout_s: float) -> str | None:
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return None
    except OSError as exc:
        return f"no connection to {host} ({exc.__class__.__name__})"


def _in_hf_cache(repo_id: str, filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, filename)
    return isinstance(found, str) and os.path.isfile(found)


def _offline_error(spec: str, reason: str, arch: str | None) -> ValueError:
    arch = arch or "ARCH"
    return ValueError(
        f"cannot download CLIP weights for spec={spec!r}: offline ({reason}) and the weights are not in the "
        f"Hugging Face cache. Pass a local file instead: ClipEncoder.load('{arch}:/path/to/open_clip_pytorch_model.bin') "
        f"(.pt, .bin and .safetensors work, OpenAI's .pt included), or a folder with open_clip_config.json and "
        f"open_clip_model.safetensors; or download once while online")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _check_arch(arch: str, spec: str) -> str:
    models = open_clip.list_models()
    if arch.replace("/", "-") in models:
        return arch.replace("/", "-")
    close = difflib.get_close_matches(arch, models, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(f"spec={spec!r}: architecture {arch!r} is not an open_clip model{hint}. "
                     "See open_clip.list_models(), or register a JSON config with open_clip.add_model_config(path)")


class _DropRandomInitNotice(logging.Filter):
    """Drop open_clip's 'initialized randomly' notice when we load the weights ourselves right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def _create_model(name: str, **kwargs: Any) -> torch.nn.Module:
    quiet = _DropRandomInitNotice()
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(name, **kwargs)
    finally:
        logging.getLogger().removeFilter(quiet)


ALLOW_TORCHSCRIPT_ENV = "UNCLIP_ALLOW_TORCHSCRIPT"


def _check_plain_weights(path: Path, spec: str) -> None:
    """Refuse a weights file whose pickle holds anything beyond tensors and plain containers, without running it."""
    if path.suffix == ".safetensors":
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ValueError(f"spec={spec!r}: {path} is not a plain tensor checkpoint ({exc.__class__.__name__}: "
                         f"{first}); it was refused without running anything in it. Use a .safetensors file or a "
                         "state dict saved with torch.save(model.state_dict(), path)") from None


def _load_weights_file(arch: str, path: Path, spec: str, device: str, allow_torchscript: bool = False
                       ) -> torch.nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"spec={spec!r}: weights file not found: {path}")
    if _is_torchscript(path):
        if not (allow_torchscript or os.environ.get(ALLOW_TORCHSCRIPT_ENV) == "1"):
            raise ValueError(f"spec={spec!r}: {path} is a TorchScript archive, and a TorchScript archive is code that "
                             "runs when it is loaded. Load it only if you trust its source (OpenAI's released "
                             "ViT-*.pt files are such archives): pass allow_torchscript=True to ClipEncoder.load, "
                             f"or set {ALLOW_TORCHSCRIPT_ENV}=1 for the command line")
        # OpenAI's released .pt files are TorchScript archives of a QuickGELU model
        try:
            jit_model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ValueError(f"spec={spec!r}: {path} looks like a TorchScript archive but torch.jit.load failed "
                             f"({exc.__class__.__name__}); is the file complete?") from None
        state = {k: v for k, v in jit_model.state_dict().items()
                 if k not in _JIT_EXTRA_KEYS and not k.endswith("attn_mask")}  # buffers, not weights
        model = _create_model(arch, force_quick_gelu=True, device="cpu")
        if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
            state = open_clip.model.convert_to_custom_text_state_dict(state)
        _load_state(model, {k: v.float() for k, v in state.items()}, spec)
    else:
        _check_plain_weights(path, spec)
        model = _create_model(arch, device="cpu")
        try:
            open_clip.load_checkpoint(model, str(path))
        except Exception as exc:  # open_clip raises RuntimeError, AssertionError, KeyError... on a mismatch
            detail = " ".join(str(exc).split())[:300]
            raise ValueError(f"spec={spec!r}: the weights in {path} do not fit architecture {arch!r} "
                             f"({exc.__class__.__name__}: {detail}); pass the architecture they were trained "
                             "with, or check that the file is a CLIP state dict") from None
    return model.to(device)


def _load_state(model: torch.nn.Module, state: dict, spec: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"spec={spec!r}: the weights do not fit the architecture ({len(missing)} missing keys "
                         f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} of another "
                         f"shape {wrong[:3]}); pass the architecture they were trained with")
    model.load_state_dict(state, strict=True)


def _folder_world(folder: Path) -> int | None:
    """The ShapesWorld version a CLIP folder was trained on (its train_config), None for other models."""
    cfg = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
    train = cfg.get("train_config")
    return int(train.get("world", 1)) if isinstance(train, dict) else None  # v1 predates the field


def bundled_world(name: str = "shapes-clip") -> int:
    """The ShapesWorld version a bundled CLIP (and the bundled family built on it) was trained on."""
    if name not in bundled_names():
        raise ValueError(f"{name!r} is not a bundled CLIP; bundled: {', '.join(bundled_names())}")
    world = _folder_world(_resolve_bundled(name))
    if world is None:
        raise ValueError(f"bundled CLIP {name!r} records no ShapesWorld training config")
    return world


def _load_folder(folder: Path, spec: str, device: str) -> tuple[torch.nn.Module, Any]:
    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"spec={spec!r}: {folder} has no open_clip_config.json; a model folder needs "
                                f"open_clip_config.json and one of {', '.join(WEIGHT_NAMES)}")
    if "model_cfg" not in json.loads(config.read_text(encoding="utf-8")):
        raise ValueError(f"spec={spec!r}: {config} has no 'model_cfg' entry; write it as open_clip does "
                         "({'model_cfg': {...}, 'preprocess_cfg': {...}})")
    if not any((folder / n).is_file() for n in WEIGHT_NAMES):
        raise FileNotFoundError(f"spec={spec!r}: no weights in {folder}; expected one of {', '.join(WEIGHT_NAMES)}")
    try:
        model = open_clip.create_model(f"local-dir:{folder}", device=device)
    except Exception as exc:  # open_clip raises RuntimeError, AssertionError, KeyError... on a bad folder
        detail = " ".join(str(exc).split())[:300]
        raise ValueError(f"spec={spec!r}: could not build the model in {folder} ({exc.__class__.__name__}: "
                         f"{detail}); check that open_clip_config.json describes the saved weights") from None
    vocab = folder / "vocab.json"
    tokenizer = WordTokenizer.load(vocab) if vocab.is_file() else open_clip.get_tokenizer(f"local-dir:{folder}")
    return model, tokenizer


class ClipEncoder:
    """A CLIP model (Radford et al. 2021): z_t = encode_text, z_i = encode_image, per-token text features."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, spec: str, device: str = "cpu", *,
                 world: int | None = None) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.spec = spec
        self.world = world  # the ShapesWorld version of a CLIP trained on it, else None
        self.device = torch.device(device)
        pp = open_clip.get_model_preprocess_cfg(model)
        self._preprocess_cfg = PreprocessCfg(**{k: v for k, v in pp.items()
                                                           if k in PreprocessCfg.__dataclass_fields__})
        self.preprocess = image_transform_v2(self._preprocess_cfg, is_train=False)
        self._model_id: str | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, spec: str | os.PathLike, device: str = "cpu", *, allow_torchscript: bool = False) -> "ClipEncoder":
        """Load a CLIP model from a bundled name, ARCH:weights, a folder, ARCH/tag or hf-hub:org/name (see module doc).

        allow_torchscript: load an ARCH:file.pt that is a TorchScript archive (code that runs when loaded; OpenAI's
        released weights are such archives). Off by default; the command line's opt-in is UNCLIP_ALLOW_TORCHSCRIPT=1.
        """
        if isinstance(spec, os.PathLike):
            spec = os.fspath(spec)
        if not isinstance(spec, str) or not spec:
            raise TypeError(f"spec must be a non-empty string or path, got {type(spec).__name__} {spec!r}; "
                            f"accepted forms: {_SPEC_FORMS}")
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
        device = str(device)

        bundled = bundled_names()
        if spec in bundled:
            folder = _resolve_bundled(spec)
            model, tok = _load_folder(folder, spec, device)
            return cls(model, tok, spec, device, world=_folder_world(folder))
        if spec.startswith("hf-hub:"):
            return cls._load_hub(spec, device)
        path = Path(spec).expanduser()
        if path.is_dir() and not (path / "open_clip_config.json").is_file():
            from .hf_clip import is_hf_clip_folder, load_hf_clip
            if is_hf_clip_folder(path):  # Hugging Face towers in diffusers' layout (text_encoder/, image_encoder/)
                return load_hf_clip(path, device=device)
        if path.is_dir():
            model, tok = _load_folder(path, spec, device)
            return cls(model, tok, spec, device, world=_folder_world(path))
        if path.is_file():
            raise ValueError(f"spec={spec!r} is a weights file without an architecture; pass 'ARCH:{spec}' "
                             "(e.g. 'ViT-B-32:/path/to/file.pt'; see open_clip.list_models())")
        if ":" in spec:
            arch, file = spec.split(":", 1)
            arch = _check_arch(arch, spec)
            model = _load_weights_file(arch, Path(file).expanduser(), spec, device, allow_torchscript)
            return cls(model, open_clip.get_tokenizer(arch), spec, device)
        looks_like_path = spec.startswith(("/", ".", "~")) or spec.endswith(WEIGHT_SUFFIXES)
        if looks_like_path:
            raise FileNotFoundError(f"spec={spec!r}: no such file or folder: {path}")
        if "/" in spec:
            arch, tag = spec.split("/", 1)
            if arch.replace("/", "-") not in open_clip.list_models():
                raise ValueError(f"spec={spec!r}: no file or folder {path} exists, and {arch!r} is not an open_clip "
                                 f"architecture for 'ARCH/pretrained_tag'; accepted forms: {_SPEC_FORMS}")
            return cls._load_tag(spec, arch, tag, device)
        if spec in open_clip.list_models():
            tags = open_clip.list_pretrained_tags_by_model(spec)
            raise ValueError(f"spec={spec!r} names an architecture but no weights; pass '{spec}/TAG' "
                             f"(tags: {', '.join(tags) or 'none'}) or '{spec}:/path/to/weights'")
        raise ValueError(f"spec={spec!r} is not a bundled model (bundled: {', '.join(bundled) or 'none'}), "
                         f"an existing folder or a known form; accepted forms: {_SPEC_FORMS}")

    @classmethod
    def _load_tag(cls, spec: str, arch: str, tag: str, device: str) -> "ClipEncoder":
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tag not in tags:
            raise ValueError(f"spec={spec!r}: {tag!r} is not a pretrained tag of {arch}; "
                             f"known tags: {', '.join(tags) or 'none'}")
        reason = _hub_offline_reason()
        if reason is not None:
            hub = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "")
            repo, filename = os.path.split(hub.rstrip("/")) if hub.endswith(WEIGHT_SUFFIXES) else (hub.rstrip("/"), "")
            names = [filename] if filename else ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"]
            if not (repo and any(_in_hf_cache(repo, n) for n in names)):
                raise _offline_error(spec, reason, arch)
        model = open_clip.create_model(arch, pretrained=tag, device=device)
        return cls(model, open_clip.get_tokenizer(arch), spec, device)

    @classmethod
    def _load_hub(cls, spec: str, device: str) -> "ClipEncoder":
        repo = spec[len("hf-hub:"):]
        reason = _hub_offline_reason()
        if reason is not None and not _in_hf_cache(repo, "open_clip_config.json"):
            raise _offline_error(spec, reason, None)
        model = open_clip.create_model(spec, device=device)
        return cls(model, open_clip.get_tokenizer(spec), spec, device)

    # ------------------------------------------------------------------ properties
    @property
    def _text(self) -> torch.nn.Module:
        return getattr(self.model, "text", self.model)

    @property
    def embed_dim(self) -> int:
        """Dimension d of z_t and z_i."""
        known = getattr(self.model, "embed_dim", None)
        if isinstance(known, int) and not isinstance(known, bool):
            return known
        proj = getattr(self._text, "text_projection", None)
        if isinstance(proj, torch.nn.Linear):
            return proj.out_features
        if proj is not None:
            return int(proj.shape[1])
        return int(self.encode_text([""], normalize=False).shape[1])  # towers without a plain projection

    @property
    def text_width(self) -> int:
        """Width of the per-token text features returned by `text_tokens`."""
        text = self._text
        if hasattr(text, "ln_final") and hasattr(text.ln_final, "normalized_shape"):
            return int(text.ln_final.normalized_shape[0])
        return int(text.transformer.config.hidden_size)  # Hugging Face text tower

    @property
    def context_length(self) -> int:
        """Number of text positions L (prompts are truncated to it)."""
        return int(self.model.context_length)

    @property
    def image_size(self) -> int:
        """Side of the square image the vision tower reads."""
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def model_id(self) -> str:
        """Short stable hash (12 hex) of the weights, for provenance; identical weights give identical ids."""
        if self._model_id is None:
            h = hashlib.sha256()
            for k, v in sorted(self.model.state_dict().items()):
                h.update(k.encode())
                h.update(str(tuple(v.shape)).encode())
                h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
            self._model_id = h.hexdigest()[:12]
        return self._model_id

    def __repr__(self) -> str:
        return (f"ClipEncoder(spec={self.spec!r}, embed_dim={self.embed_dim}, image_size={self.image_size}, "
                f"context_length={self.context_length})")

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (B, L) int64 ids; prompts over L tokens are truncated with a warning naming them."""
        texts = _check_texts(texts)
        L = self.context_length
        for t in texts:
            n = self._n_tokens(t)
            if n is not None and n > L and not isinstance(self.tokenizer, WordTokenizer):
                warnings.warn(f"prompt {t!r} has {n} tokens, more than the context length {L}; truncated",
                              stacklevel=3)
        return self.tokenizer(list(texts), context_length=L)

    def _n_tokens(self, text: str) -> int | None:
        tok = self.tokenizer
        if isinstance(tok, WordTokenizer):
            return tok.n_tokens(text)
        if isinstance(tok, open_clip.tokenizer.SimpleTokenizer) and tok.reduction_fn is None:
            return len(tok.encode(text)) + 2
        inner = getattr(tok, "tokenizer", None)
        if callable(inner):
            try:
                return len(inner(text)["input_ids"])
            except Exception:  # tokenizers without the HF call signature: no length check
                return None
        return None

    @property
    def eot_id(self) -> int | None:
        """The tokenizer's end-of-text id (WordTokenizer.eot_id, open_clip's eot_token_id, a Hugging Face
        tokenizer's eos_token_id), or None when the tokenizer names none."""
        tok = self.tokenizer
        for holder in (tok, getattr(tok, "tokenizer", None)):
            for attr in ("eot_id", "eot_token_id", "eos_token_id"):
                value = getattr(holder, attr, None) if holder is not None else None
                if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                    return int(value)
        return None

    def token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: True from [SOT] through the first end-of-text token, False after it (padding).

        The end is found by the tokenizer's own end-of-text id (eot_id), not by the largest id: a tokenizer whose
        end-of-text id is not its largest (or that pads with it, as CLIP's Hugging Face tokenizer does) gets the
        same mask as its attention mask. Without an end id, ids other than the text tower's pad id count.
        """
        positions = torch.arange(ids.shape[1], device=ids.device)
        eot = self.eot_id
        if eot is not None:
            is_end = ids == eot
            first = torch.where(is_end.any(dim=-1), is_end.int().argmax(dim=-1),
                                torch.full_like(ids[:, 0], ids.shape[1] - 1))
            return positions[None] <= first[:, None]
        pad = getattr(self._text, "pad_id", 0)
        return ids != pad

    def encode_text(self, texts: Sequence[str], normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Text embeddings z_t (CLIP, Radford et al. 2021): list of B prompts -> (B, d) float32, L2-normalised by default."""
        texts = _check_texts(texts)
        batch_size = check_positive_int("batch_size", batch_size)
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                ids = self.tokenize(texts[i:i + batch_size]).to(self.device)
                out.append(self.model.encode_text(ids, normalize=normalize).float().cpu())
        return torch.cat(out)

    def text_tokens(self, texts: Sequence[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token text features after ln_final (unCLIP's prior/decoder text tokens): -> ((B, L, width), (B, L) bool mask).

        The mask is True for [SOT], the words and [EOT]; padding is False.
        """
        texts = _check_texts(texts)
        batch_size = check_positive_int("batch_size", batch_size)
        feats, masks = [], []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                ids = self.tokenize(texts[i:i + batch_size]).to(self.device)
                feats.append(self._token_features(ids).float().cpu())
                masks.append(self.token_mask(ids).cpu())
        return torch.cat(feats), torch.cat(masks)

    def text_condition(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_t (B, d) unnormalised, per-token features (B, L, width), mask (B, L) bool) of B prompts: what unCLIP
        priors and decoders are conditioned on. A Hugging Face tower gives both from one pass."""
        texts = _check_texts(texts)
        ids = self.tokenize(texts).to(self.device)
        tower = self._text
        with torch.inference_mode():
            if hasattr(tower, "output_tokens") and hasattr(tower, "transformer") and \
                    hasattr(getattr(tower.transformer, "config", None), "projection_dim"):  # HF: one pass
                previous = tower.output_tokens
                tower.output_tokens = True
                try:
                    z_t, feats = tower(ids)
                finally:
                    tower.output_tokens = previous
            else:
                z_t, feats = self.model.encode_text(ids, normalize=False), self._token_features(ids)
        if z_t is None:
            raise ValueError(f"{self.spec}: the text tower has no projection (a CLIPTextModel): it gives token features "
                             "(text_tokens) but no text embeddings z_t")
        return z_t.float().cpu(), feats.float().cpu(), self.token_mask(ids).cpu()

    def _token_features(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        if hasattr(m, "token_embedding"):  # open_clip CLIP: text tower inlined
            cast = m.transformer.get_cast_dtype()
            x = m.token_embedding(ids).to(cast) + m.positional_embedding.to(cast)
            x = m.transformer(x, attn_mask=m.attn_mask)
            return m.ln_final(x)  # (B, L, width)
        text = m.text
        if hasattr(text, "_embeds"):  # open_clip TextTransformer
            x, attn_mask = text._embeds(ids)
            x = text.transformer(x, attn_mask=attn_mask)
            if text.cls_emb is not None:
                x = x[:, :-1]
            return text.ln_final(x)
        previous = text.output_tokens  # Hugging Face tower: its last hidden state
        text.output_tokens = True
        try:
            return text(ids)[1]
        finally:
            text.output_tokens = previous

    # ------------------------------------------------------------------ images
    def _image_batch(self, images: Sequence[ImageLike]) -> torch.Tensor:
        cfg, s = self._preprocess_cfg, self.image_size
        out = []
        for k, im in enumerate(images):
            if isinstance(im, torch.Tensor):
                if not im.dtype.is_floating_point:
                    raise TypeError(f"images[{k}] is a {im.dtype} tensor; tensors must be float in [-1, 1] "
                                    "(convert uint8 with x.float() / 127.5 - 1)")
                if im.ndim != 3 or im.shape[0] != 3:
                    raise ValueError(f"images[{k}] must be a (3, H, W) tensor, got shape {tuple(im.shape)}")
                lo, hi = float(im.min()), float(im.max())
                if lo < -1.01 or hi > 1.01 or not np.isfinite(lo + hi):
                    raise ValueError(f"images[{k}] has values in [{lo:.3g}, {hi:.3g}]; tensors must be in [-1, 1] "
                                     "(map [0, 1] images with x * 2 - 1)")
                if tuple(im.shape[1:]) == (s, s):  # exact path: no uint8 round trip
                    x = (im.float().clamp(-1, 1) + 1) / 2
                    mean = torch.tensor(cfg.mean, dtype=x.dtype)[:, None, None]
                    std = torch.tensor(cfg.std, dtype=x.dtype)[:, None, None]
                    out.append((x - mean) / std)
                    continue
            try:
                pil = load_image(im)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"images[{k}]: {exc}") from None
            out.append(self.preprocess(pil))
        return torch.stack(out)

    def encode_image(self, images: ImageLike | Sequence[ImageLike], normalize: bool = True,
                     batch_size: int = 64) -> torch.Tensor:
        """Image embeddings z_i (CLIP, Radford et al. 2021): B images -> (B, d) float32, L2-normalised by default.

        images: a PIL image, path, (B, 3, H, W) tensor in [-1, 1], (B, H, W, C) uint8 array, or a list of these
        (any mode and size; resized and normalised with the model's own preprocessing).
        """
        images = _as_image_list(images)
        batch_size = check_positive_int("batch_size", batch_size)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = self._image_batch(images[i:i + batch_size]).to(self.device)
                out.append(self.model.encode_image(x, normalize=normalize).float().cpu())
        return torch.cat(out)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of strings, got a single string {texts!r}; wrap it: [{texts!r}]")
    if not isinstance(texts, Sequence) or isinstance(texts, (bytes, bytearray)):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts is empty; pass at least one prompt")
    for k, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{k}] must be a string, got {type(t).__name__} {t!r}")
    return list(texts)


def _as_image_list(images: ImageLike | Sequence[ImageLike]) -> list:
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"images tensor must be (3, H, W) or (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        if images.ndim in (2, 3):
            return [images]
        raise ValueError(f"images array must be (H, W), (H, W, C) or (B, H, W, C) uint8, got shape {images.shape}")
    if isinstance(images, (Image.Image, str, Path)):
        return [images]
    if isinstance(images, Sequence):
        if len(images) == 0:
            raise ValueError("images is empty; pass at least one image")
        return list(images)
    raise TypeError(f"images must be a PIL image, a path, a tensor, a uint8 array or a list of these, "
                    f"got {type(images).__name__}")
