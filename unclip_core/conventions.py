"""A family's conventions as data plus small strategy objects, so one `UnCLIP` class runs every family.

What differs between the unCLIP families we run, and where it lives:
  * how text conditions the prior and the decoder, and what their unconditional (CFG) branch is: a
    `TextConditioning` strategy named by `Conventions.text`:
      - "learned_null" (our ShapesWorld family, the paper): unit-norm z_t and the CLIP text tokens; the
        unconditional branch is the prior's learned null z_t with zero tokens, the decoder's learned null z_i;
      - "empty_prompt" (Karlo, Kandinsky 2.2's prior): raw z_t (text_embeds) and the text tower's hidden states;
        the unconditional branch is the encoding of the empty prompt "", and the decoder also reads z_t;
      - "noise_augmented" (Stable unCLIP): the prior as "empty_prompt"; the decoder reads z_i noised to the
        sampling's noise_level and its own text tower's hidden states, with zeros and "" as the unconditional;
  * whether z_t and z_i are L2-normalised (`Conventions.normalize_embeddings`; Karlo's and Kandinsky's decoders
    read raw embeddings);
  * each stage's sampler variance (`StageInfo.variance`) and default sampling settings (pipeline.json "sampling");
  * a super-resolution stage's separate last-step network (stage "upsampler1_last", Karlo's super_res_last).

pipeline.json holds `"conventions": {"text": ..., "normalize_embeddings": ...}`; folders imported before this
field existed are read by their "family" (FAMILY_CONVENTIONS).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import Tensor

from .checks import check_choice
from .sampling import SamplingConfig

if TYPE_CHECKING:
    from .pipeline import UnCLIP

Condition = dict[str, "Tensor | None"]


class TextConditioning:
    """How prompts condition the prior and the decoder, and what the unconditional branch of each is."""

    name = "base"

    # whether the unconditional branch is a text (then a negative prompt can replace it)
    takes_negative_prompt = False

    def prior(self, pipe: "UnCLIP", prompts: list[str],
              negative_prompts: list[str] | None = None) -> tuple[Condition, Condition, Tensor]:
        """-> (cond, uncond, z_t used to rank best-of candidates) for the prior's network; negative_prompts (one per
        prompt) replace the unconditional text where the family has one (takes_negative_prompt)."""
        raise NotImplementedError

    def decoder(self, pipe: "UnCLIP", z_i: Tensor, prompts: list[str] | None, *, noise_level: int = 0,
                z_i_noise: Tensor | None = None) -> tuple[Condition, Condition]:
        """-> (cond, uncond) for the decoder's network, given z_i (B, d) on the pipeline's device; a noise-augmented
        decoder also takes the noise level and the forward process' noise z_i_noise (B, d)."""
        raise NotImplementedError


class LearnedNullText(TextConditioning):
    """Unit-norm z_t and CLIP text tokens; the unconditional branch is the networks' learned nulls."""

    name = "learned_null"

    def prior(self, pipe: "UnCLIP", prompts: list[str],
              negative_prompts: list[str] | None = None) -> tuple[Condition, Condition, Tensor]:
        if negative_prompts is not None:
            raise ValueError(f"negative_prompt replaces the empty prompt of families whose unconditional branch is "
                             f"a text; this family's ({self.name!r}) is a learned null embedding: pass "
                             "negative_prompt=None")
        prior, c = pipe.prior, pipe.prior.config
        z_t = pipe.clip.encode_text(prompts).to(pipe.device)
        cond: Condition = {"z_t": prior.scale_cond(z_t), "text_tokens": None, "text_mask": None}
        if c.n_text_tokens:
            cond["text_tokens"], cond["text_mask"] = pipe.text_features(prompts, c.n_text_tokens)
        null_z, null_tok, null_mask = prior.null_condition(len(prompts))
        return cond, {"z_t": null_z, "text_tokens": null_tok, "text_mask": null_mask}, z_t

    def decoder(self, pipe: "UnCLIP", z_i: Tensor, prompts: list[str] | None, *, noise_level: int = 0,
                z_i_noise: Tensor | None = None) -> tuple[Condition, Condition]:
        dec, B = pipe.decoder, z_i.shape[0]
        cond: Condition = {"z_i": z_i, "text_tokens": None, "text_mask": None}
        uncond: Condition = {"z_i": dec.null_z_i[None].expand(B, -1), "text_tokens": None, "text_mask": None}
        if dec.config.text_width and prompts is not None:
            feats, mask = pipe.text_features(prompts, 10**6)
            cond["text_tokens"], cond["text_mask"] = feats, mask
            uncond["text_tokens"], uncond["text_mask"] = torch.zeros_like(feats), torch.zeros_like(mask)
        return cond, uncond


