"""MobileNetV2 through `invoke pipeline` (depthwise convs carry a group from expansion to projection). A file of its
own so that the test processes (pytest-xdist, a file per process) run it beside ResNet-56's pipeline, not after."""
from test_architectures import run_the_pipeline


def test_mobilenetv2_runs_the_whole_pipeline(tmp_path, cifar_dir):
    """Uniform allocation: the default (sensitivity) measures ~90 pruned models here, some 90 s on 2 cores, and is
    covered for MobileNetV2's groups in test_architectures."""
    run_the_pipeline(tmp_path, cifar_dir, "mobilenetv2", "l1", "--allocation", "uniform", "--round-to", "1")
