package org.prunedroid.demo;

/** The lite flavor's runtime: a .ptl TorchScript file on PyTorch Mobile's lite interpreter. */
final class FlavorRunner implements Runner {
    static final String EXTENSION = ".ptl";
    static final String RUNTIME = "pytorch_android_lite " + BuildConfig.PYTORCH_LITE_VERSION;

    private final org.pytorch.Module module;

    FlavorRunner(String path, int threads) {
        if (threads > 0) {
            // The lite AAR's own PyTorchAndroid: it loads libpytorch_jni_lite (the full AAR's loads libpytorch_jni).
            org.pytorch.PyTorchAndroid.setNumThreads(threads);
        }
        module = org.pytorch.LiteModuleLoader.load(path);
    }

    @Override
    public float[] forward(float[] chw, long[] shape) {
        org.pytorch.Tensor input = org.pytorch.Tensor.fromBlob(chw, shape);
        return module.forward(org.pytorch.IValue.from(input)).toTensor().getDataAsFloatArray();
    }

    @Override
    public void close() {
        module.destroy();
    }
}
