package org.prunedroid.demo;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.robolectric.Shadows.shadowOf;

import android.app.Activity;
import android.content.Intent;
import android.graphics.Bitmap;
import android.graphics.drawable.BitmapDrawable;
import android.net.Uri;
import android.widget.ImageView;
import android.widget.TextView;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;

import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Before;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.robolectric.Robolectric;
import org.robolectric.RobolectricTestRunner;
import org.robolectric.android.controller.ActivityController;
import org.robolectric.annotation.GraphicsMode;

/** MainActivity with the assets `invoke build-apk` staged and a FakeRunner in place of the native runtime. */
@RunWith(RobolectricTestRunner.class)
@GraphicsMode(GraphicsMode.Mode.NATIVE)  // real PNG decoding and scaling, as on a phone
public class MainActivityTest {
    private final List<FakeRunner> opened = new ArrayList<>();

    @Before
    public void fakeRuntime() {
        FakeRunner.install(opened);
    }

    private static String text(Activity activity) {
        return ((TextView) activity.findViewById(R.id.result)).getText().toString();
    }

    private static MainActivity loaded(ActivityController<MainActivity> controller) {
        MainActivity activity = controller.get();
        Settle.until(() -> text(activity).contains("inference"), "the first sample's classification");
        return activity;
    }

    @Test
    public void eachSampleIsClassifiedFromTheStagedModel() throws Exception {
        MainActivity activity = loaded(Robolectric.buildActivity(MainActivity.class).setup());
        String[] samples = activity.getAssets().list("samples");
        assertTrue("no samples staged", samples != null && samples.length > 0);
        for (int shown = 1; shown < samples.length; shown++) {
            int before = opened.get(0).inputs.size();
            activity.findViewById(R.id.next_sample).performClick();
            Settle.until(() -> opened.get(0).inputs.size() > before, "sample " + shown);
        }
        Settle.until(() -> text(activity).contains("true class"), "the last sample's text");
        // Logits 0..9: the top three are the last three labels, best first, each with its softmax share.
        String[] labels = Classifier.readAsset(activity, Classifier.LABELS_ASSET).trim().split("\n");
        String shown = text(activity);
        int first = shown.indexOf(labels[9]);
        assertTrue(shown, first > 0 && first < shown.indexOf(labels[8]) && shown.indexOf(labels[8]) < shown.indexOf(
                labels[7]) && shown.contains("63.2%") && shown.contains("on executorch-android"));
        assertEquals(1, opened.size());
        assertTrue(opened.get(0).path.endsWith(".pte"));
        JSONObject fed = new JSONObject();
        for (int i = 0; i < samples.length; i++) {
            assertEquals(3 * 32 * 32, opened.get(0).inputs.get(i).length);
            JSONArray values = new JSONArray();
            for (float value : opened.get(0).inputs.get(i)) {
                values.put((double) value);
            }
            fed.put(samples[i], values);
        }
        File out = Settle.out();
        if (out != null) {  // tests/test_android.py compares these with the Python side's tensors
            try (OutputStream stream = new FileOutputStream(new File(out, "preprocessed.json"))) {
                stream.write(fed.toString().getBytes(StandardCharsets.UTF_8));
            }
        }
    }

    @Test
    public void aNativeLibraryThatWillNotLoadIsShownNotThrown() {
        for (Error failure : new Error[] {new UnsatisfiedLinkError("dlopen failed: library \"libexecutorch.so\" not "
                                                                   + "found"), new ExceptionInInitializerError()}) {
            FakeRunner.install(opened, new CountDownLatch(0), failure);
            MainActivity activity = Robolectric.buildActivity(MainActivity.class).setup().get();
            Settle.until(() -> text(activity).startsWith("Could not load the model: " + failure.getClass().getName()),
                    "the load error on screen");
            activity.findViewById(R.id.next_sample).performClick();  // nothing loaded: nothing to run, no crash
            shadowOf(android.os.Looper.getMainLooper()).idle();
            assertFalse(activity.isFinishing());
        }
    }

