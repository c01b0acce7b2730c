"""VAE pictures: the grids hold the right images in the right cells, the manifold decodes
the right normal quantiles, and the files are written (atomically) only where they apply."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from scipy.stats import norm

from benchmarks import pictures
from benchmarks.pictures import (
    BACKGROUND,
    GROUP_GAP,
    PAD,
    image_grid,
    manifold_figure,
    reconstructions_figure,
    samples_figure,
    write_vae_pictures,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def mosaic(figure: Figure) -> np.ndarray:
    (ax,) = figure.axes
    return np.asarray(ax.images[0].get_array())


def cell(array: np.ndarray, row: int, col: int, shape, row_gap: int = 0) -> np.ndarray:
    h, w = shape
    top, left = PAD + row * (h + PAD) + row_gap, PAD + col * (w + PAD)
    return array[top : top + h, left : left + w]


def numbered_images(n: int, shape=(3, 4)) -> torch.Tensor:
    """Image i has every pixel (i + 1) / (n + 1): distinct, and never the background."""
    values = (torch.arange(n, dtype=torch.float64) + 1) / (n + 1)
    return values[:, None].expand(n, shape[0] * shape[1]).clone()


def test_image_grid_places_image_i_in_row_i_div_nrow():
    images = numbered_images(7)
    array = mosaic(image_grid(images, (3, 4), nrow=3))
    assert array.shape == (PAD + 3 * (3 + PAD), PAD + 3 * (4 + PAD))
    for i in range(7):
        assert np.all(cell(array, i // 3, i % 3, (3, 4)) == images[i, 0].item())
    assert np.all(cell(array, 2, 1, (3, 4)) == BACKGROUND)  # no eighth image
    # Values outside [0, 1] are clipped; the default is about √N per row.
    assert mosaic(image_grid(torch.full((9, 12), 2.0), (3, 4))).shape[1] == PAD + 3 * (4 + PAD)
    assert mosaic(image_grid(torch.full((1, 12), 2.0), (3, 4))).max() == 1.0


def test_image_grid_refuses_images_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"images must be \[N, 12\]"):
        image_grid(torch.zeros(4, 10), (3, 4))


def test_samples_figure_decodes_the_prior_draws_once():
    calls = []

    def decode_mean(z):
        calls.append(z.clone())
        return numbered_images(len(z))

    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    figure = samples_figure(decode_mean, z, (3, 4), nrow=3)
    assert len(calls) == 1 and torch.equal(calls[0], z)
    assert np.all(cell(mosaic(figure), 1, 2, (3, 4)) == 6 / 7)
    with pytest.raises(ValueError, match="one image per latent"):
        samples_figure(lambda z: numbered_images(len(z) - 1), z, (3, 4))


def test_reconstructions_sit_below_their_test_images():
    test, rebuilt = numbered_images(5), numbered_images(5).flip(0) * 0.5
    array = mosaic(reconstructions_figure(test, rebuilt, (3, 4), nrow=3))
    for i in range(5):
        pair, col = divmod(i, 3)
        gap = pair * GROUP_GAP
        assert np.all(cell(array, 2 * pair, col, (3, 4), gap) == test[i, 0].item())
        assert np.all(cell(array, 2 * pair + 1, col, (3, 4), gap) == rebuilt[i, 0].item())
    assert np.all(cell(array, 3, 2, (3, 4), GROUP_GAP) == BACKGROUND)
    with pytest.raises(ValueError, match="must match the test images"):
        reconstructions_figure(test, rebuilt[:4], (3, 4))


def test_manifold_decodes_a_grid_of_standard_normal_quantiles():
    grid, calls = 5, []

    def decode_mean(z):
        # The top row of each 2×4 image shows Φ(z₁), the bottom row Φ(z₂).
        calls.append(z.clone())
        u = torch.special.ndtr(z.double())
        return torch.cat([u[:, :1].expand(-1, 4), u[:, 1:].expand(-1, 4)], dim=1)

    figure = manifold_figure(decode_mean, (2, 4), grid, dtype=torch.float64)
    (z,) = calls
    assert z.shape == (grid * grid, 2) and z.dtype == torch.float64
    probs = (np.arange(grid) + 0.5) / grid
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    np.testing.assert_allclose(z[:, 0].numpy(), norm.ppf(probs[cols]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(z[:, 1].numpy(), norm.ppf(probs[grid - 1 - rows]), atol=1e-12)
    # In the picture z₁ grows to the right and z₂ upwards.
    array = mosaic(figure)
    for r in range(grid):
        for c in range(grid):
            image = cell(array, r, c, (2, 4))
            np.testing.assert_allclose(image[0], probs[c], atol=1e-12)
            np.testing.assert_allclose(image[1], probs[grid - 1 - r], atol=1e-12)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["-1.28", "0.00", "1.28"]


def test_manifold_latents_are_float32_by_default():
    seen = []
    manifold_figure(lambda z: seen.append(z.dtype) or torch.zeros(len(z), 4), (2, 2), grid=3)
    assert seen == [torch.float32]
    with pytest.raises(ValueError, match="at least 2"):
        manifold_figure(lambda z: torch.zeros(len(z), 4), (2, 2), grid=1)


def decoder(latent_dim: int):
    weights = torch.randn(latent_dim, 12, generator=torch.Generator().manual_seed(1))
    return lambda z: torch.sigmoid(z @ weights)


@pytest.mark.parametrize(
    "latent_dim, gaussian_prior, written",
    [
        (2, True, ["manifold.png", "reconstructions.png", "samples.png"]),
        (2, False, ["reconstructions.png", "samples.png"]),
        (3, True, ["reconstructions.png", "samples.png"]),
    ],
)
def test_write_vae_pictures_writes_the_manifold_only_for_two_gaussian_latents(
    tmp_path, latent_dim, gaussian_prior, written
):
    folder = tmp_path / "run"
    paths = write_vae_pictures(
        folder,
        decode_mean=decoder(latent_dim),
        prior_draws=torch.randn(16, latent_dim),
        test_images=numbered_images(8),
        reconstructions=numbered_images(8),
        image_shape=(3, 4),
        gaussian_prior=gaussian_prior,
        grid=4,
    )
    assert sorted(paths) == written
    assert sorted(p.name for p in folder.iterdir()) == written  # no temporary files
    for name in written:
        assert paths[name] == folder / name and paths[name].read_bytes()[:8] == PNG_MAGIC


def test_a_failed_write_leaves_the_old_picture_and_no_temporary(tmp_path, monkeypatch):
    kwargs = dict(
        decode_mean=decoder(3),
        prior_draws=torch.randn(4, 3),
        test_images=numbered_images(2),
        reconstructions=numbered_images(2),
        image_shape=(3, 4),
    )
    old = write_vae_pictures(tmp_path, **kwargs)["samples.png"].read_bytes()

    def half_written(self, handle, **kw):
        handle.write(PNG_MAGIC)
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_vae_pictures(tmp_path, **kwargs)
    assert (tmp_path / "samples.png").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstructions.png", "samples.png"]


def test_a_real_picture_of_mnist5k_digits(tmp_path):
    from benchmarks.objectives.data import mnist5k

    d = mnist5k(binarize="dynamic", cache_dir=str(tmp_path / "cache"))
    path = pictures.save_figure(
        reconstructions_figure(d.test[:20], d.train[:20], d.image_shape), tmp_path / "r.png"
    )
    assert path.read_bytes()[:8] == PNG_MAGIC
