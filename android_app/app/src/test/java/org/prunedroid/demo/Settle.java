package org.prunedroid.demo;

import static org.robolectric.Shadows.shadowOf;

import android.os.Looper;

import java.io.File;
import java.util.function.BooleanSupplier;

/** What the Activity tests share: waiting for the app's worker threads, and where results go to the Python side. */
final class Settle {
    private Settle() {
    }

    /** Runs what background threads posted to the UI thread until `done` holds (10 s at most, then fails). */
    static void until(BooleanSupplier done, String what) {
        long deadline = System.nanoTime() + 10_000_000_000L;
        while (true) {
            shadowOf(Looper.getMainLooper()).idle();
            if (done.getAsBoolean()) {
                return;
            }
            if (System.nanoTime() > deadline) {
                throw new AssertionError("timed out waiting for " + what);
            }
            Thread.yield();
        }
    }

    /** The folder tests/test_android.py reads the app's own output from (system property prunedroid.out), or null
     * where the tests run on their own. */
    static File out() {
        String folder = System.getProperty("prunedroid.out");
        return folder == null ? null : new File(folder);
    }
}
