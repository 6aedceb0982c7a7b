package org.prunedroid.demo;

import java.util.function.BiFunction;

/**
 * One forward pass on the runtime this build ships (its product flavor's FlavorRunner): ExecuTorch for .pte files
 * in the executorch flavor, PyTorch Mobile's lite interpreter for .ptl files in the lite one. Both take the same
 * (1, 3, H, W) float input, so preprocessing is written once (Classifier).
 */
interface Runner {
    /** Logits for one image given as CHW floats with `shape` {1, 3, H, W}. */
    float[] forward(float[] chw, long[] shape);

    void close();

    /** Opens `path` on this build's runtime; `threads` 0 lets the runtime choose. A file for the other runtime is
     * refused with what to build instead. */
    static Runner open(String path, int threads) {
        if (!path.endsWith(FlavorRunner.EXTENSION)) {
            throw new IllegalArgumentException("this build runs " + FlavorRunner.EXTENSION + " files on "
                    + FlavorRunner.RUNTIME + ", not " + path + ": build the app for that file (invoke build-apk "
                    + "--runtime executorch for .pte, lite for .ptl)");
        }
        return Opener.open.apply(path, threads);
    }

    /** What open() builds a runner with: this flavor's FlavorRunner. Tests on the JVM, where no native runtime can
     * load, put a fake here (src/test); the app never changes it. */
    final class Opener {
        static volatile BiFunction<String, Integer, Runner> open = FlavorRunner::new;

        private Opener() {
        }
    }

    /** This build's runtime, as the sidecar and the benchmark results name it. */
    static String runtime() {
        return FlavorRunner.RUNTIME;
    }
}