class EmptyPromptText(TextConditioning):
    """Raw z_t and the text tower's hidden states; the unconditional branch is the encoding of "" (Karlo)."""

    name = "empty_prompt"
    takes_negative_prompt = True

    def prior(self, pipe: "UnCLIP", prompts: list[str],
              negative_prompts: list[str] | None = None) -> tuple[Condition, Condition, Tensor]:
        prior = pipe.prior
        n_tok = prior.config.n_text_tokens
        z_t, feats, mask = pipe.text_condition(prompts)
        if negative_prompts is None:
            null_z, null_f, null_m = pipe.empty_prompt_condition(len(prompts))
        else:  # diffusers' negative_prompt: the negative's encoding in place of the empty prompt's
            null_z, null_f, null_m = pipe.text_condition(negative_prompts)
        cond: Condition = {"z_t": prior.scale_cond(z_t), "text_tokens": feats[:, :n_tok], "text_mask": mask[:, :n_tok]}
        uncond: Condition = {"z_t": prior.scale_cond(null_z), "text_tokens": null_f[:, :n_tok],
                             "text_mask": null_m[:, :n_tok]}
        return cond, uncond, z_t

    def decoder(self, pipe: "UnCLIP", z_i: Tensor, prompts: list[str] | None, *, noise_level: int = 0,
                z_i_noise: Tensor | None = None) -> tuple[Condition, Condition]:
        dec, B = pipe.decoder, z_i.shape[0]
        cond: Condition = {"z_i": z_i, "text_tokens": None, "text_mask": None}
        uncond: Condition = {"z_i": dec.null_z_i[None].expand(B, -1), "text_tokens": None, "text_mask": None}
        use_z_t = getattr(dec.config, "use_z_t", False)
        if not (dec.config.text_width or use_z_t):  # an image-only decoder (Kandinsky 2.2): z_i and its null
            return cond, uncond
        z_t, feats, mask = pipe.text_condition(prompts if prompts is not None else [""] * B)
        null_z, null_f, null_m = pipe.empty_prompt_condition(B)
        if dec.config.text_width:
            cond.update(text_tokens=feats, text_mask=mask)
            uncond.update(text_tokens=null_f, text_mask=null_m)
        if use_z_t:
            cond["z_t"], uncond["z_t"] = z_t, null_z
        return cond, uncond


class NoiseAugmentedText(EmptyPromptText):
    """Stable unCLIP: the prior as Karlo's; the decoder reads z_i noised to `noise_level` (unclip_core.noise_aug)
    joined with the level's embedding, and the hidden states of its own text tower (pipe.decoder_text, every token).
    The unconditional branch zeroes the whole z_i_aug vector and reads the empty prompt (diffusers'
    StableUnCLIP pipelines); without prompts the conditional branch reads the empty prompt too."""

    name = "noise_augmented"

    def decoder(self, pipe: "UnCLIP", z_i: Tensor, prompts: list[str] | None, *, noise_level: int = 0,
                z_i_noise: Tensor | None = None) -> tuple[Condition, Condition]:
        from .noise_aug import augment_z_i
        dec, B = pipe.decoder, z_i.shape[0]
        if z_i_noise is None:
            raise ValueError("a noise-augmented decoder needs the noise of its z_i (z_i_noise (B, d))")
        z_i_aug = augment_z_i(z_i.float(), noise_level, mean=dec.z_i_mean.detach().float(),
                              std=dec.z_i_std.detach().float(), schedule=pipe.schedules["z_i_noising"],
                              noise=z_i_noise.to(z_i.device).float())
        feats = pipe.decoder_text_features(prompts if prompts is not None else [""] * B)
        null = pipe.decoder_text_features([""]).expand(B, -1, -1)
        cond: Condition = {"z_i_aug": z_i_aug, "text_tokens": feats, "text_mask": None}
        uncond: Condition = {"z_i_aug": torch.zeros_like(z_i_aug), "text_tokens": null, "text_mask": None}
        return cond, uncond


TEXT_CONDITIONINGS: dict[str, TextConditioning] = {s.name: s for s in (LearnedNullText(), EmptyPromptText(),
                                                                       NoiseAugmentedText())}


@dataclass(frozen=True)
class Conventions:
    """A family's conventions (module doc); pipeline.json "conventions"."""

    text: str = "learned_null"
    normalize_embeddings: bool = True

    def __post_init__(self) -> None:
        check_choice("conventions text", self.text, tuple(TEXT_CONDITIONINGS))
        if not isinstance(self.normalize_embeddings, bool):
            raise TypeError(f"normalize_embeddings must be True or False, got {self.normalize_embeddings!r}")

    @property
    def text_conditioning(self) -> TextConditioning:
        return TEXT_CONDITIONINGS[self.text]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Conventions":
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown conventions {unknown}; Conventions has {known}")
        return cls(**dict(d))


KARLO_CONVENTIONS = Conventions(text="empty_prompt", normalize_embeddings=False)
# diffusers' UnCLIPPipeline defaults: 25 prior, 25 decoder and 7 super-resolution steps of UnCLIPScheduler,
# guidance 4 (prior) and 8 (decoder), one prior sample per image
KARLO_SAMPLING = SamplingConfig(prior_sampler="unclip", prior_steps=25, prior_guidance=4.0, best_of=1,
                                decoder_sampler="unclip", decoder_steps=25, decoder_guidance=8.0,
                                upsampler_sampler="unclip", upsampler_steps=(7,))
# folders written before pipeline.json carried "conventions" / "sampling": read by their family
FAMILY_CONVENTIONS: dict[str, Conventions] = {"karlo": KARLO_CONVENTIONS}
FAMILY_SAMPLING: dict[str, SamplingConfig] = {"karlo": KARLO_SAMPLING}


def read_conventions(meta: Mapping[str, Any], folder: Any) -> Conventions:
    """pipeline.json's "conventions" (else its family's, else the defaults); a bad entry names the file."""
    entry = meta.get("conventions")
    if entry is None:
        return FAMILY_CONVENTIONS.get(str(meta.get("family")), Conventions())
    try:
        return Conventions.from_dict(entry)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{folder}/pipeline.json: 'conventions': {e}") from None


def expand(prompts: Sequence[str], n: int) -> list[str]:
    """Each prompt n times, in order (the batch layout of every sampling call)."""
    return [p for p in prompts for _ in range(n)]


__all__ = ["Conventions", "EmptyPromptText", "NoiseAugmentedText", "FAMILY_CONVENTIONS", "FAMILY_SAMPLING",
           "KARLO_CONVENTIONS", "expand",
           "KARLO_SAMPLING", "LearnedNullText",
           "TEXT_CONDITIONINGS", "TextConditioning", "read_conventions"]
