from pathlib import Path

import pytest
import torch
from conftest import run_invoke

from prunedroid.errors import PrunedroidError
from prunedroid.files import atomic_path
from prunedroid.models import build_model, vgg16_spec
from prunedroid.training.checkpoint import KIND, Checkpoint


def test_round_trip_is_plain_data(tmp_path):
    spec = vgg16_spec(0.0625)
    model = build_model(spec)
    path = tmp_path / "c.pt"
    Checkpoint(arch=spec.to_dict(), state_dict=model.state_dict(), recipe={"lr": 0.1},
               metrics={"test": {"top1": 0.5}}, seed=3).save(path)
    raw = torch.load(path, weights_only=True)  # no pickled classes: loads under the safe loader
    assert raw["kind"] == KIND and raw["versions"]["torch"] == torch.__version__
    restored = Checkpoint.load(path).model()
    x = torch.randn(2, 3, 32, 32)
    model.eval(), restored.eval()
    assert torch.equal(model(x), restored(x))


def test_missing_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(PrunedroidError, match="checkpoint not found.*invoke train"):
        Checkpoint.load(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(PrunedroidError, match="corrupt.pt is not a readable checkpoint"):
        Checkpoint.load(corrupt)
    truncated = tmp_path / "truncated.pt"
    Checkpoint(arch=vgg16_spec(0.0625).to_dict(),
               state_dict=build_model(vgg16_spec(0.0625)).state_dict()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(PrunedroidError, match="not a readable checkpoint"):
        Checkpoint.load(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(3)}, foreign)
    with pytest.raises(PrunedroidError, match="not a prunedroid checkpoint"):
        Checkpoint.load(foreign)


def test_mismatched_weights_are_a_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    Checkpoint(arch=vgg16_spec(0.125).to_dict(), state_dict=build_model(vgg16_spec(0.0625)).state_dict()).save(path)
    with pytest.raises(PrunedroidError, match="do not match its architecture"):
        Checkpoint.load(path).model()


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "artifact.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact.bin"]


def _tampered(tmp_path, **arch_changes) -> Path:
    """A real small checkpoint whose architecture description was edited afterwards."""
    spec = vgg16_spec(0.0625)
    path = tmp_path / "tampered.pt"
    Checkpoint(arch={**spec.to_dict(), **arch_changes}, state_dict=build_model(spec).state_dict()).save(path)
    return path


@pytest.mark.parametrize("changes, message", [
    ({"conv_channels": [10 ** 9] * 13}, "channel counts must be in 1..16,384"),
    ({"hidden": 10 ** 9}, "channel counts must be in"),
    ({"conv_channels": [4] * 100_000}, "need 1..64 conv layers"),
    ({"conv_channels": [4.5] * 13}, "whole numbers"),
    ({"pool_after": [1, 3]}, "cannot classify 32x32 images"),
    ({"conv_channels": [8] * 13}, "do not match its architecture"),
    ({"num_classes": 0}, "channel counts must be in"),
])
def test_tampered_architecture_fails_before_allocating(tmp_path, monkeypatch, changes, message):
    """No real module may be built from a description that is not checked against the weights (a 10^9-channel
    conv would ask for ~108 GB)."""
    import prunedroid.training.checkpoint as checkpoint_module

    def no_real_build(spec):
        raise AssertionError(f"a real model was built before the description was checked: {spec}")

    monkeypatch.setattr(checkpoint_module, "build_model", no_real_build)
    with pytest.raises(PrunedroidError, match=message):
        Checkpoint.load(_tampered(tmp_path, **changes)).model()


def test_tampered_checkpoint_is_one_line_from_evaluate(tmp_path):
    result = run_invoke("evaluate", "--checkpoint", str(_tampered(tmp_path, conv_channels=[10 ** 9] * 13)),
                        timeout=60)
    assert result.returncode == 2 and "error: channel counts must be in" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_locked_run_folder_refuses_a_second_writer(tmp_path, synthetic_data):
    """Two processes writing one run folder: the second is refused at once and the first's files are untouched.
    flock conflicts between two open descriptors even in one process, so the holder here stands for the other one."""
    from prunedroid.files import folder_lock
    from prunedroid.training.train import CHECKPOINT_NAME, make_config, train

    config = make_config("smoke", {"train_limit": "256", "test_limit": "100", "epochs": "1"})
    with folder_lock(tmp_path / "run"):
        with pytest.raises(PrunedroidError, match="being written by another prunedroid process"):
            train(config, synthetic_data, tmp_path / "run", progress=False)
        assert list((tmp_path / "run").iterdir()) == []
    train(config, synthetic_data, tmp_path / "run", progress=False)  # released: the folder is free again
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT_NAME]


def test_artifacts_are_readable_by_others_as_plain_files_are(tmp_path):
    """atomic_path's files get the umask's permissions (0o644 under 022), not a temp file's 0o600."""
    import os

    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "shared.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644
