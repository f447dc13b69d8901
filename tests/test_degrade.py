"""Upsampler training corruptions: blur closed form, BSR determinism, aligned crops, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from unclip_core.data.degrade import blur_corrupt, bsr_degrade, gaussian_kernel1d, random_crop_pair


def test_blur_matches_hand_computed_gaussian_on_delta():
    x = torch.zeros(1, 3, 7, 7)
    x[:, :, 3, 3] = 1.0
    y = blur_corrupt(x)  # kernel 3, sigma 0.6
    a = math.exp(-1 / (2 * 0.6 ** 2))  # 0.24935...
    w = torch.tensor([a, 1.0, a]) / (1 + 2 * a)
    expected = torch.zeros(7, 7)
    expected[2:5, 2:5] = torch.outer(w, w)
    for c in range(3):
        torch.testing.assert_close(y[0, c], expected, rtol=1e-6, atol=1e-7)
    assert abs(float(y.sum()) - 3.0) < 1e-5
    assert abs(float(expected[3, 3]) - 1 / (1 + 2 * a) ** 2) < 1e-7  # centre tap 0.1818...


def test_blur_keeps_constants_and_single_images():
    x = torch.full((3, 8, 8), 0.3)
    torch.testing.assert_close(blur_corrupt(x, kernel=5, sigma=1.0), x)
    torch.testing.assert_close(gaussian_kernel1d(5, 1.0).sum(), torch.tensor(1.0))


def test_bsr_deterministic_by_generator():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    a = bsr_degrade(x, torch.Generator().manual_seed(0))
    b = bsr_degrade(x, torch.Generator().manual_seed(0))
    c = bsr_degrade(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert (a - x).abs().mean() > 0.01  # it does degrade
    small = bsr_degrade(x[0], torch.Generator().manual_seed(0), out_size=8)
    assert small.shape == (3, 8, 8)


def test_random_crop_pair_aligned():
    hi = torch.randn(4, 3, 32, 32)
    lo = F.avg_pool2d(hi, 4)
    g = torch.Generator().manual_seed(0)
    hc, lc = random_crop_pair(hi, lo, 16, g)
    assert hc.shape == (4, 3, 16, 16) and lc.shape == (4, 3, 4, 4)
    torch.testing.assert_close(F.avg_pool2d(hc, 4), lc)  # same region
    hc2, lc2 = random_crop_pair(hi, hi * 2, 8, torch.Generator().manual_seed(3))  # same-size pair: same window
    torch.testing.assert_close(lc2, hc2 * 2)
    again = random_crop_pair(hi, lo, 16, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], hc)


def test_random_crop_pair_content_fraction_finds_the_object():
    """A small object in a large flat image: content_fraction=1 puts it in every window, aligned with lo."""
    hi = torch.full((1, 3, 64, 64), -0.9)
    hi[:, :, 50:54, 6:10] = 0.8  # a 4 x 4 object; a uniform 16 px window holds it ~6% of the time
    lo = F.avg_pool2d(hi, 4)
    g = torch.Generator().manual_seed(0)
    held = [bool((random_crop_pair(hi, lo, 16, g, content_fraction=1.0)[0] > 0).any()) for _ in range(50)]
    assert all(held)
    uniform = [bool((random_crop_pair(hi, lo, 16, g)[0] > 0).any()) for _ in range(200)]
    assert 0.02 < sum(uniform) / 200 < 0.25
    half = [bool((random_crop_pair(hi, lo, 16, g, content_fraction=0.5)[0] > 0).any()) for _ in range(200)]
    assert 0.45 < sum(half) / 200 < 0.7
    hc, lc = random_crop_pair(hi, lo, 16, g, content_fraction=1.0)
    torch.testing.assert_close(F.avg_pool2d(hc, 4), lc)  # still the same region
    flat = torch.zeros(1, 3, 32, 32)  # no content: a uniform window, no error
    assert random_crop_pair(flat, flat, 8, g, content_fraction=1.0)[0].shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"content_fraction must be a share in \[0, 1\], got 1.5"):
        random_crop_pair(hi, lo, 16, g, content_fraction=1.5)


def test_degrade_errors():
    with pytest.raises(ValueError, match="kernel must be an odd size, got 4"):
        blur_corrupt(torch.zeros(3, 8, 8), kernel=4)
    with pytest.raises(ValueError, match="sigma must be > 0, got 0"):
        blur_corrupt(torch.zeros(3, 8, 8), sigma=0)
    with pytest.raises(TypeError, match="x must be a float tensor in"):
        blur_corrupt(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\) or \(C, H, W\), got \(8, 8\)"):
        bsr_degrade(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="x must have 3 \\(RGB\\) channels"):
        bsr_degrade(torch.zeros(1, 8, 8))
    hi, lo = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="crop=10 must be <= 32 .* multiple of the factor 4"):
        random_crop_pair(hi, lo, 10)
    with pytest.raises(ValueError, match=r"lo \(10x10\) must be hi \(32x32\) downscaled by one integer factor"):
        random_crop_pair(hi, torch.zeros(1, 3, 10, 10), 16)
    with pytest.raises(ValueError, match="same batch size, got 1 and 2"):
        random_crop_pair(hi, torch.zeros(2, 3, 8, 8), 16)
