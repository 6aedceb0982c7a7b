package org.prunedroid.demo;

import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Locale;

/**
 * The model file the runtimes load: both read a path, not an asset stream, so the APK's model is copied into app
 * storage once. The copy is trusted only while its SHA-256 is the one the sidecar records (a copy cut short by a
 * full disk or a killed process is replaced), and each writer copies to a file of its own before an atomic rename,
 * so two copies started at once (an activity recreated mid-copy) cannot interleave. Plain Java, tested on the JVM.
 */
final class ModelCopy {
    /** Opens the source afresh for each copy. */
    interface Source {
        InputStream open() throws IOException;
    }

    private ModelCopy() {
    }

    static File of(Source source, File folder, String name, String sha256) throws IOException {
        File file = new File(folder, name);
        if (file.isFile() && sha256.equalsIgnoreCase(sha256Of(file))) {
            return file;
        }
        File partial = File.createTempFile(name, ".partial", folder);
        try {
            MessageDigest digest = newDigest();
            try (InputStream in = source.open(); OutputStream out = new FileOutputStream(partial)) {
                byte[] buffer = new byte[1 << 16];
                int read;
                while ((read = in.read(buffer)) != -1) {
                    digest.update(buffer, 0, read);
                    out.write(buffer, 0, read);
                }
            }
            String copied = hex(digest.digest());
            if (!sha256.equalsIgnoreCase(copied)) {
                throw new IOException("the bundled model's SHA-256 is " + copied + ", but its sidecar records "
                        + sha256 + ": rebuild the app with `invoke build-apk`");
            }
            if (!partial.renameTo(file)) {
                throw new IOException("could not move " + partial + " to " + file);
            }
            return file;
        } finally {
            if (partial.exists() && !partial.delete()) {
                partial.deleteOnExit();
            }
        }
    }

    static String sha256Of(File file) throws IOException {
        MessageDigest digest = newDigest();
        try (InputStream in = new FileInputStream(file)) {
            byte[] buffer = new byte[1 << 16];
            int read;
            while ((read = in.read(buffer)) != -1) {
                digest.update(buffer, 0, read);
            }
        }
        return hex(digest.digest());
    }

    private static MessageDigest newDigest() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException impossible) {  // every Java platform must provide SHA-256
            throw new IllegalStateException(impossible);
        }
    }

    private static String hex(byte[] bytes) {
        StringBuilder text = new StringBuilder();
        for (byte b : bytes) {
            text.append(String.format(Locale.US, "%02x", b));
        }
        return text.toString();
    }
}
