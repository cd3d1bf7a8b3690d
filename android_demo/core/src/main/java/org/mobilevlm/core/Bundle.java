package org.mobilevlm.core;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Pattern;

/**
 * A bundle directory: {@code bundle.json} and the artefacts it lists, the one contract between the
 * exporter and every runtime (mirrors {@code mobilevlm.manifest.BundleManifest} and {@code
 * mobilevlm.runtime.verify}).
 *
 * <p>{@link #open} reads and checks the manifest with the Python side's messages; {@link #verify}
 * checks the files an engine is about to open: present, of the recorded size, and (once per file
 * per process, as the Python runtime's {@code verify="auto"}) of the recorded sha256.
 */
public final class Bundle {
    public static final String FORMAT = "mobilevlm-bundle";
    public static final int FORMAT_VERSION = 1;
    public static final String MANIFEST_FILE = "bundle.json";
    public static final String TOKENIZER_FILE = "tokenizer.json";
    static final int MAX_PATH = 255;
    private static final Pattern SHA256 = Pattern.compile("[0-9a-f]{64}");
    /** Files whose sha256 this process has checked: (path, size, mtime). */
    private static final Set<String> VERIFIED = Collections.synchronizedSet(new HashSet<>());

    /** One file of an artefact: its path inside the bundle, size and sha256. */
    public static final class BundleFile {
        public final String path;
        public final long bytes;
        public final String sha256;

        BundleFile(Object path, Object bytes, Object sha256) {
            checkRelativePath(path);
            String p = (String) path;
            if (!(bytes instanceof Long) || (Long) bytes < 0) {
                throw new BundleError(p + ": bytes must be a whole number >= 0, got "
                        + PyRepr.repr(bytes, 40));
            }
            if (!(sha256 instanceof String) || !SHA256.matcher((String) sha256).matches()) {
                throw new BundleError(p + ": sha256 must be 64 hex digits, got "
                        + PyRepr.repr(sha256, 70));
            }
            this.path = p;
            this.bytes = (Long) bytes;
            this.sha256 = (String) sha256;
        }
    }

    /** One component at one precision; {@code files.get(0)} is what an engine opens. */
    public static final class Artefact {
        public final String component;
        public final String precision;
        public final String format;
        public final List<BundleFile> files;
        public final Map<String, Object> details;

        Artefact(String component, String precision, String format, List<BundleFile> files,
                Map<String, Object> details) {
            this.component = component;
            this.precision = precision;
            this.format = format;
            this.files = Collections.unmodifiableList(files);
            this.details = details;
        }

        public String path() {
            return files.get(0).path;
        }

        @SuppressWarnings("unchecked")
        static Artefact fromJson(Object value) {
            if (!(value instanceof Map)) {
                throw new BundleError(
                        "an artefact must be an object, not " + PyRepr.typeName(value));
            }
            Map<String, Object> data = (Map<String, Object>) value;
            String[] names = new String[3];
            String[] keys = {"component", "precision", "format"};
            Object[] raw = new Object[3];
            for (int k = 0; k < 3; k++) {
                raw[k] = ModelInfo.required(data, keys[k]);
            }
            for (int k = 0; k < 3; k++) {
                if (!(raw[k] instanceof String)) {
                    throw new BundleError("an artefact's " + keys[k] + " must be a string, got "
                            + PyRepr.repr(raw[k], 40));
                }
                names[k] = (String) raw[k];
            }
            Object files = ModelInfo.required(data, "files");
            Object details = data.containsKey("details") ? data.get("details") : Map.of();
            if (!(files instanceof List) || ((List<?>) files).isEmpty()
                    || !((List<?>) files).stream().allMatch(f -> f instanceof Map)) {
                throw new BundleError(
                        "the " + names[0] + " artefact's files must be a list of objects");
            }
            if (!(details instanceof Map)) {
                throw new BundleError("the " + names[0] + " artefact's details must be an object");
            }
            List<BundleFile> entries = new ArrayList<>();
            for (Object f : (List<?>) files) {
                Map<?, ?> m = (Map<?, ?>) f;
                entries.add(new BundleFile(m.get("path"), m.get("bytes"), m.get("sha256")));
            }
            return new Artefact(names[0], names[1], names[2], entries, (Map<String, Object>) details);
        }
    }

