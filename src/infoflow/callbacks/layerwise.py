"""``layerwise``: SID, concentration and RU per layer of the network being trained, every few epochs.

On the fixed evaluation subset (`callbacks.subset`), at every conv layer or `layers`:

- SID (`discarding.compute_sid`) with a cheap `SIDConfig` (``sid``); delta_f² is re-estimated at every
  evaluation on the whole subset (the weights change), each image's SID seeded by its global index;
- concentration (`discarding.concentration`): ``concentration=null`` computes it when the data has object
  masks or boxes, ``true`` requires them, ``false`` skips it;
- RU (`discarding.compute_ru`): ``ru=null`` computes it when there are decoders (``decoder_steps`` > 0: quick
  decoders trained for that many Adam steps per evaluation on the current weights; else stored decoders in
  ``decoder_dir`` for these exact weights, which exist only for a frozen network such as the readout task's
  classifier); otherwise RU is skipped with one log line saying why. ``ru=true`` requires it (an error at
  the start of the fit when neither is available), ``ru=false`` skips it.

The per-image rows are those of `infoflow.layer_report.layer_rows`, the table of `layer_report.summarize`
(the same as ``analysis=layerwise``): all values in nats per pixel of the [0, 1] input, means over the
subset's images with a ``bootstrap.level`` interval (``<q>_low``, ``<q>_high``; a seeded bootstrap over the
images, `infoflow.stats`). Writes ``callbacks/layerwise.csv`` (per epoch x layer), ``callbacks/
layerwise_images.csv`` (per image) and, at the end, ``callbacks/layerwise_{sid,concentration,ru}_layer_epoch.png``
and ``..._curves.png`` (x ticks: the layer names; bands: the intervals); logs the scalars
``layerwise/<quantity>[_low|_high]/<layer>`` and, to W&B, a table, line-series charts over the layers (one
line per epoch) and the layer x epoch SID image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from infoflow.callbacks.base import EvaluationCallback
from infoflow.callbacks.loggers import line_series, log_scalars, log_wandb, wandb_image, wandb_table
from infoflow.callbacks.network import trained_network
from infoflow.callbacks.rows import Rows
from infoflow.callbacks.subset import image_seed
from infoflow.data.base import ImageDataModule
from infoflow.discarding import (
    DecoderNet,
    LayerFeatures,
    MissingDecoderError,
    SIDConfig,
    compute_ru,
    compute_sid,
    estimate_delta_f2,
    load_decoders,
    object_mask,
    resolve_layers,
)
from infoflow.errors import ConfigError
from infoflow.layer_report import layer_rows, summarize
from infoflow.models.zoo import ZooModel
from infoflow.stats import BootstrapSettings
from infoflow.utils.tables import write_csv
from infoflow.viz import plot_layer_curves, plot_matrix

log = logging.getLogger(__name__)

#: per-image columns of `layer_rows` gathered over processes (numbers; the strings are rebuilt)
_COLUMNS = ["image", "label", "layer_index", "sid_per_pixel", "sid_total", "constraint_ratio",
            "constraint_ratio_se", "constraint_ratio_fresh", "constraint_ratio_fresh_se", "constraint_draws",
            "converged", "ru_per_pixel", "concentration"]
#: quantity -> (axis label, scalar key)
_QUANTITIES = {"sid_per_pixel": ("SID [nats/pixel]", "sid"), "concentration": ("concentration [nats/pixel]",
               "concentration"), "ru_per_pixel": ("RU [nats/pixel]", "ru")}


class LayerwiseCallback(EvaluationCallback):
    """SID / concentration / RU per layer during training (module docstring).

    Args:
        model, every_n_epochs, at_start, num_images, split, seed, output_dir: see `EvaluationCallback`.
        layers: paper layer names or module paths; None: the model's conv layers.
        sid: `SIDConfig` fields (a cheap budget by default: 10 steps of 2 draws, 8 evaluation draws).
        delta_f2_samples, tau: noise draws per image and scale of the delta_f² estimate.
        concentration: None (when the data has masks or boxes) | True (required) | False.
        ru: None (when decoders are available) | True (required) | False.
        decoder_steps: Adam steps of quick decoders per evaluation (0: none); `decoder_width`, `decoder_lr`.
        decoder_dir: stored decoders (`python train.py task=decoder`), used for frozen networks.
        ru_samples: noise draws per (image, layer) for RU.
        bootstrap: `BootstrapSettings` fields of the intervals over the subset's images (level, n_resamples,
            seed, method).
    """

    name = "layerwise"

    def __init__(self, model: str, every_n_epochs: int = 2, at_start: bool = False, num_images: int = 4,
                 split: str = "val", seed: int = 0, output_dir: str | None = None,
                 layers: Sequence[str] | None = None, sid: dict[str, Any] | None = None,
                 delta_f2_samples: int = 8, tau: float = 1e-3, concentration: bool | None = None,
                 ru: bool | None = None, decoder_steps: int = 0, decoder_width: int = 32, decoder_lr: float = 2e-3,
                 decoder_dir: str | None = None, ru_samples: int = 8,
                 bootstrap: dict[str, Any] | None = None) -> None:
        super().__init__(model, every_n_epochs, at_start, num_images, split, seed, output_dir)
        fields = {"steps": 10, "samples": 2, "eval_samples": 8, "projection_iters": 4, "lr": 0.1, **dict(sid or {})}
        try:
            self.sid_config = SIDConfig(**fields)
        except TypeError as e:
            valid = ", ".join(SIDConfig.__dataclass_fields__)
            raise ConfigError(f"callbacks.layerwise.sid: {e}; valid fields: {valid}") from None
        if isinstance(decoder_steps, bool) or not isinstance(decoder_steps, int) or decoder_steps < 0:
            raise ConfigError(f"callbacks.layerwise.decoder_steps must be an integer >= 0, got {decoder_steps!r}")
        try:
            self.bootstrap = BootstrapSettings(**dict(bootstrap or {}))
        except TypeError as e:
            valid = ", ".join(BootstrapSettings.__dataclass_fields__)
            raise ConfigError(f"callbacks.layerwise.bootstrap: {e}; valid fields: {valid}") from None
        self.layer_names = list(layers) if layers is not None else None
        self.delta_f2_samples, self.tau = int(delta_f2_samples), float(tau)
        self.want_concentration, self.want_ru = concentration, ru
        self.decoder_steps, self.decoder_width, self.decoder_lr = decoder_steps, int(decoder_width), float(decoder_lr)
        self.decoder_dir, self.ru_samples = decoder_dir, int(ru_samples)
        self.layers: list[str] = []
        self.paths: dict[str, str] = {}
        self.use_concentration = False
        self.ru_mode: str | None = None  # None (off) | "quick" | "stored"

    # ---- settings ----------------------------------------------------------------------------------
    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: ImageDataModule) -> None:
        zoo = trained_network(pl_module, self.model_name, dm)
        try:
            self.paths = resolve_layers(zoo, self.layer_names)
        except ValueError as e:
            raise ConfigError(f"callbacks.layerwise.layers: {e}") from None
        self.layers = list(self.paths)
        has_mask = bool(dm.has_masks or dm.has_boxes)
        if self.want_concentration and not has_mask:
            raise ConfigError(f"callbacks.layerwise.concentration=true needs object masks or boxes, but "
                              f"{type(dm).__name__} has neither: set callbacks.layerwise.concentration=null|false")
        self.use_concentration = has_mask if self.want_concentration is None else bool(self.want_concentration)
        self.ru_mode = self._ru_mode(zoo)

    def _ru_mode(self, zoo: ZooModel) -> str | None:
        """How RU is computed (None: not at all), decided once before training."""
        if self.want_ru is False:
            return None
        if self.decoder_steps > 0:
            return "quick"
        why = self._stored_decoders_missing(zoo)
        if why is None:
            return "stored"
        hint = "set callbacks.layerwise.decoder_steps=<N> to train quick decoders (N Adam steps per layer) " \
               "at every evaluation"
        if self.want_ru:
            raise ConfigError(f"callbacks.layerwise.ru=true, but {why} and decoder_steps=0: {hint}, or ru=null")
        log.info("callbacks.layerwise: RU skipped: %s and decoder_steps=0 (%s)", why, hint)
        return None

    def _stored_decoders_missing(self, zoo: ZooModel) -> str | None:
        """Why the stored decoders cannot be used for these weights, or None when they can."""
        if zoo.weights == "training":
            return "the weights change during training, so stored decoders do not apply"
        if self.decoder_dir is None:
            return "no decoder_dir is set"
        try:
            load_decoders(self.decoder_dir, zoo, self.layers)
        except MissingDecoderError as e:
            return f"no stored decoder for layer {e.layer!r} in {self.decoder_dir} ({e.hint.format(model=zoo.name, layer=e.layer, weights=zoo.weights, path=e.path)})"
        except ValueError as e:
            return str(e)
        return None

    # ---- measuring ---------------------------------------------------------------------------------
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: ImageDataModule,
                epoch: int) -> pd.DataFrame:
        per_image = self.measure_images(trainer, pl_module, dm, epoch)
        if trainer.is_global_zero:
            self._append_images(per_image, epoch)
        return summarize(per_image, self.bootstrap, by=("layer_index", "layer"))

    def measure_images(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: ImageDataModule,
                       epoch: int) -> pd.DataFrame:
        """One row per subset image and layer, gathered from every process (collective), by image."""
        zoo = trained_network(pl_module, self.model_name, dm)
        device = pl_module.device
        x01 = dm.denormalize(self.subset["image"].to(device))
        mask = object_mask(self.subset) if self.use_concentration else None
        features = LayerFeatures(zoo.module, self.paths, dm.mean, dm.std).to(device)
        delta_f2 = estimate_delta_f2(features, x01, self.tau, self.delta_f2_samples, self.seed)
        decoders = self._decoders(zoo, dm, features, epoch, device)
        labels = self.subset["label"]
        rows = []
        for p in self.shard(trainer).tolist():
            g = int(self.indices[p])
            x = x01[p : p + 1]
            sid = compute_sid(features, x, delta_f2, replace(self.sid_config, seed=image_seed(self.seed, g, "sid")),
                              self.layers, progress=False)  # inside Lightning's own bars
            ru = compute_ru(features, x, sid, decoders, self.ru_samples, image_seed(self.seed, g, "ru")) \
                if decoders is not None else None
            part = mask[p : p + 1].cpu() if mask is not None else None
            for r in layer_rows(self.model_name, sid, ru, part, labels[p : p + 1], images=[g]):
                rows.append([float(r[c]) for c in _COLUMNS])
        gathered = Rows().to(device)
        gathered.update(torch.tensor(rows, dtype=torch.float64).reshape(-1, len(_COLUMNS)))
        everything = gathered.compute().cpu().numpy()
        per_image = pd.DataFrame(everything, columns=_COLUMNS).astype(
            {"image": int, "label": int, "layer_index": int, "constraint_draws": int, "converged": bool})
        per_image = per_image.sort_values(["image", "layer_index"]).reset_index(drop=True)
        per_image.insert(3, "layer", [self.layers[j - 1] for j in per_image["layer_index"]])
        return per_image

    def _append_images(self, per_image: pd.DataFrame, epoch: int) -> None:
        path = self.out_dir / "layerwise_images.csv"
        frame = per_image.assign(epoch=epoch)
        if path.is_file():
            old = pd.read_csv(path)
            frame = pd.concat([old[old["epoch"] != epoch], frame], ignore_index=True)
        write_csv(frame, path)

    def _decoders(self, zoo: ZooModel, dm: ImageDataModule, features: LayerFeatures, epoch: int,
                  device: torch.device) -> dict[str, DecoderNet] | None:
        if self.ru_mode == "stored":
            assert self.decoder_dir is not None
            return {k: v.to(device) for k, v in load_decoders(self.decoder_dir, zoo, self.layers).items()}
        if self.ru_mode == "quick":
            return self._quick_decoders(zoo, dm, features, epoch, device)
        return None

    def _quick_decoders(self, zoo: ZooModel, dm: ImageDataModule, features: LayerFeatures, epoch: int,
                        device: torch.device) -> dict[str, DecoderNet]:
        """One small decoder per layer, trained for `decoder_steps` Adam steps on training images (the same
        seeded batches and initialisation on every process, so every process gets the same decoders)."""
        dm.setup("fit")
        base = dm.train_dataloader()
        gen = torch.Generator().manual_seed(image_seed(self.seed, epoch, "decoder-data"))
        loader = DataLoader(base.dataset, batch_size=base.batch_size, shuffle=True, generator=gen,
                            collate_fn=base.collate_fn, drop_last=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(image_seed(self.seed, epoch, "decoder-init"))
            with torch.no_grad():
                shapes = {k: v.shape[1:] for k, v in features(dm.denormalize(self.subset["image"][:1].to(device))).items()}
            nets = {name: DecoderNet(shapes[name], zoo.input_size, self.decoder_width, 1).to(device)
                    for name in self.layers}
        opt = torch.optim.Adam([p for n in nets.values() for p in n.parameters()], lr=self.decoder_lr)
        for net in nets.values():
            net.train()
        step = 0
        while step < self.decoder_steps:
            for batch in loader:
                x01 = dm.denormalize(batch["image"].to(device))
                with torch.no_grad():
                    feats = features(x01)
                loss = sum(F.mse_loss(nets[n](feats[n]), x01) for n in self.layers)
                opt.zero_grad()
                loss.backward()  # type: ignore[union-attr]
                opt.step()
                step += 1
                if step >= self.decoder_steps:
                    break
        return {n: net.eval() for n, net in nets.items()}

    # ---- outputs -----------------------------------------------------------------------------------
    def _matrix(self, column: str) -> tuple[np.ndarray, list[int]]:
        """(layers, epochs) matrix of a column's means over the history, and the epochs."""
        pivot = self.history.pivot_table(index="layer_index", columns="epoch", values=column, dropna=False)
        pivot = pivot.reindex(range(1, len(self.layers) + 1))
        return pivot.to_numpy(dtype=float), [int(c) for c in pivot.columns]

    def _quantities(self) -> list[str]:
        return [q for q in _QUANTITIES if q in self.history and self.history[q].notna().any()]

    def log_epoch(self, trainer: pl.Trainer, table: pd.DataFrame, epoch: int) -> None:
        scalars = {f"layerwise/{_QUANTITIES[q][1]}{suffix}/{r['layer']}": r[f"{q}{suffix}"]
                   for q in _QUANTITIES for r in table.to_dict("records") for suffix in ("", "_low", "_high")}
        log_scalars(trainer, scalars)
        items: dict[str, Any] = {"layerwise/table": wandb_table(self.history)}
        for q in self._quantities():
            label, key = _QUANTITIES[q]
            items[f"layerwise/{key}_by_layer"] = line_series(
                self.history.dropna(subset=[q]), "layer_index", q, "epoch",
                f"{label} by layer ({', '.join(self.layers)})", "layer (1 = first)")
        items["layerwise/sid_layer_epoch"] = wandb_image(self._heatmap("sid_per_pixel"), "SID, layer x epoch")
        log_wandb(trainer, items)

    def _heatmap(self, q: str) -> Path:
        values, epochs = self._matrix(q)
        label, key = _QUANTITIES[q]
        return plot_matrix(values, self.layers, epochs, self.out_dir / f"layerwise_{key}_layer_epoch.png",
                           f"{label} of {self.model_name} by layer and epoch", label)

    def figures(self) -> list[Path]:
        paths = []
        band = f"{self.bootstrap.level:.0%} interval over {len(self.indices)} images"
        for q in self._quantities():
            label, key = _QUANTITIES[q]
            paths.append(self._heatmap(q))
            curves = {}
            for e, g in self.history.groupby("epoch", sort=True):
                g = g.set_index("layer").reindex(self.layers)
                curves[f"epoch {e}"] = tuple(g[c].to_numpy(float) for c in (q, f"{q}_low", f"{q}_high"))
            paths.append(plot_layer_curves(curves, self.layers, self.out_dir / f"layerwise_{key}_curves.png", label,
                                           f"{label} of {self.model_name} by layer over training", band=band))
        return paths
