package org.prunedroid.demo;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import org.junit.Test;

public class BenchRequestTest {
    private static String refusal(String model, String sidecar, String out, int warmup, int runs, int threads) {
        try {
            BenchRequest.of(model, sidecar, out, warmup, runs, threads);
        } catch (IllegalArgumentException refused) {
            return refused.getMessage();
        }
        fail("accepted " + model + " " + sidecar + " " + out + " " + warmup + " " + runs + " " + threads);
        return null;
    }

    @Test
    public void whatBenchDeviceSendsIsAccepted() {
        BenchRequest request = BenchRequest.of("pruned.pte", "pruned.json", "pruned", 20, 100, 1);
        File files = new File("/data/user/0/org.prunedroid.demo/files");
        assertEquals(new File(files, "pruned.pte"), request.modelIn(files));
        assertEquals(new File(files, "pruned.json"), request.sidecarIn(files));
        assertEquals(100, request.runs);
    }

    @Test
    public void namesOutsideTheFilesFolderAreRefused() {
        for (String hostile : new String[] {"../x", "/data/local/tmp/m.pte", "a/b.pte", ".hidden", "..", "m.pte;rm",
                                            ""}) {
            String message = refusal(hostile, "m.json", "m", 0, 1, 1);
            assertTrue(message, message.contains("--es model must be a file name"));
            assertTrue(refusal("m.pte", "m.json", hostile, 0, 1, 1).contains("--es out must be a file name"));
            assertNull(BenchRequest.resultName(hostile));
        }
        assertEquals("m", BenchRequest.resultName("m"));
    }

    @Test
    public void countsAreBoundedAndEveryProblemIsNamed() {
        String message = refusal(null, "m.json", "m", -1, Integer.MAX_VALUE, 0);
        assertTrue(message, message.contains("missing --es model"));
        assertTrue(message, message.contains("runs must be in 1..100000"));
        assertTrue(message, message.contains("warmup must be in 0..10000"));
        assertTrue(message, message.contains("threads must be in 1..64"));
        assertTrue(refusal("m.pte", "m.json", "m", 0, 0, 1).contains("runs must be in 1.."));
    }

    @Test
    public void anInputShapeIsFourBoundedSizes() {
        assertEquals(3 * 32 * 32, BenchRequest.inputSize(new long[] {1, 3, 32, 32}));
        for (long[] hostile : new long[][] {{1, 3, 32}, {1, 3, 0, 32}, {1, -3, 32, 32}, {1, 3, 1L << 40, 1L << 40},
                                            {4096, 4096, 4096, 4096}, {1L << 24, 1L << 24, 1L << 24, 1L << 24}}) {
            try {
                BenchRequest.inputSize(hostile);
                fail("accepted a shape of " + hostile.length + " sizes");
            } catch (IllegalArgumentException refused) {
                assertTrue(refused.getMessage().contains("four positive sizes"));
            }
        }
    }
}
