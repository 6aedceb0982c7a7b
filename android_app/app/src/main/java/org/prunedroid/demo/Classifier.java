package org.prunedroid.demo;

import android.content.Context;
import android.graphics.Bitmap;
import android.os.SystemClock;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;
import org.pytorch.IValue;
import org.pytorch.LiteModuleLoader;
import org.pytorch.Module;
import org.pytorch.Tensor;
import org.pytorch.torchvision.TensorImageUtils;

import java.io.BufferedReader;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The exported model with its preprocessing. Everything the Python side decided - input size, mean and std, class
 * names - is read from the files `invoke build-apk` staged as assets, never typed in here.
 */
final class Classifier {
    static final String MODEL_ASSET = "model.ptl";
    static final String SIDECAR_ASSET = "model.json";
    static final String LABELS_ASSET = "labels.txt";

    final Module module;
    final String[] labels;
    final float[] mean;
    final float[] std;
    final int width;
    final int height;

    /** A prediction: the top classes, their probabilities, and the forward pass alone in milliseconds. */
    static final class Result {
        final List<String> classes = new ArrayList<>();
        final List<Float> probabilities = new ArrayList<>();
        double inferenceMs;
    }

    Classifier(Module module, JSONObject sidecar, String[] labels) throws JSONException {
        this.module = module;
        this.labels = labels;
        this.mean = floats(sidecar.getJSONArray("mean"));
        this.std = floats(sidecar.getJSONArray("std"));
        JSONArray shape = sidecar.getJSONArray("input_shape");  // [1, 3, height, width]
        this.height = shape.getInt(2);
        this.width = shape.getInt(3);
    }

    /** Loads the staged model, sidecar and labels; slow (file copy, model load), so never on the UI thread. */
    static Classifier fromAssets(Context context) throws IOException, JSONException {
        JSONObject sidecar = new JSONObject(readAsset(context, SIDECAR_ASSET));
        String[] labels = readAsset(context, LABELS_ASSET).trim().split("\n");
        // Named by the model's hash, so an app update with a new model never reads the old copy.
        String copy = "model-" + sidecar.getString("ptl_sha256").substring(0, 16) + ".ptl";
        Module module = LiteModuleLoader.load(assetFilePath(context, MODEL_ASSET, copy));
        return new Classifier(module, sidecar, labels);
    }

    /** Resize to the model's input size, RGB, (pixel / 255 - mean) / std, then the top `k` classes. */
    Result classify(Bitmap bitmap, int k) {
        Bitmap scaled = Bitmap.createScaledBitmap(bitmap, width, height, true);
        Tensor input = TensorImageUtils.bitmapToFloat32Tensor(scaled, mean, std);
        long started = SystemClock.elapsedRealtimeNanos();
        float[] logits = module.forward(IValue.from(input)).toTensor().getDataAsFloatArray();
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

    /** The lite loader reads a file path, not an asset stream: copy the asset into app storage once. */
    static String assetFilePath(Context context, String asset, String copy) throws IOException {
        File file = new File(context.getFilesDir(), copy);
        if (file.exists() && file.length() > 0) {
            return file.getAbsolutePath();
        }
        File partial = new File(context.getFilesDir(), copy + ".partial");
        try (InputStream in = context.getAssets().open(asset); OutputStream out = new FileOutputStream(partial)) {
            byte[] buffer = new byte[1 << 16];
            int read;
            while ((read = in.read(buffer)) != -1) {
                out.write(buffer, 0, read);
            }
        }
        if (!partial.renameTo(file)) {
            throw new IOException("could not move " + partial + " to " + file);
        }
        return file.getAbsolutePath();
    }
}
