import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, project_env

from prunedroid import data as cifar
from prunedroid.errors import PrunedroidError
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import (
    CHECKPOINT_NAME,
    PRESETS,
    evaluate,
    lr_at,
    make_config,
    remeasure_batchnorm,
    train,
    training_loss,
)
from tests.test_prune import SMALL, conv_blocks, trained_like


def test_schedules_warm_up_then_decay_to_zero():
    for schedule in ("cosine", "onecycle"):
        rates = [lr_at(step, 100, 10, 0.2, schedule) for step in range(100)]
        assert rates[9] == pytest.approx(0.2)  # peak at the end of warm-up
        assert all(a < b for a, b in zip(rates[:9], rates[1:10]))
        assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
        assert rates[-1] < 0.01
    assert lr_at(55, 100, 10, 0.2, "cosine") == pytest.approx(0.1)  # half-way through the decay
    assert lr_at(55, 100, 10, 0.2, "onecycle") == pytest.approx(0.1)


def test_presets_and_overrides():
    assert make_config("quick") == PRESETS["quick"]
    config = make_config("smoke", {"epochs": "3", "lr": "0.5", "channels_last": "no", "train_limit": "none",
                                   "width": None})
    assert (config.epochs, config.lr, config.channels_last, config.train_limit) == (3, 0.5, False, None)
    assert config.width == PRESETS["smoke"].width
    assert PRESETS["paper"].width == 1.0 and PRESETS["quick"].width < 1.0


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": "ten"}, "`epochs` expects int"), ({"lr": "-1"}, "lr must be > 0"),
    ({"schedule": "step"}, "schedule must be one of"), ({"nesterov": "maybe"}, "`nesterov` expects bool"),
    ({"bogus": "1"}, "unknown training option"),
])
def test_bad_options_are_clear_errors(overrides, message):
    with pytest.raises(PrunedroidError, match=message):
        make_config("smoke", overrides)
    with pytest.raises(PrunedroidError, match="unknown preset"):
        make_config("huge")


def test_smoke_training_writes_a_complete_checkpoint(synthetic_data, tmp_path):
    config = make_config("smoke", {"train_limit": "256", "test_limit": "200", "epochs": "1"})
    result = train(config, synthetic_data, tmp_path, progress=False)
    checkpoint = Checkpoint.load(tmp_path / CHECKPOINT_NAME)
    assert checkpoint.epoch == 1 and checkpoint.recipe["train_limit"] == 256
    assert checkpoint.metrics["test"]["images"] == 200
    assert checkpoint.metrics == result.metrics
    assert checkpoint.cost["macs"] > 0 and checkpoint.data["classes"][0] == "airplane"
    assert checkpoint.history[0]["holdout_top1"] >= 0
    scored = evaluate(checkpoint.model(), synthetic_data.test.head(200), per_image=True)
    assert scored["correct"].shape == (200,) and scored["correct"].float().mean().item() == pytest.approx(
        checkpoint.metrics["test"]["top1"])
    with pytest.raises(PrunedroidError, match="already exists; pass --resume"):
        train(config, synthetic_data, tmp_path, progress=False)
    with pytest.raises(PrunedroidError, match=r"cannot resume .*lr: checkpoint 0.05 vs now 0.1"):
        train(make_config("smoke", {"train_limit": "256", "test_limit": "200", "epochs": "1", "lr": "0.1"}),
              synthetic_data, tmp_path, resume=True, progress=False)
    # a fine-tune trains the model it starts from, and its recipe says so, whatever the preset's width
    wider = make_config("smoke", {"train_limit": "256", "test_limit": "200", "epochs": "1", "width": "0.5"})
    finetuned = train(wider, synthetic_data, tmp_path / "finetuned", progress=False, init=checkpoint)
    assert finetuned.recipe["width"] == config.width != wider.width
    assert finetuned.arch == checkpoint.arch


def _invoke_train(out: Path, cifar_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "invoke", "train", "--preset", "smoke", "--epochs", "4", "--threads", "1",
            "--out", str(out), "--data-dir", str(cifar_dir), *extra]


