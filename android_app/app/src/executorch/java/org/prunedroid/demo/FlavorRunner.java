package org.prunedroid.demo;

/** The executorch flavor's runtime: a .pte program on ExecuTorch (XNNPACK). */
final class FlavorRunner implements Runner {
    static final String EXTENSION = ".pte";
    static final String RUNTIME = "executorch-android " + BuildConfig.EXECUTORCH_VERSION;

    private final org.pytorch.executorch.Module module;

    FlavorRunner(String path, int threads) {
        module = org.pytorch.executorch.Module.load(path, org.pytorch.executorch.Module.LOAD_MODE_MMAP, threads);
    }

    @Override
    public float[] forward(float[] chw, long[] shape) {
        org.pytorch.executorch.Tensor input = org.pytorch.executorch.Tensor.fromBlob(chw, shape);
        return module.forward(org.pytorch.executorch.EValue.from(input))[0].toTensor().getDataAsFloatArray();
    }

    @Override
    public void close() {
        module.destroy();
    }
}
