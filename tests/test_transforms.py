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


def test_motion_kernel_is_divided_by_its_length():
    np.testing.assert_array_equal(T.motion_kernel(1, 30.0), [[1.0]])
    horizontal = T.motion_kernel(5, 0.0)
    np.testing.assert_allclose(horizontal[2], np.full(5, 0.2), atol=1e-6)
    assert horizontal.sum() == pytest.approx(1.0)
    # A rotated line's interpolated weights no longer sum to its length; upstream divides by the length anyway.
    diagonal = T.motion_kernel(3, 45.0)
    line = np.zeros((3, 3), dtype=np.float32)
    line[1, :] = 1.0
    rotated = cv2.warpAffine(line, cv2.getRotationMatrix2D((1.0, 1.0), 45.0, 1.0), (3, 3))
    np.testing.assert_allclose(diagonal, rotated / 3, atol=1e-7)
    assert abs(diagonal.sum() - 1) > 0.05


def _reflect101(i, n):
    """Index i mirrored about the edge pixels (..., 2, 1 | 0, 1, 2, ... | n-2, n-3, ...)."""
    return -i if i < 0 else 2 * (n - 1) - i if i >= n else i


def test_motion_blur_uses_reflected_borders_by_hand():
    img = _image(4, 7, seed=3)
    kernel = np.full((3, 3), 0.0, dtype=np.float32)
    kernel[1, :] = 1 / 3  # horizontal line of length 3, divided by 3
    out = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_DEFAULT)
    h, w = img.shape[:2]
    expected = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            total = sum(img[y, _reflect101(x + d, w)].astype(np.float64) for d in (-1, 0, 1))
            expected[y, x] = np.rint(total / 3)
    np.testing.assert_array_equal(out, expected)


def _plain_motion_blur(img, rng, degrees=6):
    """Motion blur written from the description: length max(int(Beta(1,4) x degrees), 1), angle U(-180, 180),
    a horizontal line rotated about the kernel centre and divided by its length, reflected (reflect-101) borders."""
    size = max(int(rng.beta(1, 4) * degrees), 1)
    angle = rng.uniform(-180, 180)
    if size == 1:
        return img
    line = np.zeros((size, size), dtype=np.float32)
    line[size // 2, :] = 1.0
    centre = ((size - 1) / 2, (size - 1) / 2)
    kernel = cv2.warpAffine(line, cv2.getRotationMatrix2D(centre, angle, 1.0), (size, size)) / size
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def _plain_noise(img, rng, var=20):
    """Gaussian noise written from the description: integer variance max(int(Beta(1,4) x var), 1)."""
    variance = max(int(rng.beta(1, 4) * var), 1)
    noise = rng.normal(0.0, variance ** 0.5, img.shape)
    return np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def _plain_rescale(img, rng, factor=4):
    """Rescale written from the description: 512 x 128, round(U(0, factor)) pyrDown levels, back to the size."""
    levels = round(rng.uniform(0, factor))
    if levels == 0:
        return img, 0
    h, w = img.shape[:2]
    small = cv2.resize(img, (512, 128), interpolation=cv2.INTER_LINEAR)
    for _ in range(levels):
        small = cv2.pyrDown(small)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), levels


@pytest.mark.parametrize('shape', [(32, 96), (7, 20), (180, 700)])
def test_deterioration_ops_match_plain_references(shape):
    img = _image(*shape, seed=shape[0])
    levels_seen, sizes_seen = set(), set()
    for seed in range(40):
        expected, levels = _plain_rescale(img, np.random.default_rng(seed))
        levels_seen.add(levels)
        np.testing.assert_array_equal(T.rescale(img, np.random.default_rng(seed)), expected)
        np.testing.assert_array_equal(T.gaussian_noise(img, np.random.default_rng(seed)),
                                      _plain_noise(img, np.random.default_rng(seed)))
        np.testing.assert_array_equal(T.motion_blur(img, np.random.default_rng(seed)),
                                      _plain_motion_blur(img, np.random.default_rng(seed)))
        sizes_seen.add(max(int(np.random.default_rng(seed).beta(1, 4) * 6), 1))
    assert levels_seen == {0, 1, 2, 3, 4} and len(sizes_seen) >= 3


def test_rescale_strength_does_not_depend_on_the_image_size():
    # Upstream works at 512 x 128 whatever the crop: three or more levels leave at most 64 x 16 pixels of detail,
    # so stripes of a 16 px period across a 1024 px wide crop (64 periods) are gone, on a big crop as on a small one.
    stripes = np.zeros((256, 1024, 3), dtype=np.uint8)
    stripes[:, (np.arange(1024) // 8) % 2 == 1] = 255
    strong = [s for s in range(200) if round(np.random.default_rng(s).uniform(0, 4)) >= 3][:5]
    for seed in strong:
        out = T.rescale(stripes, np.random.default_rng(seed))
        assert out.shape == stripes.shape
        assert out.astype(float).std() < 0.1 * stripes.astype(float).std()


def test_noise_variance_is_at_least_one():
    flat = np.full((64, 64, 3), 128, dtype=np.uint8)
    # a draw of variance 0.1 or less becomes 1: the spread is that of N(0, 1) floored to integers (about 1.08),
    # not of N(0, 0.1) floored (about 0.25)
    seed = next(s for s in range(1000) if np.random.default_rng(s).beta(1, 4) * 20 < 0.1)
    out = T.gaussian_noise(flat, np.random.default_rng(seed)).astype(float)
    assert 0.7 < (out - 128).var() < 1.5


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
