"""Pictures of a trained VAE: samples, reconstructions and the latent manifold.

Pure functions of tensors and callables; they know no model class. A model enters as
``decode_mean``, a callable ``z [N, latent] -> [N, D]`` that returns the decoder's mean
(pixel probabilities for a Bernoulli decoder) without tracking gradients, and images as
flat tensors [N, D] with values in [0, 1] and an ``image_shape`` such as ``(28, 28)``.

- ``image_grid``: images [N, D] -> a Figure of them, ``nrow`` per row;
- ``samples_figure``: decoder means for prior draws the caller makes;
- ``reconstructions_figure``: test images, each row of them above a row of their
  reconstructions;
- ``manifold_figure``: for two Gaussian latents, the decoder over a grid of standard-normal
  quantiles (Kingma & Welling 2014, *Auto-Encoding Variational Bayes*, Fig. 4);
- ``write_vae_pictures``: ``samples.png``, ``reconstructions.png`` and, for two Gaussian
  latents, ``manifold.png`` in a folder, each written atomically.

The figures are ``matplotlib.figure.Figure`` objects drawn without pyplot, so no backend
or display is needed and no global state changes (as in ``benchmarks.report``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from benchmarks.storage import write_atomic

SAMPLES = "samples.png"
RECONSTRUCTIONS = "reconstructions.png"
MANIFOLD = "manifold.png"
CELL_INCHES = 0.45  # drawn size of one image, whatever its pixel count
MAX_WIDTH_INCHES = 12.0
PAD = 1  # pixels of background between images
GROUP_GAP = 4  # more pixels between groups of rows (pairs of data and reconstructions)
BACKGROUND = 0.5  # grey, so that black and white digits both stand out from it

DecodeMean = Callable[[Tensor], Tensor]


def image_grid(
    images: Tensor | np.ndarray,
    image_shape: Sequence[int],
    nrow: int | None = None,
    title: str | None = None,
) -> Figure:
    """A Figure of ``images`` [N, D] in rows of ``nrow`` (default: about √N), grey levels
    0 (black) to 1 (white)."""
    pixels = _as_images(images, image_shape)
    return _grid_figure(pixels, nrow or math.ceil(math.sqrt(len(pixels))), title)


def samples_figure(
    decode_mean: DecodeMean,
    prior_draws: Tensor,
    image_shape: Sequence[int],
    nrow: int | None = None,
) -> Figure:
    """Decoder means for ``prior_draws`` [N, latent] z ~ p(z), in a grid."""
    means = _decode(decode_mean, prior_draws)
    return image_grid(means, image_shape, nrow, f"decoder means for {len(means)} draws z ~ p(z)")


def reconstructions_figure(
    test_images: Tensor | np.ndarray,
    reconstructions: Tensor | np.ndarray,
    image_shape: Sequence[int],
    nrow: int | None = None,
) -> Figure:
    """Test images [N, D] in rows of ``nrow`` (default: up to 10), each row above a row of
    their ``reconstructions`` [N, D]."""
    originals = _as_images(test_images, image_shape)
    rebuilt = _as_images(reconstructions, image_shape)
    if originals.shape != rebuilt.shape:
        raise ValueError(
            f"reconstructions {tuple(rebuilt.shape)} must match the test images "
            f"{tuple(originals.shape)}"
        )
    n = len(originals)
    nrow = nrow or min(n, 10)
    n_pairs = math.ceil(n / nrow)
    blank = np.full((n_pairs * nrow - n, *originals.shape[1:]), np.nan)
    # [n_pairs, 2, nrow, H, W]: row pairs (test images, reconstructions), then flat again.
    pairs = np.stack(
        [
            np.concatenate([a, blank]).reshape(n_pairs, nrow, *a.shape[1:])
            for a in (originals, rebuilt)
        ],
        axis=1,
    )
    cells = pairs.reshape(-1, *originals.shape[1:])
    title = "test images above their reconstructions"
    rows = {r: "data" if r % 2 == 0 else "recon." for r in range(2 * n_pairs)}
    return _grid_figure(cells, nrow, title, group=2, row_labels=rows)


def manifold_quantiles(grid: int) -> np.ndarray:
    """Standard-normal quantiles Φ⁻¹((i + ½) / grid), i = 0 … grid − 1: the centres, in
    probability, of ``grid`` equally likely intervals."""
    if grid < 2:
        raise ValueError(f"the manifold grid needs at least 2 points per axis, got {grid}")
    normal = NormalDist()
    return np.array([normal.inv_cdf((i + 0.5) / grid) for i in range(grid)])


def manifold_latents(grid: int) -> Tensor:
    """The z [grid², 2] (float64) that ``manifold_figure`` decodes, row by row of the
    picture: the image in row r (from the top), column c has z = (q[c], q[grid − 1 − r]),
    q = ``manifold_quantiles(grid)``, so that z₁ grows to the right and z₂ upwards."""
    q = torch.as_tensor(manifold_quantiles(grid))
    z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)


def manifold_figure(
    decode_mean: DecodeMean,
    image_shape: Sequence[int],
    grid: int = 20,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Figure:
    """The decoder means over a ``grid`` × ``grid`` square of standard-normal quantiles of
    a 2-dimensional latent (Kingma & Welling 2014, Fig. 4); z given to ``decode_mean`` in
    one batch, as ``dtype`` on ``device``, laid out as ``manifold_latents`` says."""
    z = manifold_latents(grid)
    means = _as_images(_decode(decode_mean, z.to(device, dtype)), image_shape)
    q = manifold_quantiles(grid)
    # Ticks at the first, middle and last cells, labelled with their z.
    ticks = sorted({0, grid // 2, grid - 1})
    return _grid_figure(
        means,
        grid,
        f"decoder means over a {grid}×{grid} grid of normal quantiles z",
        row_labels={grid - 1 - i: f"{q[i]:.2f}" for i in ticks},
        col_labels={i: f"{q[i]:.2f}" for i in ticks},
        xlabel="z₁",
        ylabel="z₂",
    )


def write_vae_pictures(
    folder: str | Path,
    *,
    decode_mean: DecodeMean,
    prior_draws: Tensor,
    test_images: Tensor,
    reconstructions: Tensor,
    image_shape: Sequence[int],
    gaussian_prior: bool = True,
    grid: int = 20,
    dpi: int = 150,
) -> dict[str, Path]:
    """Write ``samples.png``, ``reconstructions.png`` and, when the latent is 2-dimensional
    with a standard-normal prior (``gaussian_prior``), ``manifold.png`` into ``folder``.

    Each file is written to a temporary file in ``folder`` and renamed, so a reader never
    sees half a picture. The manifold's z take ``prior_draws``' dtype and device.

    Returns:
        The paths written, by file name.
    """
    folder = Path(folder)
    figures = {
        SAMPLES: samples_figure(decode_mean, prior_draws, image_shape),
        RECONSTRUCTIONS: reconstructions_figure(test_images, reconstructions, image_shape),
    }
    if gaussian_prior and prior_draws.shape[-1] == 2:
        figures[MANIFOLD] = manifold_figure(
            decode_mean, image_shape, grid, dtype=prior_draws.dtype, device=prior_draws.device
        )
    return {name: save_figure(figure, folder / name, dpi) for name, figure in figures.items()}


def save_figure(figure: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Save ``figure`` as a PNG at ``path``, atomically (temporary file, then rename)."""
    return write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=dpi))


