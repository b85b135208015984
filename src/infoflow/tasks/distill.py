"""Knowledge distillation (Hinton et al. 2015): ``python train.py task=distill task.teacher.model=... task.teacher.weights=...``.

The student, the config's `model`, is trained from scratch (``weights=default``; or from `weights`) on
``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, label)``, where t and s are the
teacher's and the student's logits. The teacher is frozen: eval mode, no gradients, and not a registered
submodule, so optimisers, DDP and checkpoints never see its weights (as the Readout Bottleneck keeps its
classifier). Logged like the classifier (``{train,val,test}/{loss,acc}``, loss = the distillation
objective) plus its parts ``{stage}/kd`` (T^2 KL) and ``{stage}/ce``; the student is saved as ``model.pt``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from infoflow.builders import build_model
from infoflow.data.base import ImageDataModule
from infoflow.errors import ConfigError
from infoflow.models.zoo import ZooModel, get_model
from infoflow.tasks import TASKS
from infoflow.tasks.classifier import ClassifierModule
from infoflow.tasks.common import require_trained, save_weights
from infoflow.tasks.skeleton import TrainingTask
from infoflow.utils.modules import MovesHidden, hide_module


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, T^2 KL(softmax(t/T) || softmax(s/T)) batch mean, CE) of student and teacher logits."""
    kd = F.kl_div(F.log_softmax(student / temperature, 1), F.log_softmax(teacher / temperature, 1),
                  reduction="batchmean", log_target=True) * temperature**2
    ce = F.cross_entropy(student, labels)
    return alpha * kd + (1 - alpha) * ce, kd, ce


class DistillModule(MovesHidden, ClassifierModule):
    """`ClassifierModule` whose loss distils a frozen teacher (given with `set_teacher`) into `model`."""

    def __init__(self, model: nn.Module, num_classes: int, lr: float = 2e-3, weight_decay: float = 1e-4,
                 alpha: float = 0.9, temperature: float = 4.0) -> None:
        if not 0 <= alpha <= 1:
            raise ConfigError(f"task.alpha weighs the distillation term against cross-entropy, in [0, 1]; got {alpha}")
        if not temperature > 0:
            raise ConfigError(f"task.temperature must be > 0, got {temperature}")
        super().__init__(model, num_classes, lr=lr, weight_decay=weight_decay)

    def set_teacher(self, teacher: nn.Module) -> DistillModule:
        """Freeze `teacher` for good and keep it outside the module tree (`MovesHidden` moves it along)."""
        hide_module(self, "teacher", teacher.eval().requires_grad_(False))
        return self

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(student logits, loss, kd, ce) of a batch."""
        if "teacher" not in self.__dict__:
            raise RuntimeError("DistillModule has no teacher: call set_teacher(teacher) first")
        with torch.no_grad():
            teacher = self.teacher(images)
        logits = self(images)
        return logits, *distillation_loss(logits, teacher, labels, self.hparams.alpha, self.hparams.temperature)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits, loss, kd, ce = self.loss(batch["image"], batch["label"])
        self.acc[f"{stage}_acc"](logits, batch["label"])
        sync = stage != "train"
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", sync_dist=sync)
        self.log_dict({f"{stage}/kd": kd, f"{stage}/ce": ce}, sync_dist=sync)
        self.log(f"{stage}/acc", self.acc[f"{stage}_acc"], prog_bar=True, on_step=False, on_epoch=True)
        return loss


def build_teacher(cfg: DictConfig, student: ZooModel, input_size: tuple[int, int, int]) -> ZooModel:
    """The trained teacher of `cfg.task.teacher`, checked against the student and the data."""
    spec = cfg.task.teacher
    num_classes = spec.get("num_classes") or student.num_classes
    try:
        teacher = get_model(spec.model, weights=str(spec.weights), num_classes=num_classes, input_size=input_size)
    except ValueError as err:
        if "does not fit" not in str(err):
            raise
        raise ConfigError(f"{err}. Are the teacher's weights for {num_classes} classes? (set task.teacher.num_classes "
                         "to the number they are for: teacher and student must agree)") from err
    if teacher.num_classes != student.num_classes:
        raise ConfigError(f"the teacher ({teacher.name}) has {teacher.num_classes} classes but the student "
                         f"({student.name}) has {student.num_classes}: distillation needs the same classes")
    for role, zoo in (("teacher", teacher), ("student", student)):
        try:
            with torch.no_grad():
                out = zoo.module.eval()(torch.zeros(2, *input_size))
        except RuntimeError as err:
            raise ConfigError(f"the {role} {zoo.name} does not accept the data's {input_size[1]}x{input_size[2]} "
                             f"images (set data.image_size to a size it takes): {err}") from err
        if tuple(out.shape) != (2, zoo.num_classes):
            raise ConfigError(f"the {role} {zoo.name} outputs {tuple(out.shape[1:])} for one image, "
                             f"not {zoo.num_classes} logits")
    return teacher


@TASKS.register("distill")
class DistillTask(TrainingTask):
    """Distil `cfg.task.teacher` into `cfg.model` (from scratch) on `cfg.data`; save the student."""

    def check(self) -> None:
        spec = self.cfg.task.teacher
        require_trained(spec.model, spec.weights, "the teacher", "task.teacher.weights")

    def build_module(self, dm: ImageDataModule) -> DistillModule:
        cfg = self.cfg
        self.student = build_model(cfg, dm, weights="none" if cfg.weights == "default" else None)
        self.teacher = build_teacher(cfg, self.student, dm.input_size)
        return DistillModule(self.student.module, self.student.num_classes, lr=cfg.task.lr,
                             weight_decay=cfg.task.weight_decay, alpha=cfg.task.alpha,
                             temperature=cfg.task.temperature).set_teacher(self.teacher.module)

    def save(self, trainer: pl.Trainer, module: DistillModule, metrics: dict[str, Any]) -> None:
        print(f"student {self.student.name} of teacher {self.teacher.name} ({self.teacher.weights}): test/acc "
              f"{metrics.get('test/acc', float('nan')):.4f}")
        save_weights(module.model, self.cfg.paths.output_dir)
