import numpy as np

from tools.synth import degrade


def test_blurs_keep_flat_images_flat_and_spread_an_edge():
    flat = np.full((16, 16, 3), 100.0, np.float32)
    for out in (degrade.motion_blur(flat, 5, 30), degrade.defocus_blur(flat, 1.5)):
        np.testing.assert_allclose(out, flat, atol=1e-3)
    edge = np.zeros((16, 16, 3), np.float32)
    edge[:, 8:] = 255.0
    moved = degrade.motion_blur(edge, 5, 0)  # horizontal: across the edge
    assert 0 < moved[8, 7, 0] < 255 and moved[8, 0, 0] == 0
    untouched = degrade.motion_blur(edge, 5, 90)  # vertical: along the edge
    np.testing.assert_allclose(untouched, edge, atol=1e-3)


def test_low_resolution_jpeg_noise_and_lighting():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (32, 64, 3)).astype(np.float32)
    low = degrade.low_resolution(img, 3.0, rng)
    assert low.shape == img.shape and low.std() < img.std()
    assert degrade.jpeg(img, 20).shape == img.shape
    assert abs(float((degrade.jpeg(img, 95) - img).mean())) < 2.0
    noisy = degrade.gaussian_noise(np.zeros((100, 100, 3), np.float32), 5.0, rng)
    assert 4.5 < noisy.std() < 5.5
    lit = degrade.lighting(np.full((4, 9, 3), 100.0, np.float32), 0.5, 0.0)
    np.testing.assert_allclose(lit[0, [0, 4, 8], 0], [50.0, 100.0, 150.0], atol=1e-3)
