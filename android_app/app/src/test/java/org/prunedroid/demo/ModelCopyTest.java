package org.prunedroid.demo;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.ByteArrayInputStream;
import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class ModelCopyTest {
    @Rule
    public TemporaryFolder folder = new TemporaryFolder();

    private static final byte[] MODEL = new byte[300_000];

    static {
        for (int i = 0; i < MODEL.length; i++) {
            MODEL[i] = (byte) (i * 31 + 7);
        }
    }

    private static String sha256(byte[] bytes) throws IOException {
        File file = File.createTempFile("model", ".bin");
        try {
            Files.write(file.toPath(), bytes);
            return ModelCopy.sha256Of(file);
        } finally {
            file.delete();
        }
    }

    private static ModelCopy.Source source(byte[] bytes) {
        return () -> new ByteArrayInputStream(bytes);
    }

    @Test
    public void aDamagedOrCutShortCopyIsReplaced() throws IOException {
        File files = folder.getRoot();
        File stale = new File(files, "model.pte");
        Files.write(stale.toPath(), new byte[] {1, 2, 3});  // what a copy killed part-way leaves
        File copy = ModelCopy.of(source(MODEL), files, "model.pte", sha256(MODEL));
        assertArrayEquals(MODEL, Files.readAllBytes(copy.toPath()));
        assertEquals(1, files.list().length);  // no partial file left behind
        // A good copy is reused: the source is not read again.
        assertEquals(copy, ModelCopy.of(() -> {
            throw new IOException("read again");
        }, files, "model.pte", sha256(MODEL)));
    }

    @Test
    public void aBundledModelThatIsNotTheSidecarsIsRefused() throws IOException {
        File files = folder.getRoot();
        try {
            ModelCopy.of(source(MODEL), files, "model.pte", sha256(new byte[] {9}));
            fail("copied a model whose hash is not the sidecar's");
        } catch (IOException refused) {
            assertTrue(refused.getMessage(), refused.getMessage().contains("invoke build-apk"));
        }
        assertFalse(new File(files, "model.pte").exists());
        assertEquals(0, files.list().length);
    }

    @Test
    public void twoCopiesAtOnceBothEndWithTheWholeModel() throws Exception {
        File files = folder.getRoot();
        String expected = sha256(MODEL);
        ExecutorService pool = Executors.newFixedThreadPool(4);
        try {
            List<Future<File>> copies = new ArrayList<>();
            for (int i = 0; i < 8; i++) {
                Callable<File> copy = () -> ModelCopy.of(source(MODEL), files, "model.pte", expected);
                copies.add(pool.submit(copy));
            }
            for (Future<File> copy : copies) {
                assertEquals(expected, ModelCopy.sha256Of(copy.get()));
            }
        } finally {
            pool.shutdown();
        }
        assertEquals(1, files.list().length);
    }
}
