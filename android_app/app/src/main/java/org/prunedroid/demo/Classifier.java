package org.prunedroid.demo;

import android.content.Context;
import android.graphics.Bitmap;
import android.os.SystemClock;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The exported model with its preprocessing. Everything the Python side decided - which file runs on which runtime,
 * input size, mean and std, class names - is read from the files `invoke build-apk` staged as assets, never typed in
 * here.
 */
final class Classifier {
    static final String SIDECAR_ASSET = "model.json";
    static final String LABELS_ASSET = "labels.txt";

    final Runner runner;
    final String[] labels;
    final float[] mean;
    final float[] std;
    final long[] shape;
    /** What runs, for the screen: e.g. "executorch-android 1.5.1, int8". */
    final String description;

    /** A prediction: the top classes, their probabilities, and the forward pass alone in milliseconds. */
    static final class Result {
        final List<String> classes = new ArrayList<>();
        final List<Float> probabilities = new ArrayList<>();
        double inferenceMs;
    }

    Classifier(Runner runner, JSONObject sidecar, String[] labels, String description) throws JSONException {
        this.runner = runner;
        this.labels = labels;
        this.mean = floats(sidecar.getJSONArray("mean"));
        this.std = floats(sidecar.getJSONArray("std"));
        this.shape = inputShape(sidecar);
        this.description = description;
    }

    /** The model's input shape, {1, 3, height, width}, as the sidecar records it. */
    static long[] inputShape(JSONObject sidecar) throws JSONException {
        JSONArray values = sidecar.getJSONArray("input_shape");
        long[] shape = new long[values.length()];
        for (int i = 0; i < shape.length; i++) {
            shape[i] = values.getLong(i);
        }
        return shape;
    }

    /** Loads the staged model, sidecar and labels; slow (file copy, model load), so never on the UI thread. */
    static Classifier fromAssets(Context context) throws IOException, JSONException {
        JSONObject sidecar = new JSONObject(readAsset(context, SIDECAR_ASSET));
        String[] labels = readAsset(context, LABELS_ASSET).trim().split("\n");
        JSONObject staged = sidecar.getJSONObject("app_model");  // which file runs, written by `invoke build-apk`
        String file = staged.getString("file");
        // Named by the model's hash, so an app update with a new model never reads the old copy.
        String copy = "model-" + staged.getString("sha256").substring(0, 16) + file.substring(file.lastIndexOf('.'));
        String path = assetFilePath(context, file, copy, staged.getString("sha256"));
        String description = Runner.runtime() + ", " + staged.getString("precision");
        return new Classifier(Runner.open(path, 0), sidecar, labels, description);
    }

    /** CHW floats of `bitmap` resized to the model's input: RGB, (pixel / 255 - mean) / std, as in training. */
    float[] pixels(Bitmap bitmap) {
        int height = (int) shape[2];
        int width = (int) shape[3];
        int[] argb = new int[width * height];
        Bitmap.createScaledBitmap(bitmap, width, height, true).getPixels(argb, 0, width, 0, 0, width, height);
        float[] chw = new float[3 * width * height];
        for (int i = 0; i < argb.length; i++) {
            for (int channel = 0; channel < 3; channel++) {
                int value = (argb[i] >> (16 - 8 * channel)) & 0xff;  // R, G, B
                chw[channel * argb.length + i] = (value / 255f - mean[channel]) / std[channel];
            }
        }
        return chw;
    }

    /** The top `k` classes of `bitmap`, with the forward pass alone timed. */
    Result classify(Bitmap bitmap, int k) {
        float[] input = pixels(bitmap);
        long started = SystemClock.elapsedRealtimeNanos();
        float[] logits = runner.forward(input, shape);
        Result result = new Result();
        result.inferenceMs = (SystemClock.elapsedRealtimeNanos() - started) / 1e6;
        float[] probabilities = softmax(logits);
        boolean[] taken = new boolean[probabilities.length];
        for (int rank = 0; rank < Math.min(k, probabilities.length); rank++) {
            int best = -1;
            for (int i = 0; i < probabilities.length; i++) {
                if (!taken[i] && (best < 0 || probabilities[i] > probabilities[best])) {
                    best = i;
                }
            }
            taken[best] = true;
            result.classes.add(best < labels.length ? labels[best] : "class " + best);
            result.probabilities.add(probabilities[best]);
        }
        return result;
    }

    static float[] softmax(float[] logits) {
        float max = Float.NEGATIVE_INFINITY;
        for (float logit : logits) {
            max = Math.max(max, logit);
        }
        double sum = 0;
        float[] out = new float[logits.length];
        for (int i = 0; i < logits.length; i++) {
            out[i] = (float) Math.exp(logits[i] - max);
            sum += out[i];
        }
        for (int i = 0; i < out.length; i++) {
            out[i] /= (float) sum;
        }
        return out;
    }

    private static float[] floats(JSONArray array) throws JSONException {
        float[] values = new float[array.length()];
        for (int i = 0; i < values.length; i++) {
            values[i] = (float) array.getDouble(i);
        }
        return values;
    }

    static String readAsset(Context context, String name) throws IOException {
        StringBuilder text = new StringBuilder();
        try (BufferedReader reader = new BufferedReader(
                new InputStreamReader(context.getAssets().open(name), StandardCharsets.UTF_8))) {
            String line;
            while ((line = reader.readLine()) != null) {
                text.append(line).append('\n');
            }
        }
        return text.toString();
    }

    /** The runtimes read a file path, not an asset stream: the asset copied into app storage, checked against the
     * sidecar's SHA-256 (ModelCopy). */
    static String assetFilePath(Context context, String asset, String copy, String sha256) throws IOException {
        return ModelCopy.of(() -> context.getAssets().open(asset), context.getFilesDir(), copy, sha256)
                .getAbsolutePath();
    }
}