def _decode(decode_mean: DecodeMean, z: Tensor) -> np.ndarray:
    with torch.no_grad():
        means = decode_mean(z)
    if means.shape[0] != z.shape[0]:
        raise ValueError(
            f"decode_mean returned {tuple(means.shape)} for {z.shape[0]} latents; "
            "expected one image per latent"
        )
    return means.detach().to("cpu", torch.float64).numpy()


def _as_images(images: Tensor | np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """[N, D] -> [N, H, W] float64 on the CPU; a 1-D image shape becomes one row."""
    if isinstance(images, Tensor):
        images = images.detach().to("cpu", torch.float64).numpy()
    images = np.asarray(images, dtype=np.float64)
    shape = tuple(image_shape) if len(image_shape) == 2 else (1, int(np.prod(image_shape)))
    if images.ndim != 2 or images.shape[1] != math.prod(shape) or len(images) == 0:
        raise ValueError(
            f"images must be [N, {math.prod(shape)}] for image shape {tuple(image_shape)}, "
            f"got {images.shape}"
        )
    return images.reshape(len(images), *shape)


def _grid_figure(
    cells: np.ndarray,
    ncol: int,
    title: str | None,
    *,
    group: int | None = None,
    row_labels: dict[int, str] | None = None,
    col_labels: dict[int, str] | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """A Figure of ``cells`` [N, H, W] in rows of ``ncol``, PAD pixels apart (GROUP_GAP more
    after every ``group`` rows, if given); cells without an image (and NaN pixels) show the
    background. ``row_labels`` and ``col_labels`` label rows and columns by index."""
    n, height, width = cells.shape
    nrows = math.ceil(n / ncol)
    gaps = [r // group * GROUP_GAP if group else 0 for r in range(nrows)]
    tops = [PAD + r * (height + PAD) + gaps[r] for r in range(nrows)]
    lefts = [PAD + c * (width + PAD) for c in range(ncol)]
    mosaic = np.full((tops[-1] + height + PAD, lefts[-1] + width + PAD), np.nan)
    for i, image in enumerate(cells):
        top, left = tops[i // ncol], lefts[i % ncol]
        mosaic[top : top + height, left : left + width] = image
    mosaic = np.where(np.isnan(mosaic), BACKGROUND, np.clip(mosaic, 0.0, 1.0))

    scale = min(1.0, MAX_WIDTH_INCHES / (ncol * CELL_INCHES))
    margin = (0.65 if row_labels else 0.1, 0.4 if col_labels else 0.1, 0.3 if title else 0.1)
    figure = Figure(
        figsize=(
            mosaic.shape[1] / width * CELL_INCHES * scale + margin[0],
            mosaic.shape[0] / height * CELL_INCHES * scale + margin[1] + margin[2],
        )
    )
    ax = figure.add_subplot()
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0, labelsize=7)
    rows, cols = row_labels or {}, col_labels or {}
    ax.set_yticks([tops[r] + (height - 1) / 2 for r in rows], list(rows.values()))
    ax.set_xticks([lefts[c] + (width - 1) / 2 for c in cols], list(cols.values()))
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    if title:
        ax.set_title(title, fontsize=8)
    figure.tight_layout(pad=0.2)
    return figure
