import hashlib
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_CIFAR_DIR, write_batch, write_cifar_dir

from prunedroid import data as cifar
from prunedroid.errors import PrunedroidError


@pytest.fixture(autouse=True)
def no_project_data(tmp_path, monkeypatch):
    """Hide the project's own data/ folder, which may hold real CIFAR-10, from the lookup."""
    monkeypatch.setattr(cifar, "PROJECT_DATA_DIR", tmp_path / "project-data" / cifar.ARCHIVE_FOLDER)


def test_load_splits_shapes_and_holdout(cifar_dir):
    data = cifar.load_cifar10(cifar_dir, holdout=1000, download=False)
    assert data.train.images.shape == (49_000, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.holdout.images.shape == (1000, 3, 32, 32)
    assert data.test.images.shape == (10_000, 3, 32, 32)
    assert data.train.labels.dtype == torch.int64 and 0 <= data.train.labels.min() <= data.train.labels.max() <= 9
    # The holdout is the tail of data_batch_5, whatever the seed, so every stage agrees on it.
    tail = cifar.read_batch(cifar_dir / "data_batch_5")
    assert torch.equal(data.holdout.images, tail.images[-1000:])
    assert torch.equal(data.holdout.labels, tail.labels[-1000:])


def test_rows_are_rgb_planes(tmp_path):
    write_batch(tmp_path / "b", seed=3)
    with open(tmp_path / "b", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")[b"data"]
    split = cifar.read_batch(tmp_path / "b")
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    assert split.images[7, 1, 2, 5].item() == raw[7, 1024 + 2 * 32 + 5]


def test_missing_batch_names_the_file(cifar_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(cifar_dir, partial)
    (partial / "data_batch_3").unlink()
    with pytest.raises(PrunedroidError, match="lacks data_batch_3") as err:
        cifar.load_cifar10(partial, download=False)
    assert str(partial) in str(err.value) and "--data-dir" in str(err.value)
    with pytest.raises(PrunedroidError, match="data_batch_3"):
        cifar.read_batch(partial / "data_batch_3")


def test_an_explicit_folder_is_used_or_refused_never_replaced(cifar_dir, tmp_path, monkeypatch):
    """A --data-dir missing a batch must not fall through to CIFAR10_DIR (other data), and must not be deleted or
    downloaded over: the user's files stay as they were."""
    monkeypatch.setenv("CIFAR10_DIR", str(cifar_dir))
    partial = tmp_path / "mine"
    shutil.copytree(cifar_dir, partial)
    (partial / "test_batch").unlink()
    (partial / "notes.txt").write_text("mine")
    before = sorted(p.name for p in partial.iterdir())
    for download in (False, True):
        with pytest.raises(PrunedroidError, match=r"mine \(from --data-dir\) lacks test_batch"):
            cifar.load_test(partial, download=download)
    assert sorted(p.name for p in partial.iterdir()) == before
    # CIFAR10_DIR is the user's choice too when no --data-dir is given: refused, not replaced by data/.
    monkeypatch.setenv("CIFAR10_DIR", str(partial))
    with pytest.raises(PrunedroidError, match="from CIFAR10_DIR"):
        cifar.locate_cifar10(download=False)


def test_truncated_batch_is_a_clear_error(cifar_dir, tmp_path):
    truncated = tmp_path / "data_batch_1"
    truncated.write_bytes((cifar_dir / "data_batch_1").read_bytes()[:100_000])
    with pytest.raises(PrunedroidError, match=r"data_batch_1 is not a readable CIFAR-10 batch.*re-download"):
        cifar.read_batch(truncated)


def test_foreign_shapes_and_labels_are_rejected(tmp_path):
    bad_shape = {b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 10}
    bad_labels = {b"data": np.zeros((10_000, 3072), np.uint8), b"labels": [11] * 10_000}
    for name, batch, message in [("shape", bad_shape, "shape"), ("labels", bad_labels, "labels")]:
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=4))
        with pytest.raises(PrunedroidError, match=message):
            cifar.read_batch(tmp_path / name)


class _Planted:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PLANTED_MARKER'], 'w').close()",))


def test_planted_pickle_cannot_run_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    planted = tmp_path / "data_batch_1"
    planted.write_bytes(pickle.dumps({b"data": _Planted(), b"labels": []}, protocol=4))
    with pytest.raises(PrunedroidError, match="refusing to load 'builtins'.'exec'"):
        cifar.read_batch(planted)
    assert not marker.exists()


def test_lookup_order(cifar_dir, tmp_path):
    env = {"CIFAR10_DIR": str(cifar_dir)}
    project_default = tmp_path / "project-data" / cifar.ARCHIVE_FOLDER
    assert cifar.data_folder(tmp_path, env) == (tmp_path, "--data-dir")
    assert cifar.data_folder(None, env) == (cifar_dir, "CIFAR10_DIR")
    assert cifar.data_folder(None, {}) == (project_default, "the project's data folder")
    assert cifar.locate_cifar10(None, download=False, environ=env) == cifar_dir
    with pytest.raises(PrunedroidError, match="not found in"):  # the explicit folder is empty: not CIFAR10_DIR's
        cifar.locate_cifar10(tmp_path / "empty", download=False, environ=env)


def _archive(tmp_path: Path) -> Path:
    """A tar.gz laid out as the official one, holding synthetic batches."""
    source = write_cifar_dir(tmp_path / "src" / cifar.ARCHIVE_FOLDER)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=0) as tar:  # stored: random pixels do not compress
        tar.add(source, arcname=cifar.ARCHIVE_FOLDER)
    return archive