    @Test
    public void anInferenceErrorIsShownNotThrown() {
        MainActivity activity = loaded(Robolectric.buildActivity(MainActivity.class).setup());
        opened.get(0).forwardFails = new IllegalStateException("input 0 has the wrong shape");
        activity.findViewById(R.id.next_sample).performClick();
        Settle.until(() -> text(activity).startsWith("Inference failed: java.lang.IllegalStateException: input 0"),
                "the inference error on screen");
    }

    @Test
    public void anActivityDestroyedWhileTheModelLoadsDropsItsWorkAndClosesTheModel() {
        CountDownLatch loading = new CountDownLatch(1);
        FakeRunner.install(opened, loading, null);
        ActivityController<MainActivity> first = Robolectric.buildActivity(MainActivity.class).setup();
        first.recreate();  // e.g. a configuration change the manifest does not handle; the load is still running
        loading.countDown();
        MainActivity second = loaded(first);
        // Both loads wait on the same gate, so either may be opened first: tell them apart by what they did.
        Settle.until(() -> closedCount() == 1, "the first activity's model closed");
        List<FakeRunner> both = openedSoFar();
        assertEquals(2, both.size());
        for (FakeRunner runner : both) {
            // The destroyed activity's runner never classified (its result was dropped) and is closed; the live one
            // classified the first sample and stays open.
            assertEquals(runner.closed, runner.inputs.isEmpty());
        }
        assertTrue(second != null && !second.isDestroyed());
    }

    private List<FakeRunner> openedSoFar() {
        synchronized (opened) {
            return new ArrayList<>(opened);
        }
    }

    private int closedCount() {
        int closed = 0;
        for (FakeRunner runner : openedSoFar()) {
            closed += runner.closed ? 1 : 0;
        }
        return closed;
    }

    @Test
    public void aHugeGalleryImageIsDecodedSmallOffTheUiThread() throws IOException {
        MainActivity activity = loaded(Robolectric.buildActivity(MainActivity.class).setup());
        Bitmap photo = Bitmap.createBitmap(4000, 3000, Bitmap.Config.ARGB_8888);  // a 12-megapixel photo
        photo.eraseColor(0xff336699);
        ByteArrayOutputStream png = new ByteArrayOutputStream();
        assertTrue(photo.compress(Bitmap.CompressFormat.PNG, 100, png));
        photo.recycle();
        Uri uri = Uri.parse("content://media/external/images/media/7");
        shadowOf(activity.getContentResolver()).registerInputStreamSupplier(
                uri, () -> new ByteArrayInputStream(png.toByteArray()));
        int before = opened.get(0).inputs.size();
        activity.onActivityResult(1, Activity.RESULT_OK, new Intent().setData(uri));
        Settle.until(() -> text(activity).startsWith("gallery") && opened.get(0).inputs.size() > before,
                "the picked image's classification");
        Bitmap shown = ((BitmapDrawable) ((ImageView) activity.findViewById(R.id.image)).getDrawable()).getBitmap();
        assertEquals(1000, shown.getWidth());  // 4000 / 4: the first power of two that fits 1024
        assertEquals(750, shown.getHeight());
    }

    @Test
    public void anImageThatCannotBeReadIsShownNotThrown() {
        MainActivity activity = loaded(Robolectric.buildActivity(MainActivity.class).setup());
        Uri uri = Uri.parse("content://media/external/images/media/8");
        shadowOf(activity.getContentResolver()).registerInputStreamSupplier(
                uri, () -> new ByteArrayInputStream("not a picture".getBytes(StandardCharsets.UTF_8)));
        activity.onActivityResult(1, Activity.RESULT_OK, new Intent().setData(uri));
        Settle.until(() -> text(activity).equals("Not an image the phone can decode"), "the decode failure");
    }

    @Test
    public void aPhoneWithNoGalleryAppSaysSo() {
        MainActivity activity = loaded(Robolectric.buildActivity(MainActivity.class).setup());
        shadowOf(activity.getApplication()).checkActivities(true);  // no app resolves the intent: as on a bare phone
        activity.findViewById(R.id.pick_image).performClick();
        assertTrue(text(activity), text(activity).startsWith("No app on this phone can do that"));
    }
}
