"""The compression and distillation studies: task=prune, task=distill, and the classifier's per-epoch weights."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import compose_config, run_script
from torch import nn

from infoflow.analyses.layerwise import compared_models
from infoflow.data.shapes import ShapesDataModule
from infoflow.models.cifar_resnet import CifarResNet
from infoflow.models.shapesnet import ShapesNet
from infoflow.models.zoo import get_model
from infoflow.tasks import run_task
from infoflow.tasks.distill import DistillModule, distillation_loss
from infoflow.tasks.prune import prunable, prune_to, round_targets
from infoflow.utils.checkpoint import load_state_dict_file

SIZE = 32
#: tiny built-in shapes data (2 training steps per epoch), CSV logs only
TINY = [f"data.image_size={SIZE}", "data.num_train=32", "data.num_val=16", "data.num_test=16", "data.batch_size=16",
        "logger=csv"]


def compose_train(tmp_path: Path, *overrides: str):
    quiet = [] if "callbacks=none" in overrides else ["callbacks.progress_bar=null"]
    return compose_config("train", [*TINY, *quiet, *overrides, f"paths.output_dir={tmp_path}",
                                    f"paths.cache_dir={tmp_path / 'cache'}"])


def conv_linear_weights(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """The conv/linear weight tensors of `state` (a state dict of `module`'s architecture)."""
    return {f"{path}.weight": state[f"{path}.weight"] for path, _ in prunable(module)}


def zero_fraction(weights: dict[str, torch.Tensor]) -> tuple[int, int]:
    return sum(int((w == 0).sum()) for w in weights.values()), sum(w.numel() for w in weights.values())


def one_shot_mask(weights: dict[str, torch.Tensor], amount: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning by hand: True where one of the round(amount * N) smallest |w| is."""
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    k = round(amount * flat.numel())
    threshold = flat.kthvalue(k).values
    assert int((flat == threshold).sum()) == 1, "ties in the random weights: pick another seed"
    return {name: w.abs() <= threshold for name, w in weights.items()}


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class CIFAR ResNet-20 teacher (another architecture than the ShapesNet student)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet20.pt"
    torch.save(CifarResNet(20, 4).state_dict(), path)
    return path


# ---------------------------------------------------------------- pruning


@pytest.mark.parametrize("amount", [0.3, 0.77, 0.999])
def test_prune_to_reaches_the_amount_exactly_in_one_or_several_rounds(amount: float) -> None:
    torch.manual_seed(0)
    net = ShapesNet(4)
    original = {k: v.clone() for k, v in conv_linear_weights(net.state_dict(), net).items()}
    layers = prunable(net)
    total = sum(m.weight.numel() for _, m in layers)
    targets = round_targets(amount, 3, total)
    assert targets == sorted(targets) and targets[-1] == round(amount * total)
    assert targets[0] == round((1 - (1 - amount) ** (1 / 3)) * total)
    previous: dict[str, torch.Tensor] = {}
    for target in targets:
        prune_to(layers, target)
        zeros = {f"{p}.weight": m.weight == 0 for p, m in layers}
        assert sum(int(z.sum()) for z in zeros.values()) == target
        for name, z in previous.items():  # pruned weights stay pruned
            assert bool(z[~zeros[name]].sum() == 0)
        previous = zeros
    # iterative pruning without training in between is one-shot global magnitude pruning
    expected = one_shot_mask(original, amount)
    for name, z in previous.items():
        assert torch.equal(z, expected[name]), name


def test_prune_task_saves_a_loadable_exactly_sparse_model_and_keeps_masks_while_fine_tuning(
        tmp_path: Path, random_shapesnet: Path) -> None:
    run = tmp_path / "run"
    out = run_script("train.py", "task=prune", f"weights={random_shapesnet}", "task.amount=0.6", "task.rounds=1",
                     "task.finetune_epochs=1", "task.lr=0.05", "callbacks=none", *TINY, f"hydra.run.dir={run}")
    path = run / "model.pt"
    assert f"weights: {path}  (use weights={path})" in out and out.strip().endswith(str(run))

    net = ShapesNet(4)
    state = load_state_dict_file(path)
    assert set(state) == set(net.state_dict())  # a plain state dict: no weight_orig / weight_mask
    weights = conv_linear_weights(state, net)
    zeros, total = zero_fraction(weights)
    assert zeros == round(0.6 * total)
    # masks kept while fine-tuning: the zeros are exactly the one-shot pruned weights of the original
    original = conv_linear_weights(load_state_dict_file(random_shapesnet), net)
    expected = one_shot_mask(original, 0.6)
    for name, w in weights.items():
        assert torch.equal(w == 0, expected[name]), name
    changed = [not torch.equal(w[w != 0], original[name][w != 0]) for name, w in weights.items()]
    assert all(changed), "fine-tuning did not change the kept weights"

    table = pd.read_csv(run / "sparsity.csv")
    assert list(table.layer) == ["conv1.0", "conv2.0", "conv3.0", "conv4.0", "fc", "all"]
    assert list(table.name)[-2] == "fc"
    assert (table.zeros.iloc[-1], table.weights.iloc[-1]) == (zeros, total)
    assert math.isclose(table.sparsity.iloc[-1], zeros / total)
    for row in table.iloc[:-1].itertuples():
        w = weights[f"{row.layer}.weight"]
        assert (row.zeros, row.weights) == (int((w == 0).sum()), w.numel())
    assert f"sparsity {zeros / total:.4f}" in out

    # weights=<model.pt> loads it everywhere (zoo, train/evaluate configs, analysis.compare), sparsity intact
    zoo = get_model("shapesnet", weights=str(path), num_classes=4, input_size=(3, SIZE, SIZE))
    assert zero_fraction(conv_linear_weights(zoo.module.state_dict(), zoo.module)) == (zeros, total)
    cfg = compose_config("evaluate", [*TINY[:5], f"analysis.compare=[{{name: original, model: shapesnet, weights: "
                                      f"{random_shapesnet}}}, {{name: pruned, model: shapesnet, weights: {path}}}]",
                          "analysis=layerwise"])
    dm = ShapesDataModule(image_size=SIZE, num_train=32, num_val=16, num_test=16)
    models = dict(compared_models(cfg, dm))
    assert list(models) == ["original", "pruned"]
    pruned = models["pruned"].module
    assert zero_fraction(conv_linear_weights(pruned.state_dict(), pruned)) == (zeros, total)


def test_iterative_rounds_reach_the_same_final_amount(tmp_path: Path, random_shapesnet: Path) -> None:
    metrics = run_task(compose_train(tmp_path, "task=prune", f"weights={random_shapesnet}", "task.amount=0.9",
                                     "task.rounds=3", "task.finetune_epochs=1", "callbacks=none"))
    net = ShapesNet(4)
    zeros, total = zero_fraction(conv_linear_weights(load_state_dict_file(tmp_path / "model.pt"), net))
    assert zeros == round(0.9 * total) and math.isclose(metrics["sparsity"], zeros / total)
    assert 0 <= metrics["test/acc"] <= 1
    logged = pd.read_csv(next((tmp_path / "csv").glob("version_*/metrics.csv")))
    per_epoch = logged.dropna(subset=["prune/sparsity"])["prune/sparsity"].tolist()
    assert per_epoch == pytest.approx([t / total for t in round_targets(0.9, 3, total)])
    assert logged["sparsity"].dropna().tolist() == pytest.approx([zeros / total])


def test_iterative_rounds_without_fine_tuning_are_one_shot(tmp_path: Path, random_shapesnet: Path) -> None:
    run_task(compose_train(tmp_path, "task=prune", f"weights={random_shapesnet}", "task.amount=0.5", "task.rounds=4",
                           "task.finetune_epochs=0", "callbacks=none"))
    net = ShapesNet(4)
    weights = conv_linear_weights(load_state_dict_file(tmp_path / "model.pt"), net)
    original = conv_linear_weights(load_state_dict_file(random_shapesnet), net)
    expected = one_shot_mask(original, 0.5)
    for name, w in weights.items():
        assert torch.equal(w == 0, expected[name]) and torch.equal(w[w != 0], original[name][w != 0])


@pytest.mark.parametrize(("override", "message"), [
    ("task.amount=0", r"task.amount .* in \(0, 1\); got 0"),
    ("task.amount=1", r"task.amount .* in \(0, 1\); got 1"),
    ("task.amount=1.5", r"in \(0, 1\); got 1.5"),
    ("task.amount=half", r"in \(0, 1\); got 'half'"),
    ("task.rounds=0", "task.rounds must be an integer >= 1"),
    ("task.finetune_epochs=-1", "task.finetune_epochs must be an integer >= 0"),
])
def test_prune_rejects_bad_settings(tmp_path: Path, random_shapesnet: Path, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_task(compose_train(tmp_path, "task=prune", f"weights={random_shapesnet}", override))


def test_prune_needs_trained_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"weights=none means an untrained shapesnet: pass weights=<path to its "
                                         r"model.pt> \(train one with: python train.py task=classifier"):
        run_task(compose_train(tmp_path, "task=prune", "weights=none"))
    with pytest.raises(ValueError, match="untrained vgg16"):  # vgg16's default weights are none
        run_task(compose_train(tmp_path, "task=prune", "model=vgg16"))


# ---------------------------------------------------------------- distillation


def test_distillation_loss_is_t2_kl_at_alpha_one_and_ce_at_alpha_zero() -> None:
    torch.manual_seed(0)
    teacher, student = ShapesNet(4), ShapesNet(4)
    with torch.no_grad():  # logits far apart, so that the direction of the KL matters
        student.fc.weight.mul_(40)
        teacher.fc.weight.mul_(-40)
    module = DistillModule(student, 4, alpha=1.0, temperature=3.0).set_teacher(teacher)
    assert (module.hparams.alpha, module.hparams.temperature) == (1.0, 3.0) and "teacher" not in module.hparams
    images, labels = torch.randn(8, 3, SIZE, SIZE), torch.randint(0, 4, (8,))
    _, loss, kd, ce = module.loss(images, labels)
    with torch.no_grad():
        t, s = teacher.eval()(images), student(images)
    p_t, p_s = (t.double() / 3).softmax(1), (s.double() / 3).softmax(1)
    by_hand = 9 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    reverse = 9 * (p_s * (p_s.log() - p_t.log())).sum(1).mean()
    assert float(by_hand) > 0.1 and float(reverse) != pytest.approx(float(by_hand), rel=0.05)
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-4) and float(kd) == pytest.approx(float(by_hand), rel=1e-4)
    assert float(ce) == pytest.approx(float(F.cross_entropy(s, labels)), rel=1e-5)
    loss0, _, ce0 = distillation_loss(s, t, labels, alpha=0.0, temperature=3.0)
    assert float(loss0) == pytest.approx(float(ce0))
    mixed, kd_m, ce_m = distillation_loss(s, t, labels, alpha=0.25, temperature=3.0)
    assert float(mixed) == pytest.approx(0.25 * float(kd_m) + 0.75 * float(ce_m))
    assert float(distillation_loss(t, t, labels, 1.0, 3.0)[0]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"task.alpha .* in \[0, 1\]"):
        DistillModule(student, 4, alpha=1.5)
    with pytest.raises(ValueError, match="task.temperature must be > 0"):
        DistillModule(student, 4, temperature=0)


def test_the_teacher_stays_frozen_and_outside_the_module() -> None:
    torch.manual_seed(0)
    teacher, student = CifarResNet(20, 4), ShapesNet(4).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # includes batch-norm running statistics
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    module = DistillModule(student, 4, lr=1e-2).set_teacher(teacher)
    assert not any(p is q for p in module.parameters() for q in teacher.parameters())
    assert not any(k.startswith("teacher") for k in module.state_dict())
    dm = ShapesDataModule(image_size=SIZE, num_train=32, num_val=16, num_test=16, batch_size=16)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not torch.equal(student.state_dict()["conv1.1.running_mean"], student_before["conv1.1.running_mean"])
    assert {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} == {id(p) for p in student.parameters()}


def test_distill_task_saves_only_the_student(tmp_path: Path, resnet_file: Path) -> None:
    metrics = run_task(compose_train(tmp_path, "task=distill", "task.teacher.model=resnet20",
                                     f"task.teacher.weights={resnet_file}", "trainer.max_epochs=1"))
    assert {"test/loss", "test/acc", "test/kd", "test/ce"} <= set(metrics)
    student = ShapesNet(4).state_dict()
    state = load_state_dict_file(tmp_path / "model.pt")
    assert set(state) == set(student) and all(state[k].shape == v.shape for k, v in student.items())
    assert get_model("shapesnet", weights=str(tmp_path / "model.pt"), num_classes=4).num_classes == 4
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    teacher_keys = set(CifarResNet(20, 4).state_dict())
    teacher_only = teacher_keys - set(student)  # both have fc.weight and fc.bias
    assert len(teacher_only) > 50
    model_keys = {k.removeprefix("model.") for k in ckpt["state_dict"] if k.startswith("model.")}
    assert model_keys == set(student)
    assert not any(k.split(".", 1)[-1] in teacher_only or "teacher" in k for k in ckpt["state_dict"])
    logged = pd.read_csv(next((tmp_path / "csv").glob("version_*/metrics.csv")))
    assert {"val/loss", "val/acc", "val/kd", "val/ce", "train/acc", "test/acc"} <= set(logged.columns)
    assert load_state_dict_file(resnet_file).keys() == teacher_keys


def test_distill_rejects_an_untrained_teacher_class_mismatch_and_image_size(tmp_path: Path, random_shapesnet: Path) -> None:
    def distil(*overrides: str) -> None:
        run_task(compose_train(tmp_path, "task=distill", *overrides))

    with pytest.raises(ValueError, match=r"the teacher must be a trained classifier, but task.teacher.weights=none.*"
                                         r"pass task.teacher.weights=<path"):
        distil("task.teacher.weights=none")
    with pytest.raises(ValueError, match="untrained vgg16"):
        distil("task.teacher.model=vgg16", "task.teacher.weights=default")
    with pytest.raises(ValueError, match=r"the teacher \(shapesnet\) has 3 classes but the student \(shapesnet\) has 4"):
        three = tmp_path / "three.pt"
        torch.save(ShapesNet(3).state_dict(), three)
        distil(f"task.teacher.weights={three}", "task.teacher.num_classes=3")
    with pytest.raises(ValueError, match="Are the teacher's weights for 4 classes"):
        distil(f"task.teacher.weights={three}")
    with pytest.raises(ValueError, match="the student alexnet does not accept the data's 32x32 images"):
        distil(f"task.teacher.weights={random_shapesnet}", "model=alexnet")


# ---------------------------------------------------------------- the classifier over epochs


def test_classifier_keeps_the_weights_of_every_epoch(tmp_path: Path) -> None:
    run_task(compose_train(tmp_path, "task=classifier", "weights=none", "task.save_every_epoch=true",
                           "trainer.max_epochs=2", "callbacks=none"))
    files = sorted(p.name for p in (tmp_path / "epochs").glob("*.pt"))
    assert files == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt"]
    states = [load_state_dict_file(tmp_path / "epochs" / f) for f in files]
    final = load_state_dict_file(tmp_path / "model.pt")
    assert all(torch.equal(final[k], states[2][k]) for k in final)
    assert not torch.equal(states[0]["fc.weight"], states[1]["fc.weight"])
    assert not torch.equal(states[1]["fc.weight"], states[2]["fc.weight"])
    # trained in training mode: the batch norms' running statistics moved off their initial values
    assert torch.equal(states[0]["conv1.1.running_mean"], torch.zeros(16))
    assert not torch.equal(states[1]["conv1.1.running_mean"], torch.zeros(16))
    for f in files:
        get_model("shapesnet", weights=str(tmp_path / "epochs" / f), num_classes=4)
