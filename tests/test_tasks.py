"""The command line as a user meets it: help text, one-line errors with exit code 2, and `invoke test`'s exit 5."""
import dataclasses

from conftest import run_invoke

from pipeline.train import TrainConfig, make_config, train


def test_train_help_documents_every_option():
    result = run_invoke("train", "--help")
    assert result.returncode == 0
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name.replace('_', '-')}=" in result.stdout, field.name
    assert "--resume" in result.stdout and "--preset" in result.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path, cifar_dir):
    missing = run_invoke("evaluate", "--checkpoint", str(tmp_path / "nope.pt"))
    assert missing.returncode == 2 and "error: checkpoint not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_lr = run_invoke("train", "--preset", "smoke", "--lr", "-1", "--data-dir", str(cifar_dir),
                        "--out", str(tmp_path))
    assert bad_lr.returncode == 2 and "lr must be > 0" in bad_lr.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_evaluate_reports_top1_and_cost(tmp_path, cifar_dir, synthetic_data):
    train(make_config("smoke", {"epochs": "1", "train_limit": "256", "test_limit": "100"}), synthetic_data, tmp_path,
          progress=False)
    result = run_invoke("evaluate", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--data-dir", str(cifar_dir),
                    "--test-limit", "300")
    assert result.returncode == 0, result.stderr
    assert "test top-1" in result.stdout and "on 300 images" in result.stdout and "M MACs" in result.stdout


def test_no_tests_collected_is_a_failure():
    result = run_invoke("test", "--args", "-k no_test_has_this_name_zz")
    assert result.returncode == 5 and "pytest collected no tests" in result.stderr
