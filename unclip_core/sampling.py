"""SamplingConfig: the one owner of every sampling setting of an unCLIP cascade (prior, decoder, inversion,
upsamplers).

A pipeline folder's pipeline.json may hold a "sampling" entry (a dict of SamplingConfig fields); UnCLIP.load
reads it into `pipe.sampling`, the defaults of every call on that pipeline (the bundled shapes-unclip: the
settings its card was measured with; an imported Karlo: Karlo's 25 / 25 / 7 steps, guidance 4 / 8, its own
sampler). Calls take `sampling=` (a whole config); change a field with `pipe.sampling.replace(decoder_steps=10)`.
The command line builds one with explorer.commands._args.add_sampling_args / sampling_from_args, the dashboards
with dashboards._widgets.sampling_widget.

    from unclip_core.pipeline import UnCLIP
    pipe = UnCLIP.load("shapes-unclip")
    out = pipe.text_to_image("a red circle", sampling=pipe.sampling.replace(decoder_steps=10), seed=0)
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from .checks import check_guidance, check_positive_int
from .samplers import check_sampler_settings, get_sampler


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class SamplingConfig:
    """How each stage samples. Frozen: derive another with `.replace(**fields)`.

    prior_*: the diffusion prior (sec. 2.2 of Ramesh et al. 2022), `best_of` candidates per image ranked by
    z_i . z_t. decoder_*: the decoder; `eta` is DDIM's (only samplers that take it accept eta != 0);
    clip_denoised: clamp predicted x0 to [-1, 1] (None: UnCLIP.clip_denoised_rule decides). invert_*: DDIM
    inversion (pipe.invert) and the decoding of an inverted x_T in the analyses, which reconstructs its image
    only under the guidance the inversion ran (1 by default; docs/analyses.md). upsampler_*: the super-resolution
    stages, upsampler_steps[k] for stage k (the last entry for stages beyond).
    """

    prior_sampler: str = "ddim"
    prior_steps: int = 64
    prior_guidance: float = 4.0
    best_of: int = 2
    decoder_sampler: str = "ddim"
    decoder_steps: int = 50
    decoder_guidance: float = 3.0
    eta: float = 0.0
    clip_denoised: bool | None = None
    invert_guidance: float = 1.0
    invert_refine: int = 3
    upsampler_sampler: str = "ddim"
    upsampler_steps: tuple[int, ...] = (27, 15)
    # the networks' arithmetic: "fp32", or "bf16" / "fp16" autocast (the samplers' own arithmetic stays float32);
    # bf16 runs the bundled decoder 1.77x faster on this CPU (native bf16), mean |pixel difference| 0.0008
    # (benchmarks/precision.py)
    precision: str = "fp32"
    # the forward-process step the image embedding is noised to before a noise-augmented decoder reads it (Stable
    # unCLIP's noise_level, 0..999: 0 keeps the image, higher levels hide more of it); other decoders take only 0
    noise_level: int = 0

    def __post_init__(self) -> None:
        for name in ("prior_steps", "best_of", "decoder_steps"):
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
        object.__setattr__(self, "invert_refine", check_positive_int("invert_refine", self.invert_refine, minimum=0))
        if isinstance(self.noise_level, bool) or not isinstance(self.noise_level, int) or \
                not 0 <= self.noise_level <= 999:
            raise ValueError(f"noise_level must be an int in [0, 999] (the image embedding's noising step; 0 keeps "
                             f"the embedding), got {self.noise_level!r}")
        for name in ("prior_guidance", "decoder_guidance", "invert_guidance"):
            object.__setattr__(self, name, check_guidance(name, getattr(self, name)))
        for name in ("prior_sampler", "upsampler_sampler"):
            get_sampler(getattr(self, name))  # a known name (ValueError lists them)
        check_sampler_settings(self.decoder_sampler, eta=self.eta)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not known; accepted: {', '.join(map(repr, PRECISIONS))}")
        object.__setattr__(self, "eta", float(self.eta))
        if self.clip_denoised is not None and not isinstance(self.clip_denoised, bool):
            raise TypeError(f"clip_denoised must be True, False or None (None: the pipeline's rule), got "
                            f"{type(self.clip_denoised).__name__} {self.clip_denoised!r}")
        ups = self.upsampler_steps
        if isinstance(ups, int) and not isinstance(ups, bool):
            ups = (ups,)
        if isinstance(ups, (str, bytes)) or not hasattr(ups, "__iter__"):
            raise TypeError(f"upsampler_steps must be a sequence of step counts (one per upsampler), got {ups!r}")
        ups = tuple(check_positive_int("upsampler_steps entry", k) for k in ups)
        if not ups:
            raise ValueError("upsampler_steps must name at least one step count (the last one serves later stages)")
        object.__setattr__(self, "upsampler_steps", ups)

    # ---- derived configs and records
    def replace(self, **changes: Any) -> "SamplingConfig":
        """A copy with `changes` (field names; an unknown name is an error listing the fields)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what outputs record as settings["sampling"])."""
        d = asdict(self)
        d["upsampler_steps"] = list(self.upsampler_steps)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base: "SamplingConfig | None" = None) -> "SamplingConfig":
        """Fields from a dict (e.g. pipeline.json's "sampling") over `base` (default: the class defaults)."""
        if not isinstance(d, Mapping):
            raise TypeError(f"sampling settings must be a dict of SamplingConfig fields, got {type(d).__name__}")
        _check_names(d)
        return dataclasses.replace(base or cls(), **dict(d))

    def upsampler_steps_for(self, n_stages: int) -> list[int]:
        """The steps of each of the first n_stages upsamplers (the last entry for stages beyond the list)."""
        ups = self.upsampler_steps
        return [ups[k] if k < len(ups) else ups[-1] for k in range(n_stages)]


def _check_names(d: Mapping[str, Any]) -> None:
    known = [f.name for f in fields(SamplingConfig)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown sampling settings {unknown}; SamplingConfig has {known}")


def check_sampling(sampling: Any, default: SamplingConfig) -> SamplingConfig:
    """`sampling` (a SamplingConfig, a dict of fields over `default`, or None for `default`) as a SamplingConfig."""
    if sampling is None:
        return default
    if isinstance(sampling, SamplingConfig):
        return sampling
    if isinstance(sampling, Mapping):
        return SamplingConfig.from_dict(sampling, base=default)
    raise TypeError(f"sampling must be a SamplingConfig (e.g. pipe.sampling.replace(decoder_steps=25)), a dict of "
                    f"its fields, or None for the pipeline's defaults; got {type(sampling).__name__}")


__all__ = ["SamplingConfig", "check_sampling"]