    public final Path root;
    public final ModelInfo model;
    public final List<Artefact> artefacts;
    public final String tokenizer;
    public final Map<String, Object> exporter;
    /** The top-level {@code num_image_tokens} the exporter recorded (0 when absent). */
    public final int numImageTokens;

    private Bundle(Path root, ModelInfo model, List<Artefact> artefacts, String tokenizer,
            Map<String, Object> exporter, int numImageTokens) {
        this.root = root;
        this.model = model;
        this.artefacts = Collections.unmodifiableList(artefacts);
        this.tokenizer = tokenizer;
        this.exporter = exporter;
        this.numImageTokens = numImageTokens;
    }

    /** A file named in a manifest: a short relative path that stays inside the bundle. */
    static void checkRelativePath(Object path) {
        if (!(path instanceof String) || ((String) path).isEmpty() || ((String) path).indexOf('\0') >= 0
                || ((String) path).codePointCount(0, ((String) path).length()) > MAX_PATH) {
            throw new BundleError("a file path in a bundle must be a short non-empty string: "
                    + PyRepr.repr(path, 60));
        }
        String p = (String) path;
        boolean parent = false;
        for (String part : p.split("/")) {
            parent |= part.equals("..");
        }
        if (p.startsWith("/") || p.indexOf('\\') >= 0 || parent) {
            throw new BundleError("file " + PyRepr.repr(p, 60) + " is not inside the bundle directory");
        }
    }

    /** Read and check {@code directory/bundle.json}; a missing, foreign, newer or malformed
     * manifest is a {@link BundleError} naming the file. */
    @SuppressWarnings("unchecked")
    public static Bundle open(Path directory) {
        Path path = directory.resolve(MANIFEST_FILE);
        if (!Files.isDirectory(directory)) {
            throw new BundleError(MobileVLMError.at(directory, "no such bundle directory"));
        }
        if (!Files.isRegularFile(path)) {
            throw new BundleError(MobileVLMError.at(
                    path, "missing: not a bundle (run `mobilevlm export` first)"));
        }
        Object parsed;
        try {
            parsed = Json.parse(readUtf8(path));
        } catch (Json.ParseError | CharacterCodingException e) {
            throw new BundleError(MobileVLMError.at(path, "not valid JSON (" + e.getMessage() + ")"));
        } catch (IOException e) {
            throw new BundleError(MobileVLMError.at(path, "cannot be read (" + e.getMessage() + ")"));
        }
        if (!(parsed instanceof Map) || !FORMAT.equals(((Map<?, ?>) parsed).get("format"))) {
            throw new BundleError(MobileVLMError.at(path, "not a " + FORMAT + " manifest"));
        }
        Map<String, Object> data = (Map<String, Object>) parsed;
        Object version = data.get("format_version");
        if (!isOne(version)) {
            throw new BundleError(MobileVLMError.at(path, "format version " + PyRepr.str(version)
                    + " is not supported (this runtime reads version " + FORMAT_VERSION
                    + "); re-export the bundle"));
        }
        try {
            Object artefacts = ModelInfo.required(data, "artefacts");
            Object tokenizer = data.containsKey("tokenizer") ? data.get("tokenizer") : TOKENIZER_FILE;
            Object exporter = data.containsKey("exporter") ? data.get("exporter") : Map.of();
            if (!(artefacts instanceof List)) {
                throw new BundleError("artefacts must be a list");
            }
            if (!(exporter instanceof Map)) {
                throw new BundleError("exporter must be an object");
            }
            checkRelativePath(tokenizer);
            ModelInfo model = ModelInfo.fromJson(ModelInfo.required(data, "model"));
            List<Artefact> list = new ArrayList<>();
            for (Object a : (List<?>) artefacts) {
                list.add(Artefact.fromJson(a));
            }
            Object n = data.get("num_image_tokens");
            int tokens = n instanceof Long ? (int) (long) (Long) n : 0;
            return new Bundle(directory, model, list, (String) tokenizer,
                    (Map<String, Object>) exporter, tokens);
        } catch (ModelInfo.MissingKey e) {
            throw new BundleError(MobileVLMError.at(
                    path, "malformed manifest (missing " + PyRepr.repr(e.key) + ")"));
        } catch (BundleError | ConfigError e) {
            throw new BundleError(MobileVLMError.at(path, "malformed manifest: " + e.getMessage()));
        }
    }

