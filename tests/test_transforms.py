import cv2
import numpy as np
import pytest

import transforms as T


def _image(h=32, w=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_samplers_stay_in_range():
    rng = np.random.default_rng(0)
    sym = T.sample_sym(rng, 45, size=10000)
    asym = T.sample_asym(rng, 6, size=10000)
    assert sym.min() >= -45 and sym.max() <= 45 and abs(sym.mean()) < 1.0
    assert asym.min() >= 0 and asym.max() <= 6
    assert abs(asym.mean() - 6 / 5) < 0.1  # Beta(1, 4) has mean 1/5


def test_affine_matrix_matches_opencv_rotation():
    for angle, scale in [(30, 1.0), (-45, 0.5), (10, 2.0)]:
        expected = cv2.getRotationMatrix2D(((40 - 1) / 2, (20 - 1) / 2), angle, scale)
        np.testing.assert_allclose(T.affine_matrix(40, 20, angle=angle, scale=scale), expected, atol=1e-9)


def test_affine_matrix_shear_by_hand():
    # x shear of 45 deg: x' = x + (y - cy) * tan(45) = x + (y - cy); y unchanged.
    m = T.affine_matrix(11, 21, shear=(45, 0))
    for x, y in [(0, 0), (5, 10), (10, 20), (3, 17)]:
        np.testing.assert_allclose(m @ [x, y, 1], [x + (y - 10), y], atol=1e-9)


@pytest.mark.parametrize('angle, k', [(90, 1), (-90, -1), (180, 2)])
def test_warp_fit_right_angles_equal_rot90(angle, k):
    img = _image(5, 8)
    out = T._warp_affine_fit(img, T.affine_matrix(8, 5, angle=angle), cv2.INTER_NEAREST)
    np.testing.assert_array_equal(out, np.rot90(img, k))


@pytest.mark.parametrize('op', [T.random_rotation, T.random_affine, T.random_perspective, T.random_geometry])
def test_geometry_ops_keep_channels_and_dtype(op):
    rng = np.random.default_rng(1)
    for _ in range(20):
        out = op(_image(), rng)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and min(out.shape[:2]) >= 1


@pytest.mark.parametrize('op', [T.gaussian_noise, T.motion_blur, T.rescale, T.random_deterioration, T.color_jitter])
def test_photometric_ops_keep_shape_and_dtype(op):
    rng = np.random.default_rng(2)
    for _ in range(20):
        out = op(_image(31, 77), rng)
        assert out.shape == (31, 77, 3) and out.dtype == np.uint8


def test_perspective_output_fits_the_moved_corners():
    rng = np.random.default_rng(3)
    for _ in range(20):
        out = T.random_perspective(_image(32, 100), rng, distortion=0.5)
        # corners move inwards by at most a quarter of each side on both ends
        assert 50 <= out.shape[1] <= 100 and 16 <= out.shape[0] <= 32


def test_motion_kernel_is_normalised():
    np.testing.assert_array_equal(T.motion_kernel(1, 30.0), [[1.0]])
    for size, angle in [(3, 0.0), (5, 45.0), (6, -120.0)]:
        k = T.motion_kernel(size, angle)
        assert k.shape == (size, size) and abs(k.sum() - 1) < 1e-5 and k.min() >= 0
    horizontal = T.motion_kernel(5, 0.0)
    np.testing.assert_allclose(horizontal[2], np.full(5, 0.2), atol=1e-6)


def test_rescale_factor_one_is_identity():
    img = _image()
    np.testing.assert_array_equal(T.rescale(img, np.random.default_rng(0), factor=1), img)


def test_colour_adjustments_by_hand():
    img = _image(4, 5).astype(np.float32)
    gray = 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]
    np.testing.assert_allclose(T.adjust_brightness(img, 1.0), img)
    np.testing.assert_allclose(T.adjust_brightness(img, 0.5), img * 0.5, rtol=1e-6)
    np.testing.assert_allclose(T.adjust_saturation(img, 0.0), np.repeat(gray[..., None], 3, axis=2), rtol=1e-5)
    np.testing.assert_allclose(T.adjust_contrast(img, 0.0), np.full_like(img, gray.mean()), rtol=1e-5)
    assert np.abs(T.adjust_hue(img, 0.0) - img).max() <= 8  # HSV round trip in uint8 only


def test_zero_probabilities_are_identity():
    aug = T.TrainAugment(geometry_p=0, deterioration_p=0, color_p=0)
    rng = np.random.default_rng(0)
    for seed in range(5):
        img = _image(seed=seed)
        np.testing.assert_array_equal(aug(img, rng), img)


def test_deterministic_for_a_seeded_generator():
    aug = T.TrainAugment(1.0, 1.0, 1.0)
    img = _image()
    for seed in range(5):
        a = aug(img, np.random.default_rng(seed))
        b = aug(img, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
    outs = [aug(img, np.random.default_rng(seed)) for seed in range(5)]
    assert len({(o.shape, o.tobytes()) for o in outs}) == 5


def test_augment_keeps_dtype_and_channels():
    aug = T.TrainAugment()
    rng = np.random.default_rng(4)
    for _ in range(50):
        out = aug(_image(), rng)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.flags['C_CONTIGUOUS']


def test_geometric_op_is_chosen_per_call(monkeypatch):
    chosen = []
    for name in ('random_rotation', 'random_affine', 'random_perspective'):
        monkeypatch.setattr(T, name, lambda img, rng, name=name: chosen.append(name) or img)
    aug = T.TrainAugment(geometry_p=1.0, deterioration_p=0, color_p=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        aug(_image(), rng)
    assert len(chosen) == 30 and set(chosen) == {'random_rotation', 'random_affine', 'random_perspective'}


def test_deterioration_strength_is_drawn_per_call(monkeypatch):
    sizes = []
    original = T.motion_kernel
    monkeypatch.setattr(T, 'motion_kernel', lambda size, angle: sizes.append(size) or original(size, angle))
    aug = T.TrainAugment(geometry_p=0, deterioration_p=1.0, color_p=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        aug(_image(8, 16), rng)
    assert len(set(sizes)) >= 2  # sizes 2..5 appear (size 1 skips the kernel)
