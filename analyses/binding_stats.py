"""Statistics for binding suites: accuracy intervals (Wilson, bootstrap), macro averages, paired tests."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from unclip_core.checks import check_choice, check_positive_int

CI_METHODS: tuple[str, ...] = ("wilson", "bootstrap")


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a confidence level in (0, 1), e.g. 0.95, got {level!r}")
    return float(level)


def _as_bool(name: str, x: Sequence[bool] | np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of booleans (one per case), got shape {a.shape}")
    if a.dtype != bool:
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans or 0/1, got values such as {a[~np.isin(a, (0, 1))][:3]}")
        a = a.astype(bool)
    return a


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (Wilson 1927); (nan, nan) when n = 0."""
    level = _check_level(level)
    if n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    z = stats.norm.ppf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the bounds are exactly 0 at k = 0 and 1 at k = n; say so rather than leave rounding error
    lo = 0.0 if k == 0 else max(0.0, float(centre - half))
    hi = 1.0 if k == n else min(1.0, float(centre + half))
    return lo, hi


def bootstrap_interval(hits: Sequence[bool], level: float = 0.95, n_boot: int = 2000,
                       seed: int | np.random.Generator = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean accuracy (Efron 1979)."""
    a = _as_bool("hits", hits).astype(float)
    level = _check_level(level)
    n_boot = check_positive_int("n_boot", n_boot)
    if a.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def accuracy_table(hits: Sequence[bool], groups: Sequence[str], ci: str = "wilson", level: float = 0.95,
                   n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Accuracy per group with an interval, then 'macro' (mean of group accuracies, as ARO reports) and 'all'.

    Returns columns group, n, k, accuracy, lo, hi. The macro row's interval is the spread of the mean of per-group
    draws from each group's Jeffreys posterior Beta(k + 1/2, n - k + 1/2): unlike a stratified bootstrap it does
    not collapse to a point when every group is all right or all wrong (small categories, e.g. 6/7 and 1/1).
    """
    a = _as_bool("hits", hits)
    g = np.asarray(groups, dtype=object)
    if g.shape != a.shape:
        raise ValueError(f"groups has {g.size} entries but hits has {a.size}; pass one group per case")
    check_choice("ci", ci, CI_METHODS)
    rows = []
    names = sorted(set(g.tolist()), key=str)
    for name in names:
        h = a[g == name]
        lo, hi = (wilson_interval(int(h.sum()), h.size, level) if ci == "wilson"
                  else bootstrap_interval(h, level, n_boot, seed))
        rows.append({"group": name, "n": int(h.size), "k": int(h.sum()), "accuracy": float(h.mean()),
                     "lo": lo, "hi": hi})
    if names:
        accs = np.array([r["accuracy"] for r in rows])
        rng = np.random.default_rng(seed)
        boots = np.zeros(n_boot)
        for r in rows:
            boots += rng.beta(r["k"] + 0.5, r["n"] - r["k"] + 0.5, size=n_boot)
        boots /= len(names)
        rows.append({"group": "macro", "n": int(a.size), "k": int(a.sum()), "accuracy": float(accs.mean()),
                     "lo": float(np.quantile(boots, (1 - level) / 2)),
                     "hi": float(np.quantile(boots, (1 + level) / 2))})
        lo, hi = (wilson_interval(int(a.sum()), a.size, level) if ci == "wilson"
                  else bootstrap_interval(a, level, n_boot, seed))
        rows.append({"group": "all", "n": int(a.size), "k": int(a.sum()), "accuracy": float(a.mean()),
                     "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["group", "n", "k", "accuracy", "lo", "hi"])


def macro_accuracy(hits: Sequence[bool], groups: Sequence[str], min_count: int = 1) -> float:
    """ARO's macro accuracy (Yuksekgonul et al. 2023): the mean over groups (relations / attribute pairs)
    with at least `min_count` cases of each group's accuracy."""
    a = _as_bool("hits", hits)
    g = np.asarray(groups, dtype=object)
    if g.shape != a.shape:
        raise ValueError(f"groups has {g.size} entries but hits has {a.size}; pass one group per case")
    min_count = check_positive_int("min_count", min_count)
    accs = [a[g == name].mean() for name in set(g.tolist()) if (g == name).sum() >= min_count]
    if not accs:
        raise ValueError(f"no group has at least min_count={min_count} cases; lower min_count")
    return float(np.mean(accs))


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test (McNemar 1947) on paired outcomes: two-sided binomial test of the discordant pairs.

    Returns n, b10 (a right, b wrong), b01 (a wrong, b right) and p.
    """
    x, y = _as_bool("a", a), _as_bool("b", b)
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same length), got {x.size} and {y.size}")
    b10 = int((x & ~y).sum())
    b01 = int((~x & y).sum())
    m = b10 + b01
    p = 1.0 if m == 0 else float(min(1.0, 2 * stats.binom.cdf(min(b10, b01), m, 0.5)))
    return {"n": int(x.size), "b10": b10, "b01": b01, "p": p}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], level: float = 0.95, n_boot: int = 2000,
                     seed: int | np.random.Generator = 0) -> dict[str, float]:
    """Paired bootstrap of mean(b) - mean(a) over cases (Koehn 2004): diff, interval, two-sided p."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be paired 1-D arrays of the same length, got shapes {x.shape}, {y.shape}")
    level = _check_level(level)
    n_boot = check_positive_int("n_boot", n_boot)
    if x.size == 0:
        return {"diff": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan}
    d = y - x
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    # two-sided p: how often the resampled difference falls on the other side of zero (or on it)
    p = 1.0 if not d.any() else float(min(1.0, 2 * min((boots <= 0).mean(), (boots >= 0).mean())))
    return {"diff": float(d.mean()), "lo": float(np.quantile(boots, (1 - level) / 2)),
            "hi": float(np.quantile(boots, (1 + level) / 2)), "p": p}


__all__ = ["CI_METHODS", "wilson_interval", "bootstrap_interval", "accuracy_table", "macro_accuracy", "mcnemar",
           "paired_bootstrap"]
