"""The decoder guidance of analyses that decode a DDIM-inverted x_T (interpolation ends, text-diff theta=0).

DDIM inversion (Song et al. 2021, sec. 4.3; DALL·E 2 sec. 3.1) runs one ODE backwards: an inverted x_T gives
back its image only when it is decoded under that ODE, i.e. the guidance the inversion used. Inverting and
decoding under guidance 1 (pipe.invert's default) reconstructs reliably; under guidance 3 both run the guided
ODE, whose inversion misses on some images (docs/analyses.md, "Reconstruction at the defaults").
"""
from __future__ import annotations

import warnings

from analyses._pipe import check_guidance

INVERT_GUIDANCE = 1.0  # the unguided ODE: pipe.invert's default, the guidance of inverted-x_T frames by default
FIXED_GUIDANCE = 3.0  # frames from fresh noise: the decoder's usual guidance


def decoder_guidance(guidance: float | None, x_T_mode: str) -> float:
    """The guidance that inverts and decodes: `guidance`, or by default 1 for inverted x_T and 3 for fixed x_T.

    An explicit guidance other than 1 with x_T_mode="inverted" warns (UserWarning): the inversion and every
    frame then run the guided ODE, and the frames meant to reconstruct the input may not.
    """
    if guidance is None:
        return INVERT_GUIDANCE if x_T_mode == "inverted" else FIXED_GUIDANCE
    guidance = check_guidance(guidance)
    if x_T_mode == "inverted" and guidance != INVERT_GUIDANCE:
        warnings.warn(f"guidance={guidance:g} with x_T_mode='inverted': the DDIM inversion and the decoding run the "
                      f"guided ODE, which inversion does not run back reliably, so the frames meant to reconstruct "
                      f"the input may not (shapes-unclip, 20 renders: up to 0.12 mean |pixel error| at guidance 3, "
                      f"0.0026 at 1); leave guidance unset (None) for the inversion's guidance "
                      f"{INVERT_GUIDANCE:g}", UserWarning, stacklevel=3)
    return guidance
