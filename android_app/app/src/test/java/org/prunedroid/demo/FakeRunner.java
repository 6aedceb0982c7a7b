package org.prunedroid.demo;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.function.BiFunction;

import org.robolectric.shadows.ShadowSystemClock;

/**
 * A Runner for the JVM, where neither native runtime can load: it records what the app feeds it and answers logits
 * 0, 1, ..., classes - 1, so the last class always wins. Each forward pass takes 2 ms of Robolectric's clock. Opening
 * can be made to fail (a native library that will not load) or to wait (a slow load the activity outlives).
 */
final class FakeRunner implements Runner {
    static final int CLASSES = 10;

    final String path;
    final List<float[]> inputs = new ArrayList<>();
    volatile boolean closed;
    RuntimeException forwardFails;

    private FakeRunner(String path) {
        this.path = path;
    }

    /** Installs an opener that makes FakeRunners into `opened`, after `gate` opens, or throws `failure`. */
    static void install(List<FakeRunner> opened, CountDownLatch gate, Error failure) {
        BiFunction<String, Integer, Runner> opener = (path, threads) -> {
            awaitQuietly(gate);
            if (failure != null) {
                throw failure;
            }
            FakeRunner runner = new FakeRunner(path);
            synchronized (opened) {
                opened.add(runner);
            }
            return runner;
        };
        Runner.Opener.open = opener;
    }

    static void install(List<FakeRunner> opened) {
        install(opened, new CountDownLatch(0), null);
    }

    private static void awaitQuietly(CountDownLatch gate) {
        try {
            if (!gate.await(30, TimeUnit.SECONDS)) {
                throw new IllegalStateException("the test never opened the gate");
            }
        } catch (InterruptedException interrupted) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException(interrupted);
        }
    }

    @Override
    public synchronized float[] forward(float[] chw, long[] shape) {
        if (forwardFails != null) {
            throw forwardFails;
        }
        inputs.add(chw.clone());
        ShadowSystemClock.advanceBy(Duration.ofMillis(2));
        float[] logits = new float[CLASSES];
        for (int i = 0; i < CLASSES; i++) {
            logits[i] = i;
        }
        return logits;
    }

    @Override
    public void close() {
        closed = true;
    }
}
