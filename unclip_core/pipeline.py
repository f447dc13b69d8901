"""The unCLIP cascade (Ramesh et al. 2022): CLIP text -> prior -> z_i -> decoder -> upsamplers -> image.

`UnCLIP` composes a CLIP encoder, a diffusion prior, a decoder, an optional autoencoder and up to two
upsamplers. It owns no maths: the schedule and samplers live in diffusion.py / samplers.py, the networks in
prior.py / decoder.py / autoencoder.py / upsampler.py. Every stochastic call takes a seed or a torch.Generator.

With an autoencoder the decoder is a latent decoder (Rombach et al. 2022; Kandinsky 2.2 decodes MoVQ latents):
it samples, inverts and inpaints in the autoencoder's latent space (x_T has `x_T_shape(n)`), and its output is
decoded to pixels before anything else sees it, so upsamplers, outputs and callers get pixels either way.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .autoencoder import Autoencoder
from .kl_vae import KLAutoencoder
from .movq import MoVQ
from .checkpoint import load_checkpoint, read_pipeline, resolve
from .checks import check_choice, check_embeddings, check_guidance, check_nonzero_rows, check_positive_int
from .clip import ClipEncoder
from .decoder import Decoder
from .diffusion import Schedule, cosine_schedule, linear_schedule, scaled_linear_schedule
from .imageio import ImageLike, load_image, pil_to_tensor, tensor_to_pil
from .inpaint import sample_repaint
from .prior import DiffusionPrior
from .provenance import BlockedContentError, ConceptPolicy, tensor_hash
from .seeds import generator
from .sampling import SamplingConfig, check_sampling
from .samplers import (SPACINGS, classifier_free_guidance, get_sampler, invert_ddim, model_to_denoiser, run_sampler,
                       timesteps)
from .conventions import FAMILY_SAMPLING, Conventions, expand, read_conventions
from .upsampler import Upsampler, upsample_low_res

LATENT_CODECS = (Autoencoder, MoVQ, KLAutoencoder)  # what a latent decoder's pixels go through (encode / decode /
# config)
# the seed of the z_i noise of a noise-augmented decoder when x_T is given (decode_from x_T, invert): one draw shared by
# every row, so that an inverted x_T reconstructs its image at any noise_level and a frame depends on z_i and x_T only
FIXED_Z_I_NOISE_SEED = 0
# DDIM's trailing spacing starts at t = T - 1, from pure noise (Lin et al. 2024); inversion uses the same steps.
SPACING = get_sampler("ddim").spacing


@dataclass(frozen=True)
class StageInfo:
    """How a stage was trained: what the network predicts, and whether it learned its variance."""

    prediction: str = "eps"
    clip_x0: float | None = 1.0
    # the variance of samplers that take one (SamplerSpec.variances; "learned_range" needs a network with
    # learned variance channels); None: the sampler's default
    variance: str | None = None
    # the stage's noise schedule over T = 1000 steps: "cosine" (Nichol & Dhariwal; Karlo's squaredcos_cap_v2) or
    # "linear" betas from beta_start to beta_end (Kandinsky 2.2's decoder: 0.00085 -> 0.012); steps_offset is
    # added to every sampled timestep (diffusers' steps_offset)
    schedule: str = "cosine"
    beta_start: float | None = None
    beta_end: float | None = None
    steps_offset: int = 0
    # the timestep spacing of this stage's samplers (None: each sampler's own; diffusers' DDPM / DDIM: "leading")
    spacing: str | None = None
    # False: DDIM's last step lands on abar_0, not 1 (diffusers' set_alpha_to_one=False, Stable Diffusion 2.x)
    set_alpha_to_one: bool = True

    def __post_init__(self) -> None:
        check_choice("prediction", self.prediction, ("eps", "x0", "v"))
        check_choice("schedule", self.schedule, ("cosine", "linear", "scaled_linear"))
        if not isinstance(self.set_alpha_to_one, bool):
            raise TypeError(f"set_alpha_to_one must be True or False, got {self.set_alpha_to_one!r}")
        if self.variance is not None and not isinstance(self.variance, str):
            raise TypeError(f"variance must be a sampler variance name or None, got {self.variance!r}")
        check_positive_int("steps_offset", self.steps_offset, minimum=0)
        if self.spacing is not None:
            check_choice("spacing", self.spacing, SPACINGS)
        if self.schedule == "cosine" and (self.beta_start is not None or self.beta_end is not None):
            raise ValueError("beta_start / beta_end set a linear schedule; pass schedule='linear' or drop them")

    def build_schedule(self) -> Schedule:
        if self.schedule == "linear":
            sched = linear_schedule(1000, self.beta_start, self.beta_end)
        elif self.schedule == "scaled_linear":
            sched = scaled_linear_schedule(1000, self.beta_start or 0.00085, self.beta_end or 0.012)
        else:
            sched = cosine_schedule(1000)
        if self.set_alpha_to_one:
            return sched
        return Schedule(sched.betas, final_abar=float(sched.alphas_cumprod[0]))

    @property
    def default_schedule(self) -> bool:
        """Whether the stage runs the pipeline's shared cosine schedule (nothing in it says otherwise)."""
        return self.schedule == "cosine" and self.beta_start is None and self.set_alpha_to_one


@dataclass
class UnCLIPOutput:
    """Images of every stage of the cascade, the z_i that made them, and the settings (for provenance)."""

    images: list[Image.Image]
    z_i: Tensor
    stages: dict[str, Tensor] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def stage_images(self, name: str) -> list[Image.Image]:
        """PIL images of one stage ("decoder", "upsampler1", ...)."""
        if name not in self.stages:
            raise ValueError(f"stage {name!r} is not in this output; stages: {list(self.stages)}")
        if self.stages[name].shape[1] != 3:
            raise ValueError(f"stage {name!r} holds latents {tuple(self.stages[name].shape)}, not images; its pixels "
                             "are stage 'decoder' (the autoencoder's decoding)")
        return tensor_to_pil(self.stages[name])


_check_guidance = check_guidance  # the one guidance check (unclip_core.checks)


def _check_clip_denoised(clip_denoised: bool | None, allow_none: bool = True) -> bool | None:
    if (clip_denoised is None and allow_none) or isinstance(clip_denoised, bool):
        return clip_denoised
    accepted = "True, False or None (None: the rule of UnCLIP.clip_denoised_rule)" if allow_none else "True or False"
    raise TypeError(f"clip_denoised must be {accepted}, got {type(clip_denoised).__name__} {clip_denoised!r}")


def _check_noise(noise: Mapping[str, Tensor] | None, stages: tuple[str, ...]) -> dict[str, Tensor]:
    """A dict of initial noises by stage name (shapes are checked where each stage draws its noise)."""
    if noise is None:
        return {}
    if not isinstance(noise, Mapping):
        raise TypeError(f"noise must be a dict of stage name -> tensor (stages {list(stages)}), got "
                        f"{type(noise).__name__}")
    unknown = sorted(set(noise) - set(stages))
    if unknown:
        raise ValueError(f"noise names unknown stages {unknown}; this call takes {list(stages)}")
    return dict(noise)


