"""The sampling settings of analyses' frames, above all of those that decode a DDIM-inverted x_T (interpolation
ends, text-diff theta=0).

DDIM inversion (Song et al. 2021, sec. 4.3; DALL·E 2 sec. 3.1) runs one ODE backwards: an inverted x_T gives
back its image only when it is decoded under that ODE, i.e. the guidance the inversion used
(SamplingConfig.invert_guidance). Inverting and decoding under guidance 1 (the default) reconstructs reliably;
under guidance 3 both run the guided ODE, whose inversion misses on some images (docs/analyses.md,
"Reconstruction at the defaults").
"""
from __future__ import annotations

import warnings

from unclip_core.sampling import SamplingConfig

INVERT_GUIDANCE = SamplingConfig().invert_guidance  # the unguided ODE


def frame_sampling(sampling: SamplingConfig, x_T_mode: str) -> SamplingConfig:
    """The settings an analysis decodes its frames with: DDIM at eta 0, so a frame depends only on its z_i and
    x_T. x_T_mode "inverted": under sampling.invert_guidance (the inversion's ODE), unclamped; "fixed": under
    sampling.decoder_guidance, clamped (fresh noise).

    An invert_guidance other than 1 warns (UserWarning): the inversion and every frame then run the guided ODE,
    and the frames meant to reconstruct the input may not.
    """
    if x_T_mode != "inverted":
        return sampling.replace(decoder_sampler="ddim", eta=0.0, clip_denoised=True)
    if sampling.invert_guidance != INVERT_GUIDANCE:
        warnings.warn(f"invert_guidance={sampling.invert_guidance:g} with x_T_mode='inverted': the DDIM inversion "
                      f"and the decoding run the guided ODE, which inversion does not run back reliably, so the "
                      f"frames meant to reconstruct the input may not (shapes-unclip, 20 renders: up to 0.12 mean "
                      f"|pixel error| at guidance 3, 0.0026 at 1); keep invert_guidance at {INVERT_GUIDANCE:g}",
                      UserWarning, stacklevel=3)
    return sampling.replace(decoder_sampler="ddim", eta=0.0, decoder_guidance=sampling.invert_guidance,
                            clip_denoised=False)