def test_killed_training_resumes_to_the_same_result(cifar_dir, tmp_path):
    """Kill -9 mid-run, then --resume: the final weights equal an uninterrupted run's, bit for bit."""
    env = project_env()
    subprocess.run(_invoke_train(tmp_path / "whole", cifar_dir), cwd=ROOT, env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_invoke_train(killed, cifar_dir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (killed / CHECKPOINT_NAME).exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.1)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = Checkpoint.load(killed / CHECKPOINT_NAME).epoch
    assert process.returncode == -signal.SIGKILL and 1 <= interrupted_at < 4, "the kill did not land mid-run"

    resumed = subprocess.run(_invoke_train(killed, cifar_dir, "--resume"), cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True)
    assert f"resuming {killed / CHECKPOINT_NAME} after epoch {interrupted_at}/4" in resumed.stdout
    whole, again = Checkpoint.load(tmp_path / "whole" / CHECKPOINT_NAME), Checkpoint.load(killed / CHECKPOINT_NAME)
    assert again.epoch == 4
    assert [h["train_loss"] for h in again.history] == [h["train_loss"] for h in whole.history]
    for name, tensor in whole.state_dict.items():
        assert torch.equal(tensor, again.state_dict[name]), name
    assert again.metrics == whole.metrics


def test_remeasured_batchnorm_holds_the_images_statistics_as_they_are_or_as_training_saw_them():
    model = trained_like(SMALL, 2).eval()
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    as_they_are = remeasure_batchnorm(model, images, batch_size=32)
    first_conv_outputs = conv_blocks(model)[0][0](cifar.normalize(images)).detach()
    norm = conv_blocks(as_they_are)[0][1]
    assert torch.allclose(norm.running_mean, first_conv_outputs.mean((0, 2, 3)), atol=1e-5)
    assert torch.equal(conv_blocks(as_they_are)[0][0].weight, conv_blocks(model)[0][0].weight)  # weights kept

    augmented = remeasure_batchnorm(model, images, batch_size=32, augment_seed=3)
    by_hand = remeasure_batchnorm(model, cifar.augment(images, torch.Generator().manual_seed(3)), batch_size=32)
    for name, value in augmented.state_dict().items():
        assert torch.equal(value, by_hand.state_dict()[name]), name
    assert not torch.allclose(conv_blocks(augmented)[0][1].running_var, norm.running_var)


def test_diverging_training_stops_with_advice_and_keeps_no_nan_checkpoint(synthetic_data, tmp_path):
    config = make_config("smoke", {"train_limit": "256", "test_limit": "100", "epochs": "1", "lr": "1e30"})
    with pytest.raises(PrunedroidError, match=r"diverged in epoch 1.*nothing was saved.*Lower --lr \(now 1e\+30\)"):
        train(config, synthetic_data, tmp_path, progress=False)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("overrides, message", [
    ({"lr": "nan"}, "`lr` expects a finite number"), ({"lr": "inf"}, "`lr` expects a finite number"),
    ({"epochs": "-1"}, "epochs must be >= 1"), ({"batch_size": "0"}, "batch_size must be >= 2"),
    ({"momentum": "nan"}, "`momentum` expects a finite number"), ({"holdout": "-5"}, "holdout must be >= 0"),
])
def test_hostile_training_options_are_refused(overrides, message):
    with pytest.raises(PrunedroidError, match=message):
        make_config("quick", overrides)


def test_distillation_loss_is_cross_entropy_at_weight_0_and_pulls_towards_the_teacher():
    generator = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(16, 10, generator=generator), torch.randn(16, 10, generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    plain = make_config("quick")
    cross_entropy = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=plain.label_smoothing)
    assert torch.equal(training_loss(logits, labels, plain, teacher), cross_entropy)
    weighted = dataclasses.replace(plain, distill_weight=0.0, distill_temperature=2.0)
    assert torch.equal(training_loss(logits, labels, weighted, teacher), cross_entropy)
    only_teacher = dataclasses.replace(plain, distill_weight=1.0, distill_temperature=2.0)
    assert training_loss(teacher, labels, only_teacher, teacher).abs() < 1e-6  # matching the teacher costs nothing
    assert training_loss(logits, labels, only_teacher, teacher) > 0.1
    half = dataclasses.replace(plain, distill_weight=0.5, distill_temperature=2.0)
    expected = 0.5 * cross_entropy + 0.5 * training_loss(logits, labels, only_teacher, teacher)
    assert torch.allclose(training_loss(logits, labels, half, teacher), expected)


def test_distilled_fine_tune_records_its_teacher_and_recipe(synthetic_data, tmp_path):
    base = train(make_config("smoke", {"train_limit": "256", "test_limit": "100", "epochs": "1"}), synthetic_data,
                 tmp_path / "base", progress=False)
    config = make_config("smoke", {"train_limit": "256", "test_limit": "100", "distill_weight": "0.7",
                                   "distill_temperature": "3"}, finetune=True)
    with pytest.raises(PrunedroidError, match="needs both a --distill-weight above 0 and a teacher"):
        train(config, synthetic_data, tmp_path / "student", progress=False, init=base)
    student = train(config, synthetic_data, tmp_path / "student", progress=False, init=base,
                    teacher=tmp_path / "base" / CHECKPOINT_NAME)
    assert student.teacher["checkpoint"] == str(tmp_path / "base" / CHECKPOINT_NAME)
    assert student.recipe["distill_weight"] == 0.7 and student.recipe["distill_temperature"] == 3.0
    with pytest.raises(PrunedroidError, match="teacher was given but --distill-weight is 0"):
        train(make_config("smoke"), synthetic_data, tmp_path / "x", teacher=tmp_path / "base" / CHECKPOINT_NAME)


def test_models_with_a_narrow_strided_1x1_convolution_train_without_onednn():
    """oneDNN's channels-last weight gradient of such a convolution writes out of bounds on AVX2-only CPUs (a crash
    or a hang at a random step); the narrow ResNet-56 shortcuts have them, the presets' wider models do not."""
    from prunedroid.models import fresh_arch
    from prunedroid.training.train import onednn_fails_on

    assert onednn_fails_on(fresh_arch("resnet56", 0.0625, 10))  # 1 -> 2 and 2 -> 4 channel shortcuts
    for model, width in (("resnet56", 0.5), ("vgg16", 0.0625), ("mobilenetv2", 0.5), ("resnet56", 1.0)):
        assert not onednn_fails_on(fresh_arch(model, width, 10)), (model, width)
