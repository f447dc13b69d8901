"""Argument types shared by every command: a bad number is refused by argparse with the option's name, what was
expected and what arrived (`argument --prior-steps: must be an integer >= 1, got '-5'`), before any work."""
from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from unclip_core.checks import MAX_GUIDANCE
from unclip_core.seeds import MAX_SEED

if TYPE_CHECKING:
    from unclip_core.sampling import SamplingConfig


def _int(text: str, minimum: int, maximum: int | None = None, what: str | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        want = what or (f"an integer in [{minimum}, {maximum}]" if maximum is not None
                        else f"an integer >= {minimum}")
        raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
    return value


def _float(text: str, low: float, high: float | None, want: str, open_low: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    ok = math.isfinite(value) and (value > low if open_low else value >= low) and (high is None or value <= high)
    if not ok:
        raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, counts, batch sizes)."""
    return _int(text, 1)


def at_least_two(text: str) -> int:
    """An integer >= 2 (frames of an interpolation, variations to compare)."""
    return _int(text, 2)


def nonnegative_int(text: str) -> int:
    return _int(text, 0)


def seed(text: str) -> int:
    return _int(text, 0, MAX_SEED, what="an integer seed in [0, 2**63 - 1]")


def port(text: str) -> int:
    return _int(text, 1, 65535)


def guidance(text: str) -> float:
    """A classifier-free guidance scale in [0, MAX_GUIDANCE]."""
    return _float(text, 0.0, MAX_GUIDANCE, f"a number in [0, {MAX_GUIDANCE:g}] (1 = no guidance)")


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    return _float(text, 0.0, 1.0, "a number in [0, 1]")


def positive_float(text: str) -> float:
    return _float(text, 0.0, None, "a finite number > 0", open_low=True)


# ---- sampling settings: one argument group, one SamplingConfig -------------------------------------------------
# option -> SamplingConfig field; every default is None, so an option left out keeps the pipeline folder's value
SAMPLING_OPTIONS: dict[str, str] = {
    "prior_sampler": "prior_sampler", "prior_steps": "prior_steps", "prior_guidance": "prior_guidance",
    "best_of": "best_of", "sampler": "decoder_sampler", "steps": "decoder_steps", "guidance": "decoder_guidance",
    "eta": "eta", "invert_guidance": "invert_guidance", "refine": "invert_refine",
    "upsampler_sampler": "upsampler_sampler", "upsampler_steps": "upsampler_steps", "precision": "precision",
    "noise_level": "noise_level",
}


def noise_level(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; a noise level is 0-999") from None
    if not 0 <= value <= 999:
        raise argparse.ArgumentTypeError(f"{value} is outside 0-999 (the noise-augmentation schedule's timesteps)")
    return value


def noise_levels(text: str) -> list[int]:
    """'0,250,500' -> [0, 250, 500]."""
    return [noise_level(t.strip()) for t in text.split(",") if t.strip()]


def add_sampling_args(p: argparse.ArgumentParser, *, prior: bool = True, decoder: bool = True,
                      decoder_sampler: bool = True, invert: bool = False,
                      upsampler: bool = True) -> argparse._ArgumentGroup:
    """The sampling options of a command (the stages it runs), each defaulting to the pipeline's setting
    (pipeline.json "sampling"); `sampling_from_args(args, pipe)` turns them into the SamplingConfig.
    decoder_sampler=False leaves out --sampler and --eta (commands whose frames are DDIM at eta 0)."""
    from unclip_core.samplers import sampler_names
    names = sampler_names()
    g = p.add_argument_group("sampling", "defaults: the pipeline folder's settings (pipeline.json \"sampling\")")
    if prior:
        g.add_argument("--prior-sampler", choices=names, default=None, help="the prior's sampler")
        g.add_argument("--prior-steps", type=positive_int, default=None, help="the prior's steps")
        g.add_argument("--prior-guidance", type=guidance, default=None, help="the prior's guidance scale")
        g.add_argument("--best-of", type=positive_int, default=None,
                       help="prior candidates per image, ranked by z_i . z_t")
    if decoder:
        if decoder_sampler:
            g.add_argument("--sampler", choices=names, default=None, help="the decoder's sampler")
            g.add_argument("--eta", type=fraction, default=None,
                           help="DDIM's eta for the decoder (0 deterministic; only samplers that take eta)")
        g.add_argument("--steps", type=positive_int, default=None, help="the decoder's steps")
        g.add_argument("--guidance", type=guidance, default=None, help="the decoder's classifier-free guidance")
        g.add_argument("--noise-level", type=noise_level, default=None, metavar="0-999",
                       help="Stable unCLIP: how far the image embedding is noised before the decoder reads it (0: as "
                            "it is; 999: almost pure noise); other families refuse a non-zero level")
    if invert:
        g.add_argument("--invert-guidance", type=guidance, default=None,
                       help="guidance of the DDIM inversion and of frames decoded from an inverted x_T (1: they "
                            "reconstruct the input)")
        g.add_argument("--refine", type=nonnegative_int, default=None,
                       help="fixed-point iterations per inversion step")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="the networks' arithmetic (bf16 / fp16 autocast; samplers stay float32)")
    if upsampler:
        g.add_argument("--upsampler-sampler", choices=names, default=None, help="the upsamplers' sampler")
        g.add_argument("--upsampler-steps", type=positive_int, nargs="+", default=None, metavar="N",
                       help="steps per upsampler (the last for stages beyond)")
    return g


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The SamplingConfig fields the command line set (options left out are absent)."""
    out = {}
    for option, field in SAMPLING_OPTIONS.items():
        value = getattr(args, option, None)
        if value is not None:
            out[field] = tuple(value) if isinstance(value, list) else value
    return out


def sampling_from_args(args: argparse.Namespace, pipe: Any) -> SamplingConfig:
    """pipe.sampling with the options the command line set."""
    return pipe.sampling.replace(**sampling_overrides(args))
