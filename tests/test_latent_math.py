"""Closed-form checks of sphere geometry: slerp, weighted sums, directions, text diffs."""
import numpy as np
import pandas as pd
import pytest
import torch

from analyses.latent_math import (ANTIPODAL_COS, PARALLEL_COS, normalize, project_onto, remove_direction, slerp,
                                  text_diff_direction, text_diff_frame, text_diff_path, weighted_sum)


def _rand_unit(n, d, seed):
    z = np.random.default_rng(seed).normal(size=(n, d))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _angle(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.arccos(np.clip((a * b).sum(-1), -1, 1))


def test_normalize_unit_norm_and_dtype():
    z = np.array([[3.0, 4.0], [0.0, -2.0]], dtype=np.float32)
    out = normalize(z)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-7)
    t = normalize(torch.tensor([3.0, 4.0]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    torch.testing.assert_close(t, torch.tensor([0.6, 0.8]))


def test_normalize_errors():
    with pytest.raises(ValueError, match=r"zero norm at row\(s\) \[1\]"):
        normalize(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(TypeError, match="must be a float array"):
        normalize(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        normalize(np.array([1.0, np.nan]))


def test_slerp_orthogonal_midpoint_is_inv_sqrt2():
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(slerp(a, b, 0.5), [2 ** -0.5, 2 ** -0.5, 0.0], atol=1e-15)
    # t = 1/3 of a right angle is 30 degrees
    np.testing.assert_allclose(slerp(a, b, 1 / 3), [np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0], atol=1e-15)


def test_slerp_uses_dot_product_angle_not_elementwise():
    # The element-wise variant (arccos of a*b per coordinate) gives a different, non-unit result here.
    a = normalize(np.array([1.0, 2.0, 2.0]))
    b = normalize(np.array([2.0, -1.0, 2.0]))
    out = slerp(a, b, 0.5)
    omega = np.arccos(a @ b)
    np.testing.assert_allclose(out, (a + b) * np.sin(omega / 2) / np.sin(omega), rtol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(out), 1.0, rtol=1e-14)


def test_slerp_path_norms_endpoints_and_angles():
    a, b = _rand_unit(2, 64, 0)
    t = np.linspace(0, 1, 11)
    path = slerp(a, b, t)
    assert path.shape == (11, 64)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, rtol=1e-13)
    assert np.array_equal(path[0], a) and np.array_equal(path[-1], b)
    omega = _angle(a, b)
    np.testing.assert_allclose(_angle(a[None], path), t * omega, atol=1e-12)
    np.testing.assert_allclose(_angle(path, b[None]), (1 - t) * omega, atol=1e-12)


def test_slerp_batched_and_broadcast():
    A, B = _rand_unit(4, 16, 1), _rand_unit(4, 16, 2)
    out = slerp(A, B, 0.3)
    assert out.shape == (4, 16)
    for i in range(4):
        np.testing.assert_allclose(out[i], slerp(A[i], B[i], 0.3), rtol=1e-14)
    many = slerp(A, B, [0.0, 0.3, 1.0])
    assert many.shape == (3, 4, 16)
    np.testing.assert_allclose(many[1], out, rtol=1e-14)
    one_vs_many = slerp(A[:1], B, 0.5)
    np.testing.assert_allclose(one_vs_many[2], slerp(A[0], B[2], 0.5), rtol=1e-14)


def test_slerp_torch_matches_numpy_and_keeps_dtype():
    a, b = _rand_unit(2, 32, 3)
    ref = slerp(a, b, [0.25, 0.75])
    out = slerp(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), torch.tensor([0.25, 0.75]))
    assert out.dtype == torch.float32 and out.shape == (2, 32)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


def test_slerp_non_unit_inputs_angle_from_normalised_vectors():
    a, b = np.array([2.0, 0.0]), np.array([0.0, 3.0])
    np.testing.assert_allclose(slerp(a, b, 0.5), (a + b) * np.sin(np.pi / 4) / 1.0, rtol=1e-14)


def test_slerp_near_parallel_fallback_is_continuous():
    a = np.array([1.0, 0.0])
    # angles just above and just below the fallback threshold
    omega_star = np.arccos(PARALLEL_COS)
    outs = []
    for omega in (omega_star * (1 + 1e-6), omega_star * (1 - 1e-6)):
        b = np.array([np.cos(omega), np.sin(omega)])
        outs.append(slerp(a, b, 0.5))
    # the jump at the switch is bounded by omega^2 / 8 = 2.5e-7, below float32 resolution
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=omega_star ** 2 / 8 * 1.01)
    assert np.abs(outs[0] - outs[1]).max() > 0  # the two branches really were taken
    np.testing.assert_allclose(np.linalg.norm(outs[1]), 1.0, atol=3e-7)  # lerp, within omega^2 / 8
    np.testing.assert_allclose(slerp(a, a, [0.0, 0.5, 1.0]), np.tile(a, (3, 1)), rtol=0, atol=0)


def test_slerp_errors():
    a = np.array([1.0, 0.0])
    with pytest.raises(ValueError, match="antipodal.*path between them is undefined"):
        slerp(a, -a, 0.5)
    eps = np.sqrt(2 * (1 + ANTIPODAL_COS)) / 2  # angle just inside the antipodal zone
    with pytest.raises(ValueError, match="antipodal"):
        slerp(a, np.array([-1.0, eps]), 0.5)
    with pytest.raises(ValueError, match="a has dimension 2 but b has 3"):
        slerp(a, np.array([1.0, 0.0, 0.0]), 0.5)
    with pytest.raises(ValueError, match="a has 2 rows but b has 3"):
        slerp(np.eye(2), np.ones((3, 2)), 0.5)
    with pytest.raises(TypeError, match="same kind of array"):
        slerp(a, torch.tensor([0.0, 1.0], dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="t must be finite"):
        slerp(a, np.array([0.0, 1.0]), [0.5, np.inf])
    with pytest.raises(ValueError, match="t must be a float or a 1-D array"):
        slerp(a, np.array([0.0, 1.0]), np.zeros((2, 2)))
    with pytest.raises(TypeError, match="t must be a float"):
        slerp(a, np.array([0.0, 1.0]), "half")
    with pytest.raises(ValueError, match="b has zero norm"):
        slerp(a, np.zeros(2), 0.5)


def test_weighted_sum_renormalises():
    z = np.eye(3)
    np.testing.assert_allclose(weighted_sum(z, [1.0, 1.0, 0.0]), [2 ** -0.5, 2 ** -0.5, 0.0], rtol=1e-15)
    out = weighted_sum(z, np.array([[3.0, 4.0, 0.0], [0.0, 0.0, -2.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8, 0.0], [0.0, 0.0, -1.0]], rtol=1e-15)
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\) or \(m, 3\)"):
        weighted_sum(z, [1.0, 2.0])
    with pytest.raises(ValueError, match="weights cancel"):
        weighted_sum(np.array([[1.0, 0.0], [1.0, 0.0]]), [1.0, -1.0])
    with pytest.raises(ValueError, match="weights contain NaN"):
        weighted_sum(z, [1.0, np.nan, 0.0])


def test_project_and_remove_direction():
    z = np.array([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    u = np.array([0.0, 2.0, 0.0])  # not unit: the direction is normalised
    np.testing.assert_allclose(project_onto(z, u), [[0, 4, 0], [0, 1, 0]], rtol=1e-15)
    np.testing.assert_allclose(remove_direction(z, u, renormalize=False), [[3, 0, 0], [1, 0, 1]], rtol=1e-15)
    r = remove_direction(z, u)
    np.testing.assert_allclose(r, [[1, 0, 0], [2 ** -0.5, 0, 2 ** -0.5]], rtol=1e-15)
    assert np.abs(r @ u).max() < 1e-15
    with pytest.raises(ValueError, match="direction must be one vector"):
        project_onto(z, np.ones((2, 3)))
    with pytest.raises(ValueError, match="z is parallel to direction"):
        remove_direction(np.array([0.0, 5.0, 0.0]), u)
    with pytest.raises(ValueError, match="direction has zero norm"):
        project_onto(z, np.zeros(3))


def test_text_diff_direction():
    z_t, z_t0 = np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(text_diff_direction(z_t, z_t0), [0.0, 1.0, 0.0], rtol=1e-15)
    np.testing.assert_allclose(text_diff_direction(z_t), [2 ** -0.5, 2 ** -0.5, 0.0], rtol=1e-15)
    with pytest.raises(ValueError, match="z_t equals z_t0"):
        text_diff_direction(z_t, z_t.copy())
    with pytest.raises(ValueError, match="z_t has dimension 3 but z_t0 has 2"):
        text_diff_direction(z_t, np.ones(2))


def test_text_diff_path_closed_form():
    z_i = np.array([1.0, 0.0, 0.0])
    z_t, z_t0 = np.array([0.5, 0.5, 0.0]), np.array([0.5, -0.5, 0.0])  # d = e_2, orthogonal to z_i
    path = text_diff_path(z_i, z_t, z_t0, theta_max=0.5, n_steps=3)
    theta = np.array([0.0, 0.25, 0.5]) * np.pi / 2
    expected = np.stack([np.cos(theta), np.sin(theta), np.zeros(3)], axis=1)
    np.testing.assert_allclose(path, expected, atol=1e-15)
    assert np.array_equal(path[0], z_i)
    batched = text_diff_path(np.stack([z_i, [0.0, 0.0, 1.0]]), z_t, z_t0, 0.5, 3)
    assert batched.shape == (3, 2, 3)
    np.testing.assert_allclose(batched[:, 0], expected, atol=1e-15)
    tp = text_diff_path(torch.tensor(z_i), torch.tensor(z_t), torch.tensor(z_t0), 0.5, 3)
    assert isinstance(tp, torch.Tensor) and tp.dtype == torch.float64
    np.testing.assert_allclose(tp.numpy(), expected, atol=1e-15)


def test_text_diff_frame():
    z_i = np.array([1.0, 0.0, 0.0])
    df = text_diff_frame(z_i, np.array([0.5, 0.5, 0.0]), np.array([0.5, -0.5, 0.0]), theta_max=1.0, n_steps=5)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["step", "theta", "norm", "cos_z_i", "cos_z_t", "cos_d"]
    np.testing.assert_allclose(df["theta"], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(df["norm"], 1.0, rtol=1e-14)
    np.testing.assert_allclose(df["cos_z_i"], np.cos(df["theta"] * np.pi / 2), atol=1e-15)
    np.testing.assert_allclose(df["cos_d"].iloc[-1], 1.0, rtol=1e-15)
    np.testing.assert_allclose(df["cos_z_t"].iloc[0], 2 ** -0.5, rtol=1e-15)


def test_text_diff_path_errors():
    z = np.array([1.0, 0.0])
    with pytest.raises(ValueError, match=r"theta_max must lie in \[0, 1\]"):
        text_diff_path(z, np.array([0.0, 1.0]), None, theta_max=1.5)
    with pytest.raises(ValueError, match=r"theta_max must lie in \[0, 1\]"):
        text_diff_path(z, np.array([0.0, 1.0]), None, theta_max=-0.1)
    with pytest.raises(TypeError, match="theta_max must be a float"):
        text_diff_path(z, np.array([0.0, 1.0]), None, theta_max="0.5")
    with pytest.raises(ValueError, match="n_steps must be >= 2"):
        text_diff_path(z, np.array([0.0, 1.0]), None, n_steps=1)
    with pytest.raises(ValueError, match="z_t must be one caption embedding"):
        text_diff_path(z, np.eye(2), None)
    with pytest.raises(ValueError, match="z_i and the text diff direction are \\(nearly\\) antipodal"):
        text_diff_path(z, -z, None)
    with pytest.raises(ValueError, match="z_i must be one image embedding"):
        text_diff_frame(np.eye(2), np.array([0.0, 1.0]))
