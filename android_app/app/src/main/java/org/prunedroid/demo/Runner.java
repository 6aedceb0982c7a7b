package org.prunedroid.demo;

/**
 * One forward pass on either runtime the app ships: ExecuTorch for a .pte file, PyTorch Mobile's lite interpreter
 * for a .ptl file. Both take the same (1, 3, H, W) float input, so preprocessing is written once (Classifier).
 */
interface Runner {
    /** Logits for one image given as CHW floats with `shape` {1, 3, H, W}. */
    float[] forward(float[] chw, long[] shape);

    void close();

    /** Opens `path` with the runtime its extension names; `threads` 0 lets the runtime choose. */
    static Runner open(String path, int threads) {
        return path.endsWith(".pte") ? new ExecuTorch(path, threads) : new Lite(path, threads);
    }

    /** The runtime a model file runs on, as the sidecar and the benchmark results name it. */
    static String runtimeOf(String path) {
        return path.endsWith(".pte")
                ? "executorch-android " + BuildConfig.EXECUTORCH_VERSION
                : "pytorch_android_lite " + BuildConfig.PYTORCH_LITE_VERSION;
    }

    final class ExecuTorch implements Runner {
        private final org.pytorch.executorch.Module module;

        ExecuTorch(String path, int threads) {
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

    final class Lite implements Runner {
        private final org.pytorch.Module module;

        Lite(String path, int threads) {
            if (threads > 0) {
                // LitePyTorchAndroid, not PyTorchAndroid: the latter loads libpytorch_jni, which the lite AAR lacks.
                org.pytorch.LitePyTorchAndroid.setNumThreads(threads);
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
}
