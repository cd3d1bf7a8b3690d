package org.mobilevlm.core;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/** The golden files make_golden.py wrote (MOBILEVLM_GOLDEN, set by `make android-test`). */
final class Golden {
    private Golden() {}

    static Path dir() {
        String env = System.getenv("MOBILEVLM_GOLDEN");
        String where = env != null ? env : System.getProperty("mobilevlm.golden", "../golden");
        Path path = Path.of(where);
        if (!Files.isDirectory(path)) {
            throw new IllegalStateException("no golden files at " + path + ": run `make android-golden`");
        }
        return path;
    }

    static Object json(String name) {
        try {
            return Json.parse(new String(Files.readAllBytes(dir().resolve(name)), StandardCharsets.UTF_8));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        } catch (Json.ParseError e) {
            throw new IllegalStateException(name + ": " + e.getMessage(), e);
        }
    }

    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> list(String name) {
        return (List<Map<String, Object>>) json(name);
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> map(String name) {
        return (Map<String, Object>) json(name);
    }

    static Npy.Array npy(String name) {
        try {
            return Npy.read(dir().resolve(name));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static Path bundle() {
        return Path.of((String) map("index.json").get("bundle"));
    }

    static Tokenizer tokenizer() {
        return Tokenizer.fromFile(bundle().resolve("tokenizer.json"));
    }

    static int[] ints(Object list) {
        return ((List<?>) list).stream().mapToInt(o -> (int) (long) (Long) o).toArray();
    }

    @SuppressWarnings("unchecked")
    static List<String> strings(Object list) {
        return (List<String>) list;
    }

    static double number(Object o) {
        return ((Number) o).doubleValue();
    }
}
