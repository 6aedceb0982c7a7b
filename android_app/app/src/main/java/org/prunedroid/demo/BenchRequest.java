package org.prunedroid.demo;

import java.io.File;
import java.util.regex.Pattern;

/**
 * What BenchmarkActivity is asked to do, checked before anything is read or written. The activity can be started by
 * the shell with any extras, so every name must be a plain file name inside the app's files folder (no path, no
 * "..", nothing absolute) and every count must be bounded: a hostile or mistyped extra is refused with a message,
 * never followed out of the folder or allowed to allocate without limit. Plain Java, so it is tested on the JVM.
 */
final class BenchRequest {
    /** Letters, digits and . _ - ; not starting with a dot: the names `invoke bench-device` gives (device.py). */
    static final Pattern NAME = Pattern.compile("[A-Za-z0-9_][A-Za-z0-9._-]{0,99}");
    static final int MAX_RUNS = 100_000;
    static final int MAX_WARMUP = 10_000;
    static final int MAX_THREADS = 64;
    static final long MAX_INPUT = 1L << 24;  // floats in one input: 64 MiB, far above any image model's

    final String model;
    final String sidecar;
    final String out;
    final int warmup;
    final int runs;
    final int threads;

    private BenchRequest(String model, String sidecar, String out, int warmup, int runs, int threads) {
        this.model = model;
        this.sidecar = sidecar;
        this.out = out;
        this.warmup = warmup;
        this.runs = runs;
        this.threads = threads;
    }

    /** The result's name alone, for writing an error when the rest of the request is refused (null if hostile). */
    static String resultName(String out) {
        return out != null && NAME.matcher(out).matches() ? out : null;
    }

    static BenchRequest of(String model, String sidecar, String out, int warmup, int runs, int threads) {
        StringBuilder problems = new StringBuilder();
        for (String[] named : new String[][] {{"model", model}, {"sidecar", sidecar}, {"out", out}}) {
            if (named[1] == null) {
                problems.append("; missing --es ").append(named[0]);
            } else if (!NAME.matcher(named[1]).matches()) {
                problems.append("; --es ").append(named[0])
                        .append(" must be a file name in the app's files folder (letters, digits, . _ -), got ")
                        .append(named[1]);
            }
        }
        if (runs < 1 || runs > MAX_RUNS) {
            problems.append("; --ei runs must be in 1..").append(MAX_RUNS).append(", got ").append(runs);
        }
        if (warmup < 0 || warmup > MAX_WARMUP) {
            problems.append("; --ei warmup must be in 0..").append(MAX_WARMUP).append(", got ").append(warmup);
        }
        if (threads < 1 || threads > MAX_THREADS) {
            problems.append("; --ei threads must be in 1..").append(MAX_THREADS).append(", got ").append(threads);
        }
        if (problems.length() > 0) {
            throw new IllegalArgumentException(problems.substring(2));
        }
        return new BenchRequest(model, sidecar, out, warmup, runs, threads);
    }

    /** Floats in one input of `shape` (the sidecar's input_shape): four positive sizes, at most MAX_INPUT in all. */
    static int inputSize(long[] shape) {
        long size = 1;
        for (long side : shape) {
            if (side < 1 || side > MAX_INPUT) {
                size = MAX_INPUT + 1;
            } else {
                size *= side;  // both factors at most 2^24 here: no overflow
            }
            if (size > MAX_INPUT) {
                break;
            }
        }
        if (shape.length != 4 || size > MAX_INPUT) {
            throw new IllegalArgumentException("the sidecar's input_shape must be four positive sizes of at most "
                    + MAX_INPUT + " floats in all");
        }
        return (int) size;
    }

    File modelIn(File files) {
        return new File(files, model);
    }

    File sidecarIn(File files) {
        return new File(files, sidecar);
    }
}
