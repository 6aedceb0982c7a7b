package org.prunedroid.demo;

import android.app.Activity;
import android.content.Intent;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.net.Uri;
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

/** Classifies the bundled CIFAR-10 test samples, a gallery image or a camera photo; inference off the UI thread. */
public class MainActivity extends Activity {
    private static final int PICK_IMAGE = 1;
    private static final int TAKE_PHOTO = 2;
    private static final String SAMPLES = "samples";

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
        findViewById(R.id.pick_image).setOnClickListener(view -> startActivityForResult(
                new Intent(Intent.ACTION_GET_CONTENT).setType("image/*"), PICK_IMAGE));
        findViewById(R.id.take_photo).setOnClickListener(view -> startActivityForResult(
                new Intent(MediaStore.ACTION_IMAGE_CAPTURE), TAKE_PHOTO));
        worker.execute(() -> {
            try {
                classifier = Classifier.fromAssets(this);
                String[] listed = getAssets().list(SAMPLES);
                ui.post(() -> {
                    samples = listed == null ? new String[0] : listed;
                    showNextSample();
                });
            } catch (Exception error) {
                ui.post(() -> result.setText("Could not load the model: " + error));
            }
        });
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
            classify((Bitmap) data.getExtras().get("data"), "camera");  // the thumbnail: plenty for 32x32
        } else if (requestCode == PICK_IMAGE && data.getData() != null) {
            Uri uri = data.getData();
            try (InputStream in = getContentResolver().openInputStream(uri)) {
                classify(BitmapFactory.decodeStream(in), "gallery");
            } catch (IOException error) {
                result.setText("Could not read the picked image: " + error);
            }
        }
    }

    private void classify(Bitmap bitmap, String source) {
        if (bitmap == null) {
            result.setText("Not an image the phone can decode");
            return;
        }
        image.setImageBitmap(bitmap);
        worker.execute(() -> {
            if (classifier == null) {
                return;  // loading failed; the error is on screen
            }
            Classifier.Result top = classifier.classify(bitmap, 3);
            StringBuilder text = new StringBuilder(source).append('\n');
            for (int i = 0; i < top.classes.size(); i++) {
                text.append(String.format(Locale.US, "%-10s %5.1f%%%n", top.classes.get(i),
                        100 * top.probabilities.get(i)));
            }
            text.append(String.format(Locale.US, "inference %.1f ms on %s", top.inferenceMs,
                    classifier.description));
            ui.post(() -> result.setText(text));
        });
    }

    @Override
    protected void onDestroy() {
        worker.shutdown();
        super.onDestroy();
    }
}
