"""Training helpers shared by the stage trainers: EMA, cosine LR, atomic checkpoints with resume, CSV loss log."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from unclip_core.atomic import atomic_write, write_text
from unclip_core.checks import check_choice, check_nonneg_float


PRECISIONS = ("auto", "bf16", "fp32")
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX flags in /proc/cpuinfo, or `cpuinfo` text).

    Without them, oneDNN emulates bf16: on an AVX2-only EPYC the 64 px decoder took 48 s a step under bf16
    autocast against 2.9 s in float32, where a CPU with AVX512-BF16 ran bf16 ~1.5x faster than float32.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(f in flags for f in _NATIVE_BF16_FLAGS)


def resolve_precision(precision: str) -> str:
    """"auto" -> "bf16" where the CPU has native bf16, else "fp32"; "bf16" and "fp32" are returned as they are."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return precision


class EMA:
    """Exponential moving average of a model's float weights (Polyak & Juditsky 1992): w_ema <- d w_ema + (1 - d) w.

    With `warmup` the decay of update n (0-based) is min(decay, (1 + n) / (10 + n)), as diffusers' EMAModel and
    guided-diffusion's warm start do: a plain 0.999 average still holds 0.999^1400 = 25% of the random initial
    weights after 1,400 steps, and a decoder exported that way drew noise where its raw weights drew shapes.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"decay must be in (0, 1), e.g. 0.999, got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point}

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average one step towards the model's current weights."""
        d = self.current_decay()
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averaged weights into `model` (e.g. before export or evaluation)."""
        own = model.state_dict()
        for k, v in self.shadow.items():
            own[k].copy_(v.to(own[k].dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} weights of the model, e.g. {sorted(missing)[:3]}")
        self.decay = float(state["decay"])
        # states written before the warm-up existed: a plain average, as they were trained
        self.warmup = bool(state.get("warmup", False))
        self.updates = int(state.get("updates", 0))
        self.shadow = {k: v.float().clone() for k, v in state["shadow"].items()}


def cosine_lr(step: int, base_lr: float, n_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """Linear warm-up then cosine decay (Loshchilov & Hutter 2017, SGDR without restarts) to min_lr_ratio * base_lr."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, n_steps - warmup_steps))
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (times the group's "lr_scale" where it has one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def save_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """torch.save a training state (tensors, numbers, strings, dicts, lists) atomically: temp file, then rename."""
    return atomic_write(path, lambda tmp: torch.save(dict(state), tmp), fsync=False)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by `save_state` (weights_only: nothing is unpickled beyond plain containers)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (a pickle payload), RuntimeError/EOFError (not a torch archive)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a training state written by unclip-explorer ({type(e).__name__}: "
                         f"{first[:160]}); nothing in it was run or loaded. Start over with --fresh (or "
                         "resume=False), or point --out at the run's own folder") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a training state written by unclip-explorer (expected a dict, got "
                         f"{type(state).__name__}); start over with --fresh or pick the run's own folder")
    return state


def check_optimiser_fields(config: Any, nonnegative: tuple[str, ...]) -> None:
    """The checks every run config shares: `nonnegative` fields finite and >= 0, min_lr_ratio in [0, 1],
    ema_decay None or in (0, 1)."""
    for name in nonnegative:
        check_nonneg_float(name, getattr(config, name))
    if not 0.0 <= config.min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {config.min_lr_ratio}")
    if config.ema_decay is not None and not 0.0 < config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be None or in (0, 1), e.g. 0.999, got {config.ema_decay}")


def merge_run_fields(base: dict[str, Any], model: dict[str, Any], *sources: Mapping[str, Any] | None) -> None:
    """Lay run-file fields and then overrides over a recipe's fields, in place: [model] keys update `model`,
    a [data] table updates the base's data table key by key, every other key replaces the base's."""
    for src in sources:
        for key, value in (src or {}).items():
            if key == "model":
                model.update(value)
            elif key == "data" and isinstance(value, Mapping):
                base["data"] = {**(base.get("data") or {}), **value}
            else:
                base[key] = value


def network_config(cls: type, model: Mapping[str, Any]) -> Any:
    """A network's frozen config dataclass from a run's `model` dict (lists become tuples; unknown keys listed)."""
    from unclip_core.checkpoint import config_from_dict
    return config_from_dict(cls, model, fix="Remove them from the run's model settings")


def resume_run(state_path: Path, config: dict[str, Any], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               ema: "EMA | None" = None, exempt: tuple[str, ...] = ()) -> tuple[int, float]:
    """Load a run's state into model, optimizer and EMA when state_path exists; -> (step, seconds) (0, 0.0 if not).

    The saved config must equal `config` except in the `exempt` fields; otherwise ValueError names the fields.
    """
    if not state_path.is_file():
        return 0, 0.0
    state = load_state(state_path)
    missing = sorted({"config", "step", "seconds", "model", "optimizer"} - set(state))
    if missing:
        raise ValueError(f"{state_path} is not a training run's state (no {missing}); start over with --fresh "
                         "(resume=False) or pick the run's own folder")
    diff = sorted(k for k in set(state["config"]) | set(config)
                  if k not in exempt and state["config"].get(k) != config.get(k))
    if diff:
        raise ValueError(f"out_dir={str(state_path.parent)!r} holds a run with another config (differs in {diff}); "
                         "pass the same config, resume=False to start over, or a new out_dir")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    return int(state["step"]), float(state["seconds"])


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (temp file in the same folder, then rename)."""
    return write_text(path, text, fsync=False)


class CsvLog:
    """Append-only CSV of training metrics; on resume, rows after the resumed step are dropped first."""

    def __init__(self, path: str | os.PathLike, fields: Iterable[str], resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.fields = list(fields)
        if "step" not in self.fields:
            raise ValueError(f"fields must include 'step', got {self.fields}")
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        lines = [",".join(self.fields)] + [",".join(str(r.get(k, "")) for k in self.fields) for r in rows]
        write_text_atomic(self.path, "\n".join(lines) + "\n")

    def write(self, **row: Any) -> None:
        """Append one row (unknown keys are an error; missing ones stay empty)."""
        unknown = set(row) - set(self.fields)
        if unknown:
            raise ValueError(f"unknown CSV fields {sorted(unknown)}; accepted: {self.fields}")
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.fields).writerow({k: _fmt(row.get(k, "")) for k in self.fields})

    def read(self) -> list[dict[str, str]]:
        """All rows as dicts of strings."""
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v