def _check_prompts(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty string or list of non-empty strings, "
                         f"got {prompts!r}")
    return prompts


def _check_negative_prompt(negative_prompt: str | Sequence[str] | None, n_prompts: int) -> list[str] | None:
    """One negative prompt per prompt (a string serves every prompt), or None."""
    if negative_prompt is None:
        return None
    negatives = [negative_prompt] * n_prompts if isinstance(negative_prompt, str) else list(negative_prompt)
    if not negatives or not all(isinstance(p, str) and p.strip() for p in negatives):
        raise ValueError(f"negative_prompt must be a non-empty string or a list of non-empty strings (None: the "
                         f"empty prompt), got {negative_prompt!r}")
    if len(negatives) != n_prompts:
        raise ValueError(f"negative_prompt has {len(negatives)} entries for {n_prompts} prompts; pass one per prompt "
                         "or a single string for all")
    return negatives


def read_sampling(meta: Mapping[str, Any], folder: Path, default: SamplingConfig) -> SamplingConfig:
    """pipeline.json's "sampling" entry over a family's defaults; a bad entry names the file."""
    entry = meta.get("sampling")
    if entry is None:
        return default
    try:
        return SamplingConfig.from_dict(entry, base=default)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{folder}/pipeline.json: 'sampling': {e}") from None


