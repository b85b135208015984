"""``python evaluate.py analysis=grid``: Per-Sample heatmaps for every (layer, beta) (IBA paper, Figs. 4 and 10).

All betas of a layer are fitted in one batched pass (`PerSampleIBA.explain_grid`). Writes, per image, a
figure with rows = layers and columns = beta, each panel with its colour bar in bits/pixel and
p(y|x, beta) in its title; ``grid.csv`` with a row per (image, layer, sigma, beta); ``grid_summary.csv``
with, per layer, the largest beta whose mean p stays within ``analysis.tolerance`` of the mean p without
the bottleneck, and there the change in p and the localisation, each with an ``analysis.bootstrap`` interval
over the images. With ``analysis.record_steps`` the capacity map of every
optimisation step of ``analysis.steps_layer`` is drawn, rows = sigma, columns = steps (Fig. 9);
``grid_artefact.csv`` gives, per (layer, beta, sigma), the mean grid artefact with its interval and, with
several sigmas, its paired change from the first sigma.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from infoflow.analyses import ANALYSES
from infoflow.analyses.common import (
    bootstrap_settings,
    evaluation_batches,
    log_results,
    output_dir,
    provenance,
)
from infoflow.builders import build_datamodule, build_method, build_model
from infoflow.errors import ConfigError
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.layer_report import interval_cells
from infoflow.metrics.mask_ratio import MaskRatio
from infoflow.stats import BootstrapSettings
from infoflow.utils.validation import check_beta, check_number
from infoflow.viz import save_figure

UNIT = "bits/pixel"


def grid_artefact(capacity: torch.Tensor) -> torch.Tensor:
    """Share of a capacity map's non-constant power at the feature grid's period (2 feature pixels).

    capacity: (..., C, h, w) or (..., h, w) if ``channels=False``; summed over channels first. Returns
    (...,) in [0, 1]: the power at the Nyquist row and column of the 2-D spectrum (checkerboard and stripe
    patterns of period 2) over all power except the mean. Near 1 for a planted grid, near 0 for smooth maps.
    """
    m = capacity.double()
    m = m - m.mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(m).abs() ** 2
    h, w = m.shape[-2:]
    at = torch.zeros(h, w, dtype=torch.bool)
    if h % 2 == 0:
        at[h // 2, :] = True
    if w % 2 == 0:
        at[:, w // 2] = True
    total = power.sum((-2, -1))
    return (power[..., at].sum(-1) / total.clamp_min(1e-300)).where(total > 0, torch.zeros_like(total))


def _panel(ax, image: np.ndarray, heat: np.ndarray, vmax: float | None):
    ax.imshow(image)
    im = ax.imshow(heat, cmap="jet", alpha=0.55, vmin=0, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def plot_layer_beta(image: torch.Tensor, heat: torch.Tensor, probs: torch.Tensor, prob_without: float,
                    layers: list[str], betas: list[float], title: str, path: Path, prov: str,
                    shared: bool) -> Path:
    """Fig. 4 layout: heat (L, B, H, W) bits/pixel over image (3, H, W); probs (L, B) p(y|x, beta)."""
    nl, nb = heat.shape[:2]
    fig, axes = plt.subplots(nl, nb, figsize=(2.3 * nb, 2.1 * nl), squeeze=False, layout="constrained")
    rgb = image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    vmax = float(heat.max()) if shared else None
    im = None
    for r in range(nl):
        for c in range(nb):
            ax = axes[r][c]
            im = _panel(ax, rgb, heat[r, c].cpu().numpy(), vmax)
            ax.set_title(f"β={betas[c]:g}/k  p={float(probs[r, c]):.2f}", fontsize=8)
            if c == 0:
                ax.set_ylabel(layers[r])
            if not shared:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    if shared and im is not None:
        fig.colorbar(im, ax=axes, label=UNIT)
    fig.suptitle(f"{title}  p(y|x)={prob_without:.2f}  heatmaps [{UNIT}]", fontsize=9)
    return save_figure(fig, path, prov, tight=False)


def plot_steps(steps: torch.Tensor, sigmas: list[float], title: str, path: Path, prov: str) -> Path:
    """Fig. 9 layout: steps (S, T, h, w) capacity in bits per feature pixel; rows sigma, columns steps."""
    ns, nt = steps.shape[:2]
    fig, axes = plt.subplots(ns, nt, figsize=(1.6 * nt + 1, 1.6 * ns), squeeze=False, layout="constrained")
    vmax = float(steps.max())
    im = None
    for r in range(ns):
        for c in range(nt):
            im = axes[r][c].imshow(steps[r, c].cpu().numpy(), cmap="RdYlGn_r", vmin=0, vmax=vmax)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(f"step {c + 1}", fontsize=8)
        axes[r][0].set_ylabel(f"σ_s={sigmas[r]:g}")
    fig.colorbar(im, ax=axes, label="capacity [bits / feature pixel]")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, prov, tight=False)


def summarise(df: pd.DataFrame, tolerance: float, boot: BootstrapSettings | None = None) -> pd.DataFrame:
    """Per (layer, sigma): the largest beta whose mean p with the bottleneck is >= mean p without minus
    `tolerance`, and at that beta, each as a mean over images with its `boot` interval (``_low``, ``_high``):
    the paired change in p (``prob_change``: p with - p without, on the same images), the mean bits/pixel
    and the localisation (inside/outside ratio and mask ratio, where the data have masks)."""
    boot = boot or BootstrapSettings()
    rows = []
    for (layer, sigma), sel in df.groupby(["layer", "sigma"], sort=False):
        means = sel.groupby("beta").mean(numeric_only=True).sort_index()
        ok = means[means["prob_with"] >= means["prob_without"] - tolerance]
        row: dict[str, Any] = {"layer": layer, "sigma": sigma, "tolerance": tolerance, "images": sel["image"].nunique()}
        if len(ok):
            beta = float(ok.index.max())
            at = sel[sel["beta"] == beta].sort_values("image")
            row.update({"beta": beta, "prob_with": float(ok.loc[beta, "prob_with"]),
                        "prob_without": float(ok.loc[beta, "prob_without"])})
            row.update(interval_cells(at["prob_with"].to_numpy(), "prob_change", boot, at["prob_without"].to_numpy()))
            for col in ("mean_bits_per_pixel", "inside_outside_ratio", "mask_ratio"):
                if col in at:
                    row.update(interval_cells(at[col].to_numpy(), col, boot))
        else:
            row["beta"] = math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def artefact_table(df: pd.DataFrame, boot: BootstrapSettings | None = None) -> pd.DataFrame:
    """Per (layer, beta, sigma): the mean `grid_artefact` over images with its `boot` interval, and with
    several sigmas the paired difference from the first sigma on the same images (``change``: this sigma's
    artefact minus the first's; negative: smoothing removes grid power)."""
    boot = boot or BootstrapSettings()
    rows = []
    for (layer, beta), sel in df.groupby(["layer", "beta"], sort=False):
        sigmas = list(dict.fromkeys(sel["sigma"]))
        first = sel[sel["sigma"] == sigmas[0]].sort_values("image")["grid_artefact"].to_numpy()
        for sigma in sigmas:
            values = sel[sel["sigma"] == sigma].sort_values("image")["grid_artefact"].to_numpy()
            row: dict[str, Any] = {"layer": layer, "beta": beta, "sigma": sigma, "images": len(values),
                                   **interval_cells(values, "grid_artefact", boot)}
            if sigma != sigmas[0]:
                row.update(interval_cells(values, "change", boot, first))
            rows.append(row)
    return pd.DataFrame(rows)


def _settings(cfg: DictConfig) -> tuple[list[str], list[float], list[float]]:
    a = cfg.analysis
    if cfg.method.name != "iba":
        raise ConfigError(f"analysis=grid fits the Per-Sample Bottleneck: method must be iba, got {cfg.method.name!r}")
    layers = list(a.layers) if a.layers else [n for n in cfg.model.readout_layers if n != "fc"]
    if not layers:
        raise ConfigError("analysis.layers is empty; give layer names, e.g. analysis.layers=[conv2,conv3]")
    if not a.betas:
        raise ConfigError("analysis.betas is empty; give betas in units of 1/k, e.g. analysis.betas=[1,10,100]")
    betas = [check_beta(b, "analysis.betas") for b in a.betas]
    sigmas = [check_number(s, "analysis.sigmas") for s in a.sigmas] if a.sigmas else [float(cfg.method.sigma)]
    check_number(a.tolerance, "analysis.tolerance")
    return layers, betas, sigmas


@ANALYSES.register("grid")
def run(cfg: DictConfig) -> dict[str, Any]:
    layers, betas, sigmas = _settings(cfg)
    a = cfg.analysis
    boot = bootstrap_settings(a.bootstrap)  # checked before any work
    steps_layer = a.steps_layer or layers[0]
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    out = output_dir(cfg) / "grid"
    prov = provenance(cfg)
    batches = list(evaluation_batches(dm, a.num_images, "cpu"))
    rows: list[dict[str, Any]] = []
    heat: dict[tuple[str, float], torch.Tensor] = {}  # (layer, sigma) -> (N, B, H, W)
    prob: dict[tuple[str, float], torch.Tensor] = {}
    pw: torch.Tensor | None = None
    figs9: list[Path] = []
    for layer in layers:
        lcfg = cfg.copy()
        OmegaConf.update(lcfg, "layer", layer)
        OmegaConf.update(lcfg, "method.layer", layer)
        method = build_method(lcfg, model, dm)
        assert isinstance(method, PerSampleIBA)
        method.record_steps = bool(a.record_steps) and layer == steps_layer
        step_maps = []
        for sigma in sigmas:
            method.set_sigma(sigma)
            hs, ps, pws, caps, recorded = [], [], [], [], []
            for batch in batches:
                x = batch["image"].to(method.device)
                target = batch["label"].to(x.device) if cfg.target == "label" else model.module(x).argmax(1)
                r = method.explain_grid(x, target, betas)
                hs.append(r.heatmap.cpu())
                ps.append(r.prob_with.cpu())
                pws.append(r.prob_without[:, 0].cpu())
                caps.append(r.capacity.cpu())
                if method.record_steps:
                    recorded.append(method.step_capacity[:, 0].sum(2).cpu() / math.log(2))  # type: ignore[index]
            h, p, pw, cap = torch.cat(hs), torch.cat(ps), torch.cat(pws), torch.cat(caps)
            if recorded:  # image 0 at betas[0]: (T, h, w) bits per feature pixel
                step_maps.append(torch.cat(recorded)[0])
            heat[layer, sigma], prob[layer, sigma] = h, p
            artefact = grid_artefact(cap.sum(2))
            i = 0
            for batch in batches:
                for j in range(batch["label"].shape[0]):
                    for b, beta in enumerate(betas):
                        hm = h[i, b]
                        row: dict[str, Any] = {
                            "image": i, "label": int(batch["label"][j]), "model": cfg.model.name, "layer": layer,
                            "sigma": sigma, "beta": beta, "prob_with": float(p[i, b]), "prob_without": float(pw[i]),
                            "total_bits": float(hm.sum()), "mean_bits_per_pixel": float(hm.mean()),
                            "grid_artefact": float(artefact[i, b]),
                        }
                        if "mask" in batch:
                            m = batch["mask"][j].bool()
                            inside, outside = float(hm[m].mean()), float(hm[~m].mean())
                            row["inside_outside_ratio"] = inside / max(outside, 1e-12)
                            metric = MaskRatio()
                            metric.update(hm[None], m[None])
                            row["mask_ratio"] = float(metric.compute())
                        rows.append(row)
                    i += 1
        if step_maps:
            steps = torch.stack(step_maps)  # (S, T, h, w)
            figs9.append(plot_steps(steps, sigmas, f"capacity over the steps @ {cfg.model.name}/{layer}, "
                                    f"β={betas[0]:g}/k, image 0", out / f"steps_{layer}.png", prov))
    df = pd.DataFrame(rows)
    summary_table = summarise(df, float(a.tolerance), boot)
    artefacts = artefact_table(df, boot)
    pngs = []
    images = torch.cat([dm.denormalize(b["image"]) for b in batches])
    assert pw is not None
    for sigma in sigmas:
        for i in range(images.shape[0]):
            hm = torch.stack([heat[layer, sigma][i] for layer in layers])
            pr = torch.stack([prob[layer, sigma][i] for layer in layers])
            tag = f"_sigma{sigma:g}" if len(sigmas) > 1 else ""
            pngs.append(plot_layer_beta(images[i], hm, pr, float(pw[i]), layers, betas,
                                        f"IBA @ {cfg.model.name}, image {i}, σ={sigma:g}", out / f"{i:04d}{tag}.png",
                                        prov, bool(a.shared_colorbar)))
    print(f"per layer: largest β with mean p within {a.tolerance} of p(y|x):\n{summary_table.to_string(index=False)}")
    if len(sigmas) > 1:
        print(f"grid artefact (share of the capacity map's power at the feature grid's period) by σ_s, "
              f"change from σ_s={sigmas[0]:g}:\n{artefacts.to_string(index=False)}")
    print(f"wrote {len(pngs) + len(figs9)} figures to {out}, grid.csv, grid_summary.csv and grid_artefact.csv")
    log_results(cfg, {"grid": df, "grid_summary": summary_table, "grid_artefact": artefacts},
                {"grid": pngs[:16], "grid_steps": figs9}, {
        "num_images": int(images.shape[0]), "mean_grid_artefact": float(df["grid_artefact"].mean())})
    return {"num_images": int(images.shape[0]), "layers": layers, "betas": betas}
