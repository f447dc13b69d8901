"""Argument types shared by every command: a bad number is refused by argparse with the option's name, what was
expected and what arrived (`argument --prior-steps: must be an integer >= 1, got '-5'`), before any work."""
from __future__ import annotations

import argparse
import math

from unclip_core.checks import MAX_GUIDANCE
from unclip_core.seeds import MAX_SEED


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