    /** Python's {@code version != 1} is false for 1, 1.0 and True. */
    private static boolean isOne(Object v) {
        return Long.valueOf(1).equals(v) || Double.valueOf(1.0).equals(v) || Boolean.TRUE.equals(v);
    }

    private static String readUtf8(Path path) throws IOException {
        byte[] bytes = Files.readAllBytes(path);
        return StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT)
                .decode(ByteBuffer.wrap(bytes))
                .toString();
    }

    /** The artefact of {@code component} at {@code precision} (first listed), or null. */
    public Artefact find(String component, String precision) {
        for (Artefact a : artefacts) {
            if (a.component.equals(component) && a.precision.equals(precision)) {
                return a;
            }
        }
        return null;
    }

    /** Every artefact of {@code component}, in manifest order. */
    public List<Artefact> of(String component) {
        List<Artefact> out = new ArrayList<>();
        for (Artefact a : artefacts) {
            if (a.component.equals(component)) {
                out.add(a);
            }
        }
        return out;
    }

    /** The tokenizer file, checked present. */
    public Path tokenizerPath() {
        Path p = root.resolve(tokenizer);
        if (!Files.isRegularFile(p)) {
            throw new BundleError(MobileVLMError.at(p, "missing from the bundle"));
        }
        return p;
    }

    /** How much of a file {@link #verify} checks. */
    public enum Verify {
        /** Size always, sha256 the first time this process sees the file (as it is now). */
        AUTO,
        /** Size and sha256, every time. */
        FULL,
        /** Size only. */
        SIZE
    }

    /** Raise {@link BundleError} naming the first missing, truncated or corrupted file. */
    public void verify(Collection<Artefact> chosen, Verify mode) {
        for (Artefact artefact : chosen) {
            for (BundleFile entry : artefact.files) {
                Path file = root.resolve(entry.path);
                long size;
                long mtime;
                try {
                    size = Files.size(file);
                    mtime = Files.getLastModifiedTime(file).toMillis();
                } catch (IOException e) {
                    throw new BundleError(MobileVLMError.at(file, "missing from the bundle"));
                }
                if (size != entry.bytes) {
                    throw new BundleError(MobileVLMError.at(file, "has " + size
                            + " bytes, the manifest says " + entry.bytes
                            + " (truncated or replaced; re-export the bundle)"));
                }
                if (mode == Verify.SIZE) {
                    continue;
                }
                String key = file.toAbsolutePath() + "\0" + size + "\0" + mtime + "\0" + entry.sha256;
                if (mode == Verify.AUTO && VERIFIED.contains(key)) {
                    continue;
                }
                if (!sha256(file).equals(entry.sha256)) {
                    throw new BundleError(
                            MobileVLMError.at(file, "sha256 differs from the manifest (corrupted)"));
                }
                VERIFIED.add(key);
            }
        }
    }

    /** Hex sha256 of a file, streamed. */
    public static String sha256(Path file) {
        try (InputStream in = Files.newInputStream(file)) {
            MessageDigest digest = MessageDigest.getInstance("SHA-256");
            byte[] buffer = new byte[1 << 20];
            for (int n; (n = in.read(buffer)) > 0; ) {
                digest.update(buffer, 0, n);
            }
            StringBuilder hex = new StringBuilder();
            for (byte b : digest.digest()) {
                hex.append(String.format("%02x", b & 0xff));
            }
            return hex.toString();
        } catch (IOException e) {
            throw new BundleError(MobileVLMError.at(file, "cannot be read (" + e.getMessage() + ")"));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
