package org.prunedroid.demo;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import android.content.Context;
import android.content.Intent;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;

import org.json.JSONObject;
import org.junit.Before;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.robolectric.Robolectric;
import org.robolectric.RobolectricTestRunner;
import org.robolectric.RuntimeEnvironment;
import org.robolectric.android.controller.ActivityController;

/** BenchmarkActivity started as `invoke bench-device` starts it, with a FakeRunner in place of the native runtime. */
@RunWith(RobolectricTestRunner.class)
public class BenchmarkActivityTest {
    private final List<FakeRunner> opened = new ArrayList<>();
    private File files;

    @Before
    public void stageAModel() throws IOException {
        FakeRunner.install(opened);
        Context context = RuntimeEnvironment.getApplication();
        files = context.getFilesDir();
        write(new File(files, "pruned.pte"), "a model of 21 bytes..");
        write(new File(files, "pruned.json"), "{\"input_shape\": [1, 3, 32, 32]}");
    }

    private static void write(File file, String text) throws IOException {
        try (OutputStream stream = new FileOutputStream(file)) {
            stream.write(text.getBytes(StandardCharsets.UTF_8));
        }
    }

    private static Intent intent(String model, String out, int runs) {
        return new Intent(RuntimeEnvironment.getApplication(), BenchmarkActivity.class)
                .putExtra("model", model).putExtra("sidecar", "pruned.json").putExtra("out", out)
                .putExtra("warmup", 3).putExtra("runs", runs).putExtra("threads", 1);
    }

    /** Starts the benchmark and waits for its result file. */
    private JSONObject bench(Intent intent, String out) throws Exception {
        File result = new File(files, "bench/" + out + ".json");
        ActivityController<BenchmarkActivity> controller = Robolectric.buildActivity(BenchmarkActivity.class, intent)
                .setup();
        Settle.until(() -> result.isFile() && controller.get().isFinishing(), "the result of " + out);
        return new JSONObject(new String(Files.readAllBytes(result.toPath()), StandardCharsets.UTF_8));
    }

    @Test
    public void theResultIsWhatBenchDeviceReads() throws Exception {
        JSONObject result = bench(intent("pruned.pte", "pruned", 7), "pruned");
        assertEquals(1, opened.size());
        assertEquals(3 + 7, opened.get(0).inputs.size());  // warm-up, then the timed runs
        assertEquals(3 * 32 * 32, opened.get(0).inputs.get(0).length);
        assertTrue(opened.get(0).closed);
        assertEquals(2.0, result.getJSONObject("latency_ms").getDouble("median"), 1e-9);  // the fake's 2 ms
        assertEquals(21, result.getLong("model_bytes"));
        assertEquals(7, result.getJSONArray("latencies_ms").length());
        File out = Settle.out();
        if (out != null) {  // tests/test_android.py reads it with prunedroid.android.device.read_result, as bench-device does
            Files.copy(new File(files, "bench/pruned.json").toPath(), new File(out, "bench-result.json").toPath());
        }
    }

    @Test
    public void aFailingForwardPassIsWrittenAsAnErrorAndTheModelClosed() throws Exception {
        Runner.Opener.open = Runner.Opener.open.andThen(runner -> {
            ((FakeRunner) runner).forwardFails = new IllegalArgumentException("tensor 0 has 3 dims, expected 4");
            return runner;
        });
        JSONObject result = bench(intent("pruned.pte", "broken", 5), "broken");
        assertTrue(result.toString(), result.getString("error").contains("expected 4"));
        assertTrue(opened.get(0).closed);
    }

    @Test
    public void aNativeLibraryThatWillNotLoadIsWrittenAsAnError() throws Exception {
        FakeRunner.install(opened, new CountDownLatch(0), new UnsatisfiedLinkError("libexecutorch.so not found"));
        JSONObject result = bench(intent("pruned.pte", "nolib", 5), "nolib");
        assertTrue(result.toString(), result.getString("error").startsWith("java.lang.UnsatisfiedLinkError"));
    }

    @Test
    public void hostileExtrasAreRefusedBeforeAnythingIsReadOrAllocated() throws Exception {
        JSONObject outside = bench(intent("/data/data/other.app/files/secret.pte", "outside", 5), "outside");
        assertTrue(outside.toString(), outside.getString("error").contains("--es model must be a file name"));
        JSONObject huge = bench(intent("pruned.pte", "huge", Integer.MAX_VALUE), "huge");  // no new double[2^31]
        assertTrue(huge.toString(), huge.getString("error").contains("--ei runs"));
        assertTrue(opened.isEmpty());
        ActivityController<BenchmarkActivity> escaping = Robolectric.buildActivity(BenchmarkActivity.class,
                intent("pruned.pte", "../escaped", 5)).setup();
        Settle.until(() -> escaping.get().isFinishing(), "the refused run to finish");
        assertFalse(new File(files, "escaped.json").exists());
        assertFalse(new File(files.getParentFile(), "escaped.json").exists());
        String[] written = new File(files, "bench").list();
        assertTrue(written == null || !String.join(",", written).contains("escaped"));
    }

    @Test
    public void recreatingTheActivityDoesNotStartASecondRun() throws Exception {
        CountDownLatch opening = new CountDownLatch(1);
        FakeRunner.install(opened, opening, null);
        File result = new File(files, "bench/once.json");
        ActivityController<BenchmarkActivity> controller = Robolectric.buildActivity(BenchmarkActivity.class,
                intent("pruned.pte", "once", 5)).setup();
        controller.recreate();
        opening.countDown();
        Settle.until(() -> result.isFile() && controller.get().isFinishing(), "the one result");
        Thread.sleep(200);  // a second run, were one started, would open a second runner by now
        assertEquals(1, opened.size());
    }
}