def test_download_verifies_md5_and_unpacks(tmp_path):
    archive = _archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    target = tmp_path / "data" / cifar.ARCHIVE_FOLDER
    with pytest.raises(PrunedroidError, match="download failed.*MD5"):
        cifar.locate_cifar10(target, environ={}, url=archive.as_uri(), md5="0" * 32)
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing half-written left behind
    target.mkdir()  # an empty folder made for the data is downloaded into
    assert cifar.locate_cifar10(target, environ={}, url=archive.as_uri(), md5=md5) == target
    assert not cifar.missing_batches(target)


def test_offline_download_failure_says_how_to_fix(tmp_path):
    with pytest.raises(PrunedroidError, match="download failed.*CIFAR10_DIR.*internet"):
        cifar.locate_cifar10(tmp_path / "x", environ={}, url=(tmp_path / "missing.tar.gz").as_uri())


def test_augment_is_a_crop_and_flip_of_each_image():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = cifar.augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(len(images)):
        candidates = [view[:, dy:dy + 32, dx:dx + 32] for view in (padded[i], padded[i].flip(2))
                      for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_augment_and_batches_are_deterministic(synthetic_data):
    split = synthetic_data.train.head(1000)
    run = lambda seed: [x for x, _ in cifar.batches(split, 128, generator=torch.Generator().manual_seed(seed),
                                                   train=True)]
    first, again, other = run(1), run(1), run(2)
    assert len(first) == 1000 // 128  # the incomplete last batch is dropped in training
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    evaluation = list(cifar.batches(split, 128))
    assert sum(len(y) for _, y in evaluation) == 1000  # evaluation sees every image once, in order
    assert torch.equal(torch.cat([y for _, y in evaluation]), split.labels)


def test_normalize_uses_the_one_mean_and_std():
    pixel = torch.tensor([[[[255]], [[0]], [[128]]]], dtype=torch.uint8)
    out = cifar.normalize(pixel).flatten()
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), cifar.MEAN, cifar.STD)]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)


@pytest.mark.skipif(bool(cifar.missing_batches(REAL_CIFAR_DIR)), reason="real CIFAR-10 not beside the checkout")
def test_real_cifar10_matches_constants():
    data = cifar.load_cifar10(REAL_CIFAR_DIR, holdout=0, download=False)
    pixels = data.train.images.float() / 255
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1)
    assert torch.allclose(mean, torch.tensor(cifar.MEAN), atol=1e-4)
    assert torch.allclose(std, torch.tensor(cifar.STD), atol=1e-4)
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
