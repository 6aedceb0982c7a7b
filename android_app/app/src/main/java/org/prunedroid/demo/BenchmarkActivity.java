package org.prunedroid.demo;

import android.app.Activity;
import android.content.Intent;
import android.os.Build;
import android.os.Bundle;
import android.os.SystemClock;
import android.util.Log;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Locale;

/**
 * Latency of one model for automation: a .pte on ExecuTorch or a .ptl on PyTorch Mobile lite. Started by
 * `invoke bench-device`:
 * <pre>
 * adb shell am start -W -n org.prunedroid.demo/.BenchmarkActivity \
 *     --es model pruned.pte --es sidecar pruned.json --es out pruned --ei warmup 20 --ei runs 100 --ei threads 1
 * </pre>
 * `model` and `sidecar` (the export's JSON, which gives the input shape) are plain file names in the app's files
 * folder, `out` a plain name, the counts bounded (BenchRequest: the shell may send anything). Writes
 * files/bench/&lt;out&gt;.json - latencies in ms, model size, device - and one line to logcat (tag prunedroid-bench),
 * then finishes. A failure writes {"error": ...} to the same file, so the caller never waits for nothing; an `out`
 * that is not a plain name is only logged.
 */
public class BenchmarkActivity extends Activity {
    static final String TAG = "prunedroid-bench";

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        if (savedInstanceState != null) {  // recreated: the first instance's run writes the result, not a second one
            finish();
            return;
        }
        Intent intent = getIntent();
        String model = intent.getStringExtra("model");
        String sidecar = intent.getStringExtra("sidecar");
        String out = intent.hasExtra("out") ? intent.getStringExtra("out") : "bench";
        int warmup = intent.getIntExtra("warmup", 20);
        int runs = intent.getIntExtra("runs", 100);
        int threads = intent.getIntExtra("threads", 1);
        new Thread(() -> {
            JSONObject result;
            try {
                result = run(BenchRequest.of(model, sidecar, out, warmup, runs, threads));
                Log.i(TAG, result.getString("summary"));
            } catch (Throwable error) {  // including a model the runtime cannot read
                result = new JSONObject();
                try {
                    result.put("error", String.valueOf(error));
                } catch (JSONException ignored) {
                    // put() on a fresh object with a string cannot fail
                }
                Log.e(TAG, "benchmark of " + model + " failed", error);
            }
            String name = BenchRequest.resultName(out);
            try {
                if (name == null) {
                    Log.e(TAG, "not writing a result: --es out must be a plain file name, got " + out);
                } else {
                    write(name, result);
                }
            } catch (IOException error) {
                Log.e(TAG, "could not write the result " + name, error);
            }
            runOnUiThread(this::finish);
        }, "benchmark").start();
    }

    private static File readable(File file) {
        if (!file.canRead()) {
            throw new IllegalArgumentException("cannot read " + file);
        }
        return file;
    }

    /** java.nio.file.Files needs API 26; the app runs from API 24. */
    private static String readText(File file) throws IOException {
        try (InputStream in = new FileInputStream(file)) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buffer = new byte[8192];
            int read;
            while ((read = in.read(buffer)) != -1) {
                out.write(buffer, 0, read);
            }
            return out.toString("UTF-8");
        }
    }

    private JSONObject run(BenchRequest request) throws JSONException, IOException {
        int warmup = request.warmup;
        int runs = request.runs;
        int threads = request.threads;
        File file = readable(request.modelIn(getFilesDir()));
        long[] shape = Classifier.inputShape(new JSONObject(readText(readable(request.sidecarIn(getFilesDir())))));
        // Latency of a conv net does not depend on pixel values: one fixed image of the model's input shape.
        float[] input = new float[BenchRequest.inputSize(shape)];
        double[] latencies = new double[runs];
        long loadStarted = SystemClock.elapsedRealtimeNanos();
        Runner runner = Runner.open(file.getAbsolutePath(), threads);
        double loadMs = (SystemClock.elapsedRealtimeNanos() - loadStarted) / 1e6;
        try {
            for (int i = 0; i < warmup; i++) {
                runner.forward(input, shape);
            }
            for (int i = 0; i < runs; i++) {
                long started = SystemClock.elapsedRealtimeNanos();
                runner.forward(input, shape);
                latencies[i] = (SystemClock.elapsedRealtimeNanos() - started) / 1e6;
            }
        } finally {
            runner.close();  // a failed forward must not leave the native module open
        }
        double[] sorted = latencies.clone();
        Arrays.sort(sorted);
        JSONObject latency = new JSONObject()
                .put("median", percentile(sorted, 0.5)).put("p90", percentile(sorted, 0.9))
                .put("min", sorted[0]).put("max", sorted[sorted.length - 1]);
        JSONObject device = new JSONObject()
                .put("manufacturer", Build.MANUFACTURER).put("model", Build.MODEL)
                .put("abi", Build.SUPPORTED_ABIS[0]).put("android", Build.VERSION.RELEASE)
                .put("sdk", Build.VERSION.SDK_INT);
        JSONArray all = new JSONArray();
        for (double value : latencies) {
            all.put(value);
        }
        String summary = String.format(Locale.US, "%s: median %.3f ms, p90 %.3f ms over %d runs, %d threads, %s %s",
                file.getName(), percentile(sorted, 0.5), percentile(sorted, 0.9), runs, threads, Build.MANUFACTURER,
                Build.MODEL);
        return new JSONObject()
                .put("model", file.getName()).put("model_bytes", file.length()).put("load_ms", loadMs)
                .put("runs", runs).put("warmup", warmup).put("threads", threads).put("latency_ms", latency)
                .put("latencies_ms", all).put("device", device)
                .put("runtime", Runner.runtime())
                .put("summary", summary);
    }

    /** Linear interpolation between closest ranks, as numpy.percentile does by default. */
    static double percentile(double[] sorted, double q) {
        double position = q * (sorted.length - 1);
        int below = (int) Math.floor(position);
        int above = Math.min(below + 1, sorted.length - 1);
        return sorted[below] + (position - below) * (sorted[above] - sorted[below]);
    }

    /** Written to a temporary name and renamed, so a reader never sees half a result. */
    private void write(String name, JSONObject result) throws IOException {
        File folder = new File(getFilesDir(), "bench");
        if (!folder.isDirectory() && !folder.mkdirs()) {
            throw new IOException("cannot create " + folder);
        }
        File partial = new File(folder, name + ".json.partial");
        try (OutputStream stream = new FileOutputStream(partial)) {
            stream.write(result.toString().getBytes(StandardCharsets.UTF_8));
        }
        if (!partial.renameTo(new File(folder, name + ".json"))) {
            throw new IOException("could not rename " + partial);
        }
    }
}