class UnCLIP:
    """Text-to-image, variations, interpolation inputs and inpainting with the unCLIP cascade, for every family.

    Every sampling call takes `sampling=` (a SamplingConfig; None: `self.sampling`, the pipeline folder's). A
    family's conventions are data (unclip_core.conventions): `conventions` (how text conditions the stages and
    what their unconditional branch is; whether embeddings are L2-normalised), `stage_info` (what each network
    predicts, its x0 range and sampler variance), `upsamplers_last` (a stage's separate last-step network, as
    Karlo's super_res_last) and the pipeline's default `sampling`.
    """

    DEFAULT_SAMPLING = SamplingConfig()  # a pipeline folder without a "sampling" entry samples with these

    def __init__(self, clip: ClipEncoder, decoder: Decoder, prior: DiffusionPrior | None = None,
                 upsamplers: Sequence[Upsampler] = (), stage_info: Mapping[str, StageInfo] | None = None,
                 schedule: Schedule | None = None, name: str = "custom",
                 policy: ConceptPolicy | None = None, *, autoencoder: Autoencoder | MoVQ | None = None,
                 default_upsample: int | None = None, sampling: SamplingConfig | None = None,
                 conventions: Conventions | None = None,
                 upsamplers_last: Sequence[Upsampler | None] = (), decoder_text: ClipEncoder | None = None) -> None:
        if not isinstance(decoder, Decoder):
            raise TypeError(f"decoder must be a Decoder, got {type(decoder).__name__}")
        if prior is not None and not isinstance(prior, DiffusionPrior):
            raise TypeError(f"prior must be a DiffusionPrior or None, got {type(prior).__name__}")
        if autoencoder is not None and not isinstance(autoencoder, LATENT_CODECS):
            raise TypeError(f"autoencoder must be an Autoencoder, a MoVQ or a KLAutoencoder (or None), got "
                            f"{type(autoencoder).__name__}")
        if decoder_text is not None and not isinstance(decoder_text, ClipEncoder):
            raise TypeError(f"decoder_text must be a ClipEncoder (the decoder's own text tower) or None, got "
                            f"{type(decoder_text).__name__}")
        if len(upsamplers) > 2:
            raise ValueError(f"at most two upsamplers are supported (the paper's cascade), got {len(upsamplers)}")
        self._check_decoder_space(decoder, autoencoder)
        self.clip, self.decoder, self.prior = clip, decoder.eval(), prior.eval() if prior is not None else None
        self.autoencoder = autoencoder.eval() if autoencoder is not None else None
        self.upsamplers = [u.eval() for u in upsamplers]
        for k, (u, prev) in enumerate(zip(self.upsamplers, [self.resolutions[0]]
                                          + [u.config.out_res for u in self.upsamplers])):
            if u.config.low_res != prev:
                raise ValueError(f"upsampler{k + 1} expects {u.config.low_res}px input but the stage before it "
                                 f"makes {prev}px images")
        dims = {"clip": clip.embed_dim, "decoder": decoder.config.clip_dim}
        if prior is not None:
            dims["prior"] = prior.config.clip_dim
        if len(set(dims.values())) != 1:
            raise ValueError(f"the stages disagree on the CLIP embedding dimension: {dims}; "
                             "load a decoder/prior trained with this CLIP model")
        # a latent decoder's x0 is a latent, which has no [-1, 1] range: its stage has no clip_x0
        self.stage_info = {"prior": StageInfo("x0", None),
                           "decoder": StageInfo("eps", None if autoencoder is not None else 1.0),
                           "upsampler1": StageInfo("eps", 1.0), "upsampler2": StageInfo("eps", 1.0)}
        self.stage_info.update(stage_info or {})
        if autoencoder is not None and self.stage_info["decoder"].clip_x0 is not None:
            raise ValueError(f"stage_info['decoder'].clip_x0={self.stage_info['decoder'].clip_x0} clamps x0 to a pixel "
                             "range, but this decoder samples the autoencoder's latents; set the decoder's clip_x0 "
                             "to None (pipeline.json stage_info) for a latent decoder")
        self.schedule = schedule or cosine_schedule(1000)
        # each stage's own schedule where its StageInfo names another than the cosine one (Kandinsky's decoder)
        self.schedules = {k: (self.schedule if v.default_schedule else v.build_schedule())
                          for k, v in self.stage_info.items()}
        self.name = name
        self.policy = policy
        # the default cascade: the first k upsamplers (a stage that does not beat bicubic is left out of it)
        self.default_upsample = len(self.upsamplers)
        if default_upsample is not None:
            self.default_upsample = self.upsample_stages(default_upsample)
        # the defaults of every sampling call (pipeline.json "sampling" over the family's defaults)
        self.sampling = check_sampling(sampling, self.DEFAULT_SAMPLING)
        self.conventions = conventions or Conventions()
        if not isinstance(self.conventions, Conventions):
            raise TypeError(f"conventions must be a Conventions, got {type(conventions).__name__}")
        last = list(upsamplers_last) + [None] * (len(self.upsamplers) - len(upsamplers_last))
        if len(last) != len(self.upsamplers):
            raise ValueError(f"upsamplers_last has {len(upsamplers_last)} entries for {len(self.upsamplers)} "
                             "upsamplers; pass one (or None) per upsampler")
        for k, (u, v) in enumerate(zip(self.upsamplers, last)):
            if v is not None and (v.config.low_res, v.config.out_res) != (u.config.low_res, u.config.out_res):
                raise ValueError(f"upsampler{k + 1}_last maps {v.config.low_res}->{v.config.out_res}px but "
                                 f"upsampler{k + 1} maps {u.config.low_res}->{u.config.out_res}px")
        self.upsamplers_last = [v.eval() if v is not None else None for v in last]
        self._empty_prompt: tuple[Tensor, Tensor, Tensor] | None = None
        # the text tower whose token features a decoder with its own text encoder reads (Stable unCLIP's OpenCLIP
        # ViT-H/14 text encoder); None: the CLIP's
        self.decoder_text = decoder_text
        self._empty_decoder_text: Tensor | None = None
        dc = decoder.config
        if dc.noise_augmented:
            if "z_i_noising" not in self.stage_info:
                self.stage_info["z_i_noising"] = StageInfo("eps", None)
                self.schedules["z_i_noising"] = self.schedule
            width = (decoder_text or clip).text_width
            if dc.text_width and width != dc.text_width:
                raise ValueError(f"the decoder cross-attends to {dc.text_width}-wide text tokens but its text tower "
                                 f"gives {width}-wide ones; pass the decoder's own text tower (decoder_text)")

    @staticmethod
    def _check_decoder_space(decoder: Decoder, autoencoder: Autoencoder | MoVQ | None) -> None:
        """A pixel decoder makes RGB images; a latent decoder samples exactly its autoencoder's latent shape."""
        dc = decoder.config
        if autoencoder is None:
            if dc.in_channels != 3:
                raise ValueError(f"the decoder samples {dc.in_channels}-channel {dc.image_size}x{dc.image_size} "
                                 "arrays, not RGB images: a latent decoder; pass its autoencoder (autoencoder=, or "
                                 "an 'autoencoder' stage in the pipeline folder)")
            return
        ac = autoencoder.config
        if ac.in_channels != 3:
            raise ValueError(f"the autoencoder encodes {ac.in_channels}-channel images; the cascade needs RGB "
                             "(in_channels=3)")
        latent = (ac.latent_channels, ac.latent_size, ac.latent_size)
        sampled = (dc.in_channels, dc.image_size, dc.image_size)
        if latent != sampled:
            raise ValueError(f"the autoencoder makes latents of shape {latent} (latent_channels, latent_size, "
                             f"latent_size) but the decoder samples {sampled} (in_channels, image_size, image_size); "
                             f"pair the decoder with the autoencoder it was trained on, or train one with "
                             f"image_size={ac.latent_size} and in_channels={ac.latent_channels}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, spec: str | Path, device: str = "cpu") -> "UnCLIP":
        """Load a pipeline folder (pipeline.json + stage folders) or a bundled name such as "shapes-unclip"."""
        folder = resolve(spec)
        dirs, meta = read_pipeline(folder)
        clip_spec = meta.get("clip")
        if clip_spec is None:
            raise ValueError(f"{folder}/pipeline.json has no 'clip' entry naming its CLIP model")
        local = folder / str(clip_spec)
        clip = ClipEncoder.load(str(local) if local.is_dir() else clip_spec, device=device)
        if "decoder" not in dirs:
            raise ValueError(f"{folder} has no decoder stage; its stages: {list(dirs)}")
        models = {n: load_checkpoint(d, device=device) for n, d in dirs.items() if d.resolve() != local.resolve()}
        ups = [models[n] for n in ("upsampler1", "upsampler2") if n in models]
        last = [models.get(f"{n}_last") for n in ("upsampler1", "upsampler2") if n in models]
        info = {n: StageInfo(**v) for n, v in meta.get("stage_info", {}).items()}
        for n, v in (meta.get("variance") or {}).items():  # folders imported before StageInfo.variance
            info[n] = StageInfo(**{**asdict(info.get(n, StageInfo())), "variance": v})
        default = FAMILY_SAMPLING.get(str(meta.get("family")), cls.DEFAULT_SAMPLING)
        decoder_text = None
        if meta.get("decoder_text") is not None:
            text_dir = folder / str(meta["decoder_text"])
            if not text_dir.is_dir():
                raise FileNotFoundError(f"{folder}/pipeline.json names the decoder's text tower "
                                        f"{meta['decoder_text']!r}, but {text_dir} does not exist")
            decoder_text = ClipEncoder.load(str(text_dir), device=device)
        return cls(clip, models["decoder"], models.get("prior"), ups, info, name=str(meta.get("name", spec)),
                   autoencoder=models.get("autoencoder"), default_upsample=meta.get("default_upsample"),
                   sampling=read_sampling(meta, folder, default), conventions=read_conventions(meta, folder),
                   upsamplers_last=last, decoder_text=decoder_text)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def is_latent(self) -> bool:
        """Whether the decoder samples an autoencoder's latents (a latent decoder) rather than pixels."""
        return self.autoencoder is not None

    @property
    def resolutions(self) -> list[int]:
        """Pixel side of each stage's output: decoder (after the autoencoder, for a latent decoder), then upsamplers."""
        first = self.autoencoder.config.image_size if self.autoencoder is not None else self.decoder.config.image_size
        return [first] + [u.config.out_res for u in self.upsamplers]

    def x_T_shape(self, n: int) -> tuple[int, ...]:
        """Shape of the decoder's noise x_T for n samples: (n, 3, s, s) in pixels, (n, C, h, h) for latents."""
        n = check_positive_int("n", n)
        c = self.decoder.config
        return (n, c.in_channels, c.image_size, c.image_size)

    def upsample_stages(self, upsample: bool | int | None) -> int:
        """How many upsamplers a call runs: None = the default cascade (pipeline.json "default_upsample", else
        all), True = all, False = none, an int k = the first k."""
        if upsample is None:
            return self.default_upsample
        if isinstance(upsample, bool):
            return len(self.upsamplers) if upsample else 0
        if not isinstance(upsample, int) or not 0 <= upsample <= len(self.upsamplers):
            raise ValueError(f"upsample must be None (the default cascade), True, False or a number of stages "
                             f"0..{len(self.upsamplers)} "
                             f"(this pipeline has {len(self.upsamplers)} upsamplers), got {upsample!r}")
        return upsample

    def plan_size(self, size: int | None = None, *, all_upsamplers: bool = False) -> tuple[int, int, str | None]:
        """How to reach an output side: (size, model upsamplers to run, note on a bicubic rest or None).

        size None is 256 px where the cascade reaches it, else its largest resolution. Model upsamplers run as far
        as the default cascade goes (all of them with all_upsamplers); a stage left out of it (its card: it does
        not beat bicubic) is replaced by bicubic resizing, which the note says.
        """
        res = list(self.resolutions)
        if size is None:
            size = 256 if 256 in res else res[-1]
        if size not in res:
            raise ValueError(f"--size {size} is not a resolution of {self.name} (its stages make {res} px)")
        k = res.index(size)
        n_model = k if all_upsamplers else min(k, self.default_upsample)
        if n_model == k:
            return size, n_model, None
        return size, n_model, (f"bicubic {res[n_model]} -> {size} px: upsampler{n_model + 1} is left out of the "
                               "default cascade (it does not beat bicubic; see the model card); --all-upsamplers "
                               "runs it")

    def describe(self) -> dict[str, Any]:
        """Model name, stage sizes and parameter counts, for provenance records."""
        def n_params(m: torch.nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())
        stages = {"decoder": n_params(self.decoder)}
        if self.prior is not None:
            stages["prior"] = n_params(self.prior)
        if self.autoencoder is not None:
            stages["autoencoder"] = n_params(self.autoencoder)
        for k, (u, v) in enumerate(zip(self.upsamplers, self.upsamplers_last)):
            stages[f"upsampler{k + 1}"] = n_params(u)
            if v is not None:
                stages[f"upsampler{k + 1}_last"] = n_params(v)
        d = {"model": self.name, "clip": self.clip.spec, "clip_id": self.clip.model_id,
             "resolutions": self.resolutions, "parameters": stages, "latent_decoder": self.is_latent,
             "conventions": self.conventions.to_dict()}
        if self.decoder_text is not None:
            d["decoder_text"] = self.decoder_text.spec
        if self.autoencoder is not None:
            ac = self.autoencoder.config
            d["autoencoder"] = {"parameters": stages["autoencoder"], "image_size": ac.image_size,
                                "latent_shape": [ac.latent_channels, ac.latent_size, ac.latent_size],
                                "factor": ac.factor, "scaling_factor": ac.scaling_factor}
        return d

    # ------------------------------------------------------------------ text
    def text_features(self, prompts: list[str], n_tokens: int) -> tuple[Tensor, Tensor]:
        """CLIP's per-token text features and mask, cut to n_tokens, on the pipeline's device."""
        feats, mask = self.clip.text_tokens(prompts)
        if feats.shape[1] > n_tokens:
            feats, mask = feats[:, :n_tokens], mask[:, :n_tokens]
        return feats.to(self.device), mask.to(self.device)

    def text_condition(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """(z_t (B, d) as the text tower gives it, token features (B, L, w), mask (B, L) bool), on the device."""
        z_t, feats, mask = self.clip.text_condition(list(prompts))
        return z_t.to(self.device), feats.to(self.device), mask.to(self.device)

    def empty_prompt_condition(self, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """text_condition([""]) repeated `batch` times (cached): the unconditional text of "empty_prompt" families."""
        if self._empty_prompt is None:
            self._empty_prompt = self.text_condition([""])
        return tuple(x.expand(batch, *x.shape[1:]) for x in self._empty_prompt)  # type: ignore[return-value]

    def decoder_text_features(self, prompts: list[str]) -> Tensor:
        """Token features (B, L, w) of the decoder's own text tower (decoder_text, else the CLIP's), on the device;
        the empty prompt's are cached."""
        tower = self.decoder_text or self.clip
        if list(prompts) == [""]:
            if self._empty_decoder_text is None:
                self._empty_decoder_text = tower.text_tokens([""])[0].to(self.device)
            return self._empty_decoder_text
        return tower.text_tokens(list(prompts))[0].to(self.device)

    def z_i_noise(self, n: int, *, x_T_given: bool, g: torch.Generator,
                  given: Tensor | None = None) -> Tensor | None:
        """The forward-process noise (n, d) of a noise-augmented decoder's z_i (None for other decoders): `given`,
        else one draw from seed FIXED_Z_I_NOISE_SEED shared by every row when x_T is given (as `invert` uses, so
        inverted x_T reconstruct their images at any noise_level), else n draws from g (before x_T, as diffusers'
        StableUnCLIP pipelines draw it)."""
        if not self.decoder.config.noise_augmented:
            if given is not None:
                raise ValueError("noise['z_i'] is the noise of a noise-augmented decoder's z_i (Stable unCLIP); this "
                                 "decoder reads z_i as it is")
            return None
        d = self.decoder.config.clip_dim
        if given is not None:
            return self._noise(given, (n, d), g, "noise['z_i']")
        if x_T_given:
            fixed = torch.randn(d, generator=torch.Generator().manual_seed(FIXED_Z_I_NOISE_SEED))
            return fixed[None].expand(n, -1)
        return torch.randn((n, d), generator=g)

    def _check_policy(self, prompts: list[str]) -> None:
        if self.policy is None:
            return
        for p in prompts:
            hits = self.policy.check_prompt(p)
            if hits:
                raise BlockedContentError(f"prompt {p!r} names blocked concept(s) {hits}")

    # ------------------------------------------------------------------ prior
    @property
    def takes_negative_prompt(self) -> bool:
        """Whether text_to_image / sample_prior take negative_prompt: a prior whose unconditional branch is a text
        (the empty prompt of Karlo, Kandinsky 2.2, Stable unCLIP), not a learned null embedding."""
        return self.prior is not None and self.conventions.text_conditioning.takes_negative_prompt

    def sample_prior(self, prompts: str | Sequence[str], *, n: int = 1, sampling: SamplingConfig | None = None,
                     seed: int | torch.Generator | None = None, progress: bool = False,
                     x_T: Tensor | None = None, negative_prompt: str | Sequence[str] | None = None) -> Tensor:
        """z_i ~ p(z_i | y) with the diffusion prior (sec. 2.2), best of sampling.best_of by cosine(z_i, z_t);
        -> (len*n, d), unit rows unless the family reads raw embeddings (conventions.normalize_embeddings).
        Uses sampling.prior_sampler, prior_steps, prior_guidance. x_T (len*n*best_of, d) fixes the initial noise
        (diffusers' prior_latents). negative_prompt (one string, or one per prompt): the unconditional branch's text
        in place of the empty prompt (diffusers' negative_prompt), for families with takes_negative_prompt."""
        if self.prior is None:
            raise ValueError("this pipeline has no prior; decode image embeddings with .decode(z_i) instead")
        prompts = _check_prompts(prompts)
        negatives = _check_negative_prompt(negative_prompt, len(prompts))
        self._check_policy(prompts)
        return self._sample_prior(prompts, negatives, n=n, sampling=sampling, seed=seed, progress=progress, x_T=x_T)

    def _sample_prior(self, prompts: list[str], negatives: list[str] | None, *, n: int,
                      sampling: SamplingConfig | None, seed: int | torch.Generator | None, progress: bool,
                      x_T: Tensor | None) -> Tensor:
        """sample_prior after its checks: negatives (one per prompt or None) are the unconditional texts."""
        n = check_positive_int("n", n)
        sc = check_sampling(sampling, self.sampling)
        best_of, steps, guidance, sampler = sc.best_of, sc.prior_steps, sc.prior_guidance, sc.prior_sampler
        g, seed = generator(seed)
        prior = self.prior
        expanded = expand(prompts, n * best_of)
        x_T = self._noise(x_T, (len(expanded), prior.config.clip_dim), g, "x_T")
        with torch.inference_mode(), self._autocast(sc):
            cond, uncond, z_t = self.conventions.text_conditioning.prior(
                self, expanded, None if negatives is None else expand(negatives, n * best_of))
            net = classifier_free_guidance(prior, cond, uncond, guidance, prepare=prior.prepare_condition)
            info = self.stage_info["prior"]
            denoise = model_to_denoiser(net, self.schedules["prior"], info.prediction, info.clip_x0)
            x0 = self._run_sampler(denoise, x_T.to(self.device), steps=steps, sampler=sampler, eta=0.0, generator=g,
                                   progress=progress, stage="prior")
            z_i = prior.scale_out(x0).float()
            if self.conventions.normalize_embeddings:
                z_i = F.normalize(z_i, dim=-1)
        # best of n (sec. 2.2): keep the candidate with the largest cosine(z_i, z_t)
        z_i = z_i.view(len(prompts) * n, best_of, -1)
        scores = F.cosine_similarity(z_i, z_t.float().view(len(prompts) * n, best_of, -1), dim=-1)
        return z_i[torch.arange(z_i.shape[0]), scores.argmax(dim=1)].cpu()

    @staticmethod
    def _noise(x_T: Tensor | None, shape: tuple[int, ...], g: torch.Generator, name: str) -> Tensor:
        """A stage's initial noise: drawn from g when None, else checked against `shape`."""
        if x_T is None:
            return torch.randn(shape, generator=g)
        if not isinstance(x_T, Tensor) or tuple(x_T.shape) != tuple(shape) or not x_T.dtype.is_floating_point:
            got = tuple(x_T.shape) if isinstance(x_T, Tensor) else type(x_T).__name__
            raise ValueError(f"{name} must be a float tensor of shape {tuple(shape)}, got {got}; pass None to draw it "
                             "from the seed")
        return x_T

    # ------------------------------------------------------------------ decoder + upsamplers
    def _run_sampler(self, denoise: Callable, x_T: Tensor, *, steps: int, sampler: str, eta: float,
                     generator: torch.Generator, progress: bool, stage: str) -> Tensor:
        """One stage's registered sampler; its progress bar is labelled with the stage ("decoder: DDIM")."""
        return run_sampler(sampler, denoise, x_T, self.schedules[stage], self.stage_timesteps(stage, sampler, steps),
                           eta=eta,
                           variance=self.stage_variance(stage, sampler), generator=generator, progress=progress,
                           label=stage)

    def _autocast(self, sampling: SamplingConfig):
        """The networks' precision (SamplingConfig.precision): autocast on the pipeline's device, or nothing."""
        if sampling.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if sampling.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def stage_timesteps(self, stage: str, sampler: str, steps: int | Tensor) -> Tensor:
        """The timesteps `sampler` walks for `stage`: `steps` of its spacing (or given ones), plus the stage's
        steps_offset (diffusers' DDPM / DDIM schedulers shift "leading" timesteps by it)."""
        spacing = self.stage_info[stage].spacing or get_sampler(sampler).spacing
        ts = torch.tensor(timesteps(self.schedules[stage], steps, spacing))
        offset = self.stage_info[stage].steps_offset
        return (ts + offset).clamp(max=self.schedules[stage].T - 1) if offset else ts

    def stage_variance(self, stage: str, sampler: str) -> str | None:
        """The variance `sampler` uses for `stage`: the stage's (StageInfo.variance) where the sampler takes it,
        else None (the sampler's default)."""
        spec = get_sampler(sampler)
        info = self.stage_info.get(stage)
        variance = None if info is None else info.variance
        return variance if variance in spec.variances else None

    def _with_variance(self, stage: str, sampler: str) -> bool:
        """Whether the stage's denoiser must return (x0, var_interp): the sampler reads a learned variance."""
        return get_sampler(sampler).needs_variance(self.stage_variance(stage, sampler))

    def clip_denoised_rule(self, clip_denoised: bool | None, *, x_T_given: bool, sampler: str) -> bool:
        """Whether the decoder clamps each predicted x0 to [-1, 1]: the one rule of every decoding call.

        A decoder stage without an x0 range (stage_info["decoder"].clip_x0 None, as every latent decoder: its x0
        is a latent, and [-1, 1] bounds pixels) never clamps, whatever is asked: False. Otherwise an explicit
        True/False wins; None clamps with a sampler that always clamps (SamplerSpec.clamps_x0: Karlo's "unclip",
        as diffusers' UnCLIPScheduler), and otherwise when sampling from fresh noise (text_to_image, variations,
        inpaint, decode without x_T) and not when decoding from a given x_T: a DDIM-inverted x_T reconstructs its
        image only through the same unclamped ODE that `invert` ran.
        """
        clip_denoised = _check_clip_denoised(clip_denoised)
        if self.stage_info["decoder"].clip_x0 is None:
            return False
        if clip_denoised is None and get_sampler(sampler).clamps_x0:
            return True
        return (not x_T_given) if clip_denoised is None else clip_denoised

    @property
    def decoder_negative_is_z_i(self) -> bool:
        """Whether the decoder's unconditional branch is an image embedding alone (Kandinsky 2.2's: no text, no
        noise augmentation), which decode's negative_z_i replaces (diffusers' negative_image_embeds)."""
        c = self.decoder.config
        return not (c.noise_augmented or c.text_width or c.use_z_t)

    def _decoder_denoiser(self, z_i: Tensor, prompts: list[str] | None, guidance: float, *,
                          clip_denoised: bool, with_variance: bool = False, noise_level: int = 0,
                          z_i_noise: Tensor | None = None, negative_z_i: Tensor | None = None) -> Callable:
        if noise_level and not self.decoder.config.noise_augmented:
            raise ValueError(f"noise_level={noise_level} noises the image embedding of a noise-augmented decoder "
                             "(Stable unCLIP); this decoder reads z_i as it is: pass noise_level=0")
        cond, uncond = self.conventions.text_conditioning.decoder(self, z_i.to(self.device), prompts,
                                                                  noise_level=noise_level, z_i_noise=z_i_noise)
        if negative_z_i is not None:
            uncond = {**uncond, "z_i": negative_z_i.to(self.device)}
        net = classifier_free_guidance(self.decoder, cond, uncond, guidance,
                                       prepare=self.decoder.prepare_condition)
        info = self.stage_info["decoder"]
        return model_to_denoiser(net, self.schedules["decoder"], info.prediction, info.clip_x0 if clip_denoised else None,
                                 with_variance=with_variance)

    def decoder_denoiser(self, z_i: Tensor, *, guidance: float = 3.0, prompts: Sequence[str] | None = None,
                         clip_denoised: bool = True, noise_level: int = 0) -> Callable:
        """The guided decoder as a Denoiser (x_t, t) -> x0, for samplers and DDIM inversion.

        clip_denoised=True (for sampling from fresh noise) clamps each predicted x0 to [-1, 1]; pass False for
        DDIM inversion and for decoding a given x_T (see clip_denoised_rule). A noise-augmented decoder noises z_i to
        noise_level with the fixed noise of z_i_noise (x_T given).
        """
        z_i = self._check_z_i(z_i)
        return self._decoder_denoiser(z_i, None if prompts is None else _check_prompts(prompts),
                                      _check_guidance("guidance", guidance),
                                      clip_denoised=_check_clip_denoised(clip_denoised, allow_none=False),
                                      noise_level=noise_level,
                                      z_i_noise=self.z_i_noise(z_i.shape[0], x_T_given=True, g=torch.Generator()))

    def _check_decode_args(self, z_i: Tensor, prompts: Sequence[str] | None) -> tuple[Tensor, list[str] | None]:
        """Validated (z_i, prompt list) of a decode call; prompts must match z_i's rows."""
        z_i = self._check_z_i(z_i)
        prompt_list = None if prompts is None else _check_prompts(prompts)
        if prompt_list is not None and len(prompt_list) != z_i.shape[0]:
            raise ValueError(f"prompts has {len(prompt_list)} entries but z_i has {z_i.shape[0]} rows; "
                             "pass one prompt per embedding")
        return z_i, prompt_list

    def _check_z_i(self, z_i: Tensor) -> Tensor:
        z_i = torch.as_tensor(check_embeddings("z_i", z_i, self.decoder.config.clip_dim, allow_1d=True))
        z_i = z_i[None] if z_i.ndim == 1 else z_i
        check_nonzero_rows("z_i", z_i)
        if not self.conventions.normalize_embeddings:  # the family's decoder reads raw embeddings (Karlo)
            return z_i.float()
        return F.normalize(z_i.float(), dim=-1)

    def _check_x_T(self, x_T: Tensor | None, n: int, g: torch.Generator) -> Tensor:
        """The decoder's x_T of shape x_T_shape(n): drawn from g when None, else checked."""
        shape = self.x_T_shape(n)
        if x_T is None:
            return torch.randn(shape, generator=g)
        if not isinstance(x_T, Tensor) or not x_T.dtype.is_floating_point or tuple(x_T.shape) != shape:
            got = tuple(x_T.shape) if isinstance(x_T, Tensor) else type(x_T).__name__
            what = "latent of the autoencoder" if self.is_latent else "noise image"
            raise ValueError(f"x_T has shape {got}, expected a float tensor of shape {shape} (pipe.x_T_shape({n}): "
                             f"one {what} per z_i); pass None to draw it from the seed")
        return x_T

    def _to_pixels(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Decoder samples -> (pixels (B, 3, s, s) in [-1, 1], stages); a latent decoder's pass the autoencoder."""
        if self.autoencoder is None:
            x = x.clamp(-1, 1)
            return x, {"decoder": x.cpu()}
        pixels = self.autoencoder.decode(x.to(next(self.autoencoder.parameters()).dtype)).float().clamp(-1, 1)
        return pixels, {"decoder_latents": x.cpu(), "decoder": pixels.cpu()}

    def _to_latents(self, pixels: Tensor) -> Tensor:
        """Images (B, 3, s, s) in [-1, 1] -> what the decoder samples: the pixels, or the autoencoder's latents."""
        if self.autoencoder is None:
            return pixels
        return self.autoencoder.encode(pixels.to(next(self.autoencoder.parameters()).dtype)).float()

    def decode(self, z_i: Tensor, *, sampling: SamplingConfig | None = None, x_T: Tensor | None = None,
               prompts: Sequence[str] | None = None, upsample: bool | int | None = None,
               seed: int | torch.Generator | None = None, progress: bool = False,
               noise: Mapping[str, Tensor] | None = None, negative_z_i: Tensor | None = None) -> UnCLIPOutput:
        """Images from CLIP image embeddings z_i (B, d) (sec. 2.1), optionally from a given x_T of x_T_shape(B).

        sampling: decoder_sampler / decoder_steps / decoder_guidance / eta / clip_denoised and the upsampler
        settings (None: self.sampling). upsample: None runs the default cascade, True every upsampler, False none,
        an int k the first k. A latent decoder samples latents (kept in stages["decoder_latents"]); the
        autoencoder decodes them to the pixels of stages["decoder"], which the upsamplers take.

        clip_denoised (sampling.clip_denoised) clamps each predicted x0 to [-1, 1]; None (the default) follows
        clip_denoised_rule: on from fresh noise, off when x_T is given, since a DDIM-inverted x_T reconstructs its
        image only through the same unclamped ODE; always off for a latent decoder. The value used is in
        settings["clip_denoised"], the whole config in settings["sampling"]. noise: initial noises of the
        upsampler stages ({"upsampler1": (B, 3, H, W)}, diffusers' super_res_latents), else drawn from the seed, and
        of a noise-augmented decoder's z_i ({"z_i": (B, d)}; else the rule of z_i_noise). prompts: the text the
        decoder reads where it reads text (recorded in settings["prompts"]); sampling.noise_level: the level a
        noise-augmented decoder's z_i is noised to (Stable unCLIP). negative_z_i (B, d): the unconditional branch's
        image embedding in place of the decoder's null (diffusers' negative_image_embeds), where
        decoder_negative_is_z_i.
        """
        sc = check_sampling(sampling, self.sampling)
        noise = _check_noise(noise, ("z_i", "upsampler1", "upsampler2"))
        z_i, prompt_list = self._check_decode_args(z_i, prompts)
        if negative_z_i is not None:
            if not self.decoder_negative_is_z_i:
                raise ValueError("negative_z_i replaces the null image embedding of a decoder that reads z_i alone "
                                 "(Kandinsky 2.2); this decoder's unconditional branch also reads text or a noised "
                                 "embedding: pass negative_z_i=None")
            negative_z_i = self._check_z_i(negative_z_i)
            if negative_z_i.shape != z_i.shape:
                raise ValueError(f"negative_z_i has shape {tuple(negative_z_i.shape)} but z_i has "
                                 f"{tuple(z_i.shape)}; pass one negative embedding per z_i")
        n_up = self.upsample_stages(upsample)
        given = x_T is not None
        clip_denoised = self.clip_denoised_rule(sc.clip_denoised, x_T_given=given, sampler=sc.decoder_sampler)
        g, seed = generator(seed)
        z_i_noise = self.z_i_noise(z_i.shape[0], x_T_given=given, g=g, given=noise.get("z_i"))
        x_T = self._check_x_T(x_T, z_i.shape[0], g)
        with torch.inference_mode(), self._autocast(sc):
            denoise = self._decoder_denoiser(z_i, prompt_list, sc.decoder_guidance, clip_denoised=clip_denoised,
                                             with_variance=self._with_variance("decoder", sc.decoder_sampler),
                                             noise_level=sc.noise_level, z_i_noise=z_i_noise,
                                             negative_z_i=negative_z_i)
            x = self._run_sampler(denoise, x_T.to(self.device), steps=sc.decoder_steps, sampler=sc.decoder_sampler,
                                  eta=sc.eta, generator=g, progress=progress, stage="decoder")
            x, stages = self._to_pixels(x)
            x = self._cascade(x, stages, n_up=n_up, sampling=sc, g=g, progress=progress, noise=noise)
        settings = {"sampling": sc.to_dict(), "clip_denoised": clip_denoised, "x_T_given": given,
                    "upsampler_steps": sc.upsampler_steps_for(n_up), "z_i_hash": tensor_hash(z_i),
                    "prompts": prompt_list, "seed": seed, **self.describe()}
        if negative_z_i is not None:
            settings["negative_z_i_hash"] = tensor_hash(negative_z_i)
        if z_i_noise is not None:
            settings["z_i_noise"] = ("given" if "z_i" in noise else f"fixed (seed {FIXED_Z_I_NOISE_SEED})" if given
                                     else "drawn from the seed")
        out = UnCLIPOutput(tensor_to_pil(x.cpu()), z_i.cpu(), stages, settings)
        self._check_images(out)
        return out

    def upsample(self, low: Tensor, index: int, *, sampling: SamplingConfig | None = None,
                 seed: int | torch.Generator | None = None, progress: bool = False,
                 x_T: Tensor | None = None) -> Tensor:
        """Run upsampler `index` (0 or 1) on images (B, 3, h, h) in [-1, 1] -> (B, 3, f*h, f*h), with
        sampling.upsampler_sampler and sampling.upsampler_steps[index] (None: self.sampling).

        The low-resolution image is resized once (bicubic; antialiased where the stage's config says, as Karlo);
        a stage with a separate last-step network (upsamplers_last) runs it at the last timestep. x_T fixes the
        initial noise (B, 3, f*h, f*w)."""
        if not 0 <= index < len(self.upsamplers):
            raise ValueError(f"upsampler index {index} out of range; this pipeline has {len(self.upsamplers)}")
        sc = check_sampling(sampling, self.sampling)
        sampler = sc.upsampler_sampler
        up = self.upsamplers[index]
        last = self.upsamplers_last[index] or up
        g, seed = generator(seed)
        B, _, h, w = low.shape
        if h != up.config.low_res:
            raise ValueError(f"upsampler{index + 1} takes {up.config.low_res}px images, got {h}px")
        f = up.config.factor
        low_up = upsample_low_res(low.to(self.device).float(), (h * f, w * f), up.config.antialias)
        stage = f"upsampler{index + 1}"
        ts = self.stage_timesteps(stage, sampler, sc.upsampler_steps_for(index + 1)[index])
        t_last = int(ts[-1])

        def net(x: Tensor, t: Tensor) -> Tensor:
            return (last if int(t.reshape(-1)[0]) == t_last else up)(x, t, low_up)

        info = self.stage_info[stage]
        denoise = model_to_denoiser(net, self.schedules[stage], info.prediction, info.clip_x0,
                                    with_variance=self._with_variance(stage, sampler))
        x_T = self._noise(x_T, (B, 3, h * f, w * f), g, f"noise[{stage!r}]")
        with torch.inference_mode(), self._autocast(sc):
            return self._run_sampler(denoise, x_T.to(self.device), steps=ts, sampler=sampler, eta=0.0,
                                     generator=g, progress=progress, stage=stage).clamp(-1, 1)

    def _cascade(self, x: Tensor, stages: dict[str, Tensor], *, n_up: int, sampling: SamplingConfig,
                 g: torch.Generator, progress: bool, noise: Mapping[str, Tensor] | None = None) -> Tensor:
        """Run the first n_up upsamplers on pixels x with `sampling`'s upsampler settings."""
        for k in range(n_up):
            x = self.upsample(x, k, sampling=sampling, seed=g, progress=progress,
                              x_T=(noise or {}).get(f"upsampler{k + 1}"))
            stages[f"upsampler{k + 1}"] = x.cpu()
        return x

    def _check_images(self, out: UnCLIPOutput) -> None:
        if self.policy is None or self.policy.encode_image is None:
            return
        hits = self.policy.check_images(out.images)
        flagged = [i for i, h in enumerate(hits) if h]
        if flagged:
            raise BlockedContentError(f"generated images {flagged} were classified as blocked concepts "
                                      f"{[hits[i] for i in flagged]}")

    # ------------------------------------------------------------------ public capabilities
    def text_to_image(self, prompts: str | Sequence[str], *, n: int = 1, sampling: SamplingConfig | None = None,
                      upsample: bool | int | None = None, seed: int | torch.Generator | None = None,
                      progress: bool = False, noise: Mapping[str, Tensor] | None = None,
                      negative_prompt: str | Sequence[str] | None = None) -> UnCLIPOutput:
        """Text -> prior -> z_i -> decoder -> upsamplers (Ramesh et al. 2022, fig. 2): n images per prompt.

        sampling: every stage's settings (None: self.sampling). upsample: None the default cascade, True every
        upsampler, False none, an int k the first k. The decoder starts from fresh noise, so predicted x0 is
        clamped (clip_denoised_rule); progress shows one bar per stage. noise fixes initial noises by stage
        ({"prior": (len*n*best_of, d), "decoder": x_T_shape(len*n), "upsampler1": ...}, as diffusers' *_latents);
        one generator draws the others in stage order.

        negative_prompt (one string, or one per prompt; families with takes_negative_prompt): the prior's
        unconditional text in place of the empty prompt. Where the decoder's unconditional branch is an image
        embedding (decoder_negative_is_z_i: Kandinsky 2.2) the prior also samples each negative prompt, in the same
        batch after the prompts, and its z_i replaces the decoder's null, as diffusers' KandinskyV22PriorPipeline
        with negative_prompt followed by its decoder; noise["prior"] then has 2*len*n*best_of rows.
        """
        prompts = _check_prompts(prompts)
        negatives = _check_negative_prompt(negative_prompt, len(prompts))
        if negatives is not None and not self.takes_negative_prompt:
            raise ValueError(f"negative_prompt replaces the empty prompt of a prior whose unconditional branch is a "
                             f"text; {self.name}'s is a learned null embedding (conventions text "
                             f"{self.conventions.text!r}): pass negative_prompt=None")
        sc = check_sampling(sampling, self.sampling)
        noise = _check_noise(noise, ("prior", "decoder", "z_i", "upsampler1", "upsampler2"))
        self.upsample_stages(upsample)  # checked before time is spent in the prior
        n = check_positive_int("n", n)
        if self.prior is None:
            raise ValueError("this pipeline has no prior; decode image embeddings with .decode(z_i) instead")
        self._check_policy(prompts)
        g, seed = generator(seed)
        negative_z_i = None
        if negatives is not None and self.decoder_negative_is_z_i:
            both = self._sample_prior(prompts + negatives, negatives + negatives, n=n, sampling=sc, seed=g,
                                      progress=progress, x_T=noise.get("prior"))
            z_i, negative_z_i = both[:len(prompts) * n], both[len(prompts) * n:]
        else:
            z_i = self._sample_prior(prompts, negatives, n=n, sampling=sc, seed=g, progress=progress,
                                     x_T=noise.get("prior"))
        expanded = expand(prompts, n)
        out = self.decode(z_i, sampling=sc, x_T=noise.get("decoder"),
                          prompts=expanded if self.decoder.config.text_width else None, upsample=upsample, seed=g,
                          progress=progress, noise={k: v for k, v in noise.items() if k not in ("prior", "decoder")},
                          negative_z_i=negative_z_i)
        out.settings.update({"prompts": prompts, "n": n, "seed": seed, "negative_prompt": negatives})
        return out

    def encode_images(self, images: ImageLike | Sequence[ImageLike]) -> Tensor:
        """CLIP image embeddings z_i (B, d): unit norm, or raw for a family whose decoder reads raw ones."""
        return self.clip.encode_image(images, normalize=self.conventions.normalize_embeddings)

    def _decoder_input(self, images: ImageLike | Sequence[ImageLike]) -> Tensor:
        """Images as (B, 3, s, s) pixels in [-1, 1] at the decoder stage's output size (resolutions[0])."""
        items = images if isinstance(images, (list, tuple)) else [images]
        return pil_to_tensor([load_image(im) for im in items], size=self.resolutions[0])

    def invert(self, images: ImageLike | Sequence[ImageLike], *, sampling: SamplingConfig | None = None,
               progress: bool = False) -> tuple[Tensor, Tensor]:
        """image -> (z_i, x_T): CLIP image encoder, then DDIM inversion of the decoder (sec. 3.1, fig. 4).

        Runs sampling.decoder_steps DDIM steps under sampling.invert_guidance with sampling.invert_refine
        fixed-point iterations per step (each costs one more decoder pass per step and makes the reconstruction
        closer). Returns z_i (B, d) and x_T of x_T_shape(B): a latent decoder inverts the autoencoder's latents of
        the image. decode(z_i, x_T=x_T, sampling=sc.replace(decoder_sampler="ddim", eta=0, decoder_guidance=
        sc.invert_guidance)) reconstructs the image (the analyses do this for their inverted frames).
        """
        sc = check_sampling(sampling, self.sampling)
        steps, guidance, refine = sc.decoder_steps, sc.invert_guidance, sc.invert_refine
        z_i = self.encode_images(images)
        with torch.inference_mode(), self._autocast(sc):
            x0 = self._to_latents(self._decoder_input(images).to(self.device))
            # the unclamped ODE that decode(z_i, x_T=x_T) runs back (clip_denoised_rule with x_T given, and the fixed
            # z_i noise of z_i_noise with x_T given)
            z_i_noise = self.z_i_noise(z_i.shape[0], x_T_given=True, g=torch.Generator())
            denoise = self._decoder_denoiser(z_i, None, guidance, clip_denoised=False, noise_level=sc.noise_level,
                                             z_i_noise=z_i_noise)
            x_T = invert_ddim(denoise, x0, self.schedules["decoder"], self.stage_timesteps("decoder", "ddim", steps),
                              n_fixed_point=refine, progress=progress, label="decoder")
        return z_i, x_T.cpu()

    def variation_sampling(self) -> SamplingConfig:
        """The default settings of `variations`: self.sampling with eta 1 where the decoder's sampler takes eta
        (DDIM: noise at every step, as the paper's variations), else self.sampling as it is."""
        if get_sampler(self.sampling.decoder_sampler).honours_eta:
            return self.sampling.replace(eta=1.0)
        return self.sampling

    def variations(self, image: ImageLike, *, n: int = 4, sampling: SamplingConfig | None = None,
                   seed: int | torch.Generator | None = None, upsample: bool | int | None = None,
                   progress: bool = False, prompt: str | None = None) -> UnCLIPOutput:
        """Image variations (sec. 3.1): decode the image's z_i n times from fresh noise (sampling None:
        variation_sampling(), DDIM with eta 1). prompt: a second condition for a decoder that reads text (Stable
        unCLIP's), recorded in settings["prompts"]; sampling.noise_level: how much of the image a noise-augmented
        decoder sees."""
        n = check_positive_int("n", n)
        if prompt is not None and not self.decoder.config.text_width:
            raise ValueError("prompt conditions decoders that read text; this decoder reads z_i only: pass prompt=None")
        sc = check_sampling(sampling, self.variation_sampling())
        z_i = self.encode_images([image]).expand(n, -1)
        out = self.decode(z_i, sampling=sc, upsample=upsample, seed=seed, progress=progress,
                          prompts=None if prompt is None else [prompt] * n)
        out.settings.update({"task": "variations", "n": n})
        return out

    def inpaint(self, image: ImageLike, mask: Tensor | Image.Image, *, prompt: str | None = None,
                z_i: Tensor | None = None, n: int = 1, sampling: SamplingConfig | None = None, n_resample: int = 4,
                seed: int | torch.Generator | None = None, upsample: bool | int | None = None,
                progress: bool = False) -> UnCLIPOutput:
        """Inpainting by RePaint-style resampling (Lugmayr et al. 2022) with the decoder conditioned on a z_i.

        mask: (s, s) or (1, s, s) tensor / L-mode image at the decoder stage's pixel size (resolutions[0]),
        1 (white) = regenerate. A latent decoder resamples in latent space from x0 = the image's latents, with the
        mask taken to the latent grid: a latent cell is regenerated when any of its pixels is.
        The condition is z_i if given, else the prior's z_i for `prompt`, else the image's own z_i.
        Sampling starts from fresh noise, so predicted x0 is clamped (clip_denoised_rule; never for latents).
        RePaint walks DDIM steps: sampling.decoder_steps under sampling.decoder_guidance.
        """
        n = check_positive_int("n", n)
        sc = check_sampling(sampling, self.sampling)
        steps, guidance = sc.decoder_steps, sc.decoder_guidance
        n_up = self.upsample_stages(upsample)
        clip_denoised = self.clip_denoised_rule(sc.clip_denoised, x_T_given=False, sampler="ddim")
        m = self._check_mask(mask, self.resolutions[0])
        g, seed = generator(seed)
        if z_i is None:
            z_i = (self.sample_prior([prompt], n=1, sampling=sc, seed=g, progress=progress) if prompt is not None
                   else self.encode_images([image]))
        z_i = self._check_z_i(z_i)[:1].expand(n, -1)
        with torch.inference_mode(), self._autocast(sc):
            x0 = self._to_latents(self._decoder_input([image]).to(self.device)).expand(n, -1, -1, -1)
            if self.autoencoder is not None:
                m = F.max_pool2d(m, self.autoencoder.config.factor)  # (1, 1, h, h): any regenerated pixel
            z_i_noise = self.z_i_noise(n, x_T_given=False, g=g)
            denoise = self._decoder_denoiser(z_i, None, guidance, clip_denoised=clip_denoised,
                                             noise_level=sc.noise_level, z_i_noise=z_i_noise)
            x_T = torch.randn(self.x_T_shape(n), generator=g).to(self.device)
            x = sample_repaint(denoise, x_T, self.schedules["decoder"], self.stage_timesteps("decoder", "ddim", steps), x0,
                               m.to(self.device), n_resample=n_resample, generator=g, progress=progress,
                               label="decoder")
            x, stages = self._to_pixels(x)
            x = self._cascade(x, stages, n_up=n_up, sampling=sc, g=g, progress=progress)
        settings = {"task": "inpaint", "sampling": sc.to_dict(), "n_resample": n_resample,
                    "clip_denoised": clip_denoised, "upsampler_steps": sc.upsampler_steps_for(n_up),
                    "prompt": prompt, "z_i_hash": tensor_hash(z_i), "seed": seed,
                    **self.describe()}
        return UnCLIPOutput(tensor_to_pil(x.cpu()), z_i.cpu(), stages, settings)

    @staticmethod
    def _check_mask(mask: Tensor | Image.Image, s: int) -> Tensor:
        if isinstance(mask, Image.Image):
            if mask.size != (s, s):
                raise ValueError(f"mask is {mask.size[0]}x{mask.size[1]} but the decoder makes {s}x{s} images; "
                                 f"resize the mask to {s}x{s}")
            mask = torch.from_numpy(__import__("numpy").asarray(mask.convert("L"), dtype="float32") / 255.0)
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a tensor or a PIL image, got {type(mask).__name__}")
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if tuple(mask.shape) != (s, s):
            raise ValueError(f"mask has shape {tuple(mask.shape)} but the decoder makes {s}x{s} images; "
                             f"pass an ({s}, {s}) mask with 1 = regenerate")
        return (mask.float() > 0.5).float()[None, None]
