"""Figures a person can look at: heatmaps over images, curves, grids. Each PNG carries its config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from infoflow.utils.checkpoint import atomic_write  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path, provenance: str = "", tight: bool = True) -> Path:
    """Save `fig` as PNG atomically, with `provenance` (e.g. the resolved config) in its metadata.

    ``tight=False`` keeps the figure's own size (figsize x 110 dpi), so that figures of one kind have equal
    pixel sizes whatever their titles and labels (W&B shows a list of images well only then)."""
    path = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight" if tight else None,
                                                      metadata={"Description": provenance}))
    plt.close(fig)
    return path


def _rgb(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()


def plot_heatmap(
    image: torch.Tensor,
    heatmap: torch.Tensor,
    title: str,
    unit: str,
    path: str | Path,
    provenance: str = "",
) -> Path:
    """Image (3, H, W) in [0, 1] beside the heatmap (H, W) over it, with a colour bar in `unit`.

    Always 792 x 374 px, so that a run's heatmap PNGs can be logged together."""
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.4), layout="constrained")
    axes[0].imshow(_rgb(image))
    axes[0].set_title("input")
    axes[1].imshow(_rgb(image))
    im = axes[1].imshow(heatmap.detach().float().cpu().numpy(), cmap="jet", alpha=0.55)
    axes[1].set_title(f"heatmap [{unit}]")
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04, label=unit)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, provenance, tight=False)


def plot_grid(
    images: torch.Tensor,
    maps: dict[str, torch.Tensor],
    path: str | Path,
    provenance: str = "",
    row_titles: Sequence[str] | None = None,
    units: str | dict[str, str] = "",
) -> Path:
    """Grid: one row per image (N, 3, H, W), the image then one column per method's maps (N, H, W).

    `units` as one string: the maps share one unit, so the whole figure has one colour scale and one bar;
    as a dict column -> unit: each column (a method) has its own scale, shared by its images, and its bar.
    """
    n, cols = images.shape[0], 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n + 0.7), squeeze=False)
    arrays = {name: m.detach().float().cpu().numpy() for name, m in maps.items()}
    shared = isinstance(units, str)
    if shared and arrays:
        lo, hi = _limits(np.stack(list(arrays.values())))
    for i in range(n):
        axes[i, 0].imshow(_rgb(images[i]))
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=6)
    for j, (name, m) in enumerate(arrays.items(), start=1):
        if not shared:
            lo, hi = _limits(m)
        for i in range(n):
            im = axes[i, j].imshow(m[i], cmap="jet", vmin=lo, vmax=hi)
        axes[0, j].set_title(name, fontsize=7, rotation=30)
        if not shared:
            _colorbar(fig, im, axes[:, j], units.get(name, ""), 6)
    if shared and arrays:
        _colorbar(fig, im, axes[:, 1:], units, 8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path, provenance)


def _limits(values: np.ndarray) -> tuple[float, float]:
    """Finite (min, max) of `values`, widened when equal (so a constant map still gets a scale)."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _colorbar(fig: plt.Figure, im: matplotlib.image.AxesImage, axes: np.ndarray, unit: str, fontsize: int) -> None:
    """A horizontal colour bar under `axes`, labelled with `unit`."""
    bar = fig.colorbar(im, ax=list(np.ravel(axes)), orientation="horizontal", fraction=0.04, pad=0.02)
    bar.set_label(unit or "a.u.", fontsize=fontsize)
    bar.ax.tick_params(labelsize=fontsize - 1)


def plot_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    provenance: str = "",
    logx: bool = False,
) -> Path:
    """Line plot of named (x, y) curves."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (x, y) in curves.items():
        ax.plot(x, y, label=name, marker="." if len(x) < 30 else None)
    if logx:
        ax.set_xscale("log")
    return _finish_curves(fig, ax, xlabel, ylabel, title, path, provenance)


def _finish_curves(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: str | Path,
                   provenance: str) -> Path:
    """Label, legend and grid of a curves plot, then save it (see `save_figure`)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, provenance)


def plot_layer_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    layers: Sequence[str],
    path: str | Path,
    ylabel: str,
    title: str = "",
    provenance: str = "",
    band: str = "95% interval",
) -> Path:
    """One line per name over the `layers` (x ticks named by layer), each a (mean, low, high) triple of
    arrays (len(layers),), drawn as the mean with a shaded band from low to high (NaN bounds: no band)."""
    fig, ax = plt.subplots(figsize=(max(5.5, 0.7 * len(layers) + 2.0), 3.8))
    x = np.arange(len(layers))
    for name, (mean, low, high) in curves.items():
        (line,) = ax.plot(x, mean, label=name, marker=".")
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xticks(x, list(layers), rotation=30 if len(layers) > 6 else 0, fontsize=7)
    return _finish_curves(fig, ax, f"layer (bands: {band})", ylabel, title, path, provenance)


def plot_matrix(
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[object],
    path: str | Path,
    title: str,
    unit: str,
    xlabel: str = "epoch",
    provenance: str = "",
) -> Path:
    """A rows x cols heatmap (e.g. layer x epoch) with the values written in the cells, a bar in `unit`."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * max(len(cols), 3), 1.0 + 0.45 * max(len(rows), 2)))
    lo, hi = _limits(values)
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=lo, vmax=hi)
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label=unit)
    return save_figure(fig, path, provenance)
