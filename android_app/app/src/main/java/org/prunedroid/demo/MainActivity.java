package org.prunedroid.demo;

import android.app.Activity;
import android.content.ActivityNotFoundException;
import android.content.Intent;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.net.Uri;
import android.os.Build;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.provider.MediaStore;
import android.widget.ImageView;
import android.widget.TextView;

import java.io.IOException;
import java.io.InputStream;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * Classifies the bundled CIFAR-10 test samples, a gallery image or a camera photo; loading, decoding and inference
 * run off the UI thread. Every failure - a native library that will not load, an image that cannot be read, a forward
 * pass that throws - ends as a message on screen, never a crash; work that finishes after the activity is gone is
 * dropped.
 */
public class MainActivity extends Activity {
    private static final int PICK_IMAGE = 1;
    private static final int TAKE_PHOTO = 2;
    private static final String SAMPLES = "samples";
    private static final int MAX_SIDE = 1024;  // a picked photo is decoded at most this large: the model reads 32x32

    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final Handler ui = new Handler(Looper.getMainLooper());
    private Classifier classifier;  // loaded once, on the worker; read there only
    private String[] samples = new String[0];
    private int nextSample = 0;
    private ImageView image;
    private TextView result;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        image = findViewById(R.id.image);
        result = findViewById(R.id.result);
        findViewById(R.id.next_sample).setOnClickListener(view -> showNextSample());
        findViewById(R.id.pick_image).setOnClickListener(view -> ask(
                new Intent(Intent.ACTION_GET_CONTENT).setType("image/*"), PICK_IMAGE));
        findViewById(R.id.take_photo).setOnClickListener(view -> ask(
                new Intent(MediaStore.ACTION_IMAGE_CAPTURE), TAKE_PHOTO));
        work(() -> {
            try {
                classifier = Classifier.fromAssets(this);
                String[] listed = getAssets().list(SAMPLES);
                show(() -> {
                    samples = listed == null ? new String[0] : listed;
                    showNextSample();
                });
            } catch (Exception | LinkageError error) {  // LinkageError: a native library missing or built for another ABI
                show(() -> result.setText("Could not load the model: " + error));
            }
        });
    }

    /** Runs `task` on the worker, unless the activity is being destroyed (then nothing is left to show it). */
    private void work(Runnable task) {
        if (!worker.isShutdown()) {
            worker.execute(task);
        }
    }

    /** Runs `task` on the UI thread, unless the activity was destroyed meanwhile. */
    private void show(Runnable task) {
        ui.post(() -> {
            if (!isDestroyed()) {
                task.run();
            }
        });
    }

    /** Another app picks or takes the picture; a phone without one (or that forbids it) says so. */
    private void ask(Intent intent, int request) {
        try {
            startActivityForResult(intent, request);
        } catch (ActivityNotFoundException | SecurityException error) {
            result.setText("No app on this phone can do that: " + error.getMessage());
        }
    }

    private void showNextSample() {
        if (samples.length == 0) {
            return;
        }
        String name = samples[nextSample++ % samples.length];
        try (InputStream in = getAssets().open(SAMPLES + "/" + name)) {
            // Sample files are named <index>_<true class>.png by `invoke build-apk`.
            classify(BitmapFactory.decodeStream(in), "true class: " + name.replaceAll("^\\d+_|\\.png$", ""));
        } catch (IOException error) {
            result.setText("Could not read " + name + ": " + error);
        }
    }

    @Override
    protected void onActivityResult(int requestCode, int resultCode, Intent data) {
        super.onActivityResult(requestCode, resultCode, data);
        if (resultCode != RESULT_OK || data == null) {
            return;
        }
        if (requestCode == TAKE_PHOTO && data.getExtras() != null) {
            classify(thumbnail(data.getExtras()), "camera");  // the thumbnail: plenty for 32x32
        } else if (requestCode == PICK_IMAGE && data.getData() != null) {
            Uri uri = data.getData();
            work(() -> {
                try {
                    Bitmap bitmap = decodeAtMost(uri, MAX_SIDE);
                    show(() -> classify(bitmap, "gallery"));
                } catch (IOException | SecurityException error) {
                    show(() -> result.setText("Could not read the picked image: " + error));
                }
            });
        }
    }

    /** The camera's thumbnail; Bundle's typed getter exists from API 33, the app runs from 24. */
    private static Bitmap thumbnail(Bundle extras) {
        if (Build.VERSION.SDK_INT >= 33) {
            return extras.getParcelable("data", Bitmap.class);
        }
        return legacyParcelable(extras);
    }

    @SuppressWarnings("deprecation")
    private static Bitmap legacyParcelable(Bundle extras) {
        return extras.getParcelable("data");
    }

    /** The image at `uri`, decoded at a power-of-two fraction of its size with no side above `maxSide` pixels: a
     * 50-megapixel photo decoded whole would not fit in memory, nor be drawn. */
    private Bitmap decodeAtMost(Uri uri, int maxSide) throws IOException {
        BitmapFactory.Options bounds = new BitmapFactory.Options();
        bounds.inJustDecodeBounds = true;
        try (InputStream in = getContentResolver().openInputStream(uri)) {
            BitmapFactory.decodeStream(in, null, bounds);
        }
        BitmapFactory.Options sampled = new BitmapFactory.Options();
        sampled.inSampleSize = 1;
        while (Math.max(bounds.outWidth, bounds.outHeight) / sampled.inSampleSize > maxSide) {
            sampled.inSampleSize *= 2;
        }
        try (InputStream in = getContentResolver().openInputStream(uri)) {
            return BitmapFactory.decodeStream(in, null, sampled);
        }
    }

    private void classify(Bitmap bitmap, String source) {
        if (bitmap == null) {
            result.setText("Not an image the phone can decode");
            return;
        }
        image.setImageBitmap(bitmap);
        work(() -> {
            if (classifier == null) {
                return;  // loading failed; the error is on screen
            }
            try {
                Classifier.Result top = classifier.classify(bitmap, 3);
                StringBuilder text = new StringBuilder(source).append('\n');
                for (int i = 0; i < top.classes.size(); i++) {
                    text.append(String.format(Locale.US, "%-10s %5.1f%%%n", top.classes.get(i),
                            100 * top.probabilities.get(i)));
                }
                text.append(String.format(Locale.US, "inference %.1f ms on %s", top.inferenceMs,
                        classifier.description));
                show(() -> result.setText(text));
            } catch (RuntimeException | LinkageError error) {  // the runtime refusing the input, or its library
                show(() -> result.setText("Inference failed: " + error));
            }
        });
    }

    @Override
    protected void onDestroy() {
        // Queued work still runs after shutdown(): the native module is closed after the last inference, once.
        work(() -> {
            if (classifier != null) {
                classifier.runner.close();
            }
        });
        worker.shutdown();
        super.onDestroy();
    }
}
