package org.mobilevlm.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** bundle.json is read and checked with the Python runtime's messages: every golden broken bundle
 * (bad JSON, foreign or newer manifests, malformed fields, unsafe paths, missing, truncated and
 * corrupted files) gives a BundleError with Python's exact text. */
public class BundleTest {
    @Test
    public void everyGoldenBundleCaseGivesPythonsMessage() {
        int errors = 0;
        for (Map<String, Object> e : Golden.list("bundles.json")) {
            Path dir = Golden.dir().resolve("bundles").resolve((String) e.get("name"));
            String message = null;
            try {
                Bundle bundle = Bundle.open(dir);
                if ((Boolean) e.get("verify")) bundle.verify(bundle.artefacts, Bundle.Verify.FULL);
            } catch (BundleError err) {
                message = err.getMessage().replace(dir.toString(), "{dir}");
                errors++;
            }
            assertEquals((String) e.get("name"), e.get("error"), message);
        }
        assertTrue(errors > 50);
    }

    @Test
    public void theBuiltInBundleReadsWithItsGeometry() {
        Bundle bundle = Bundle.open(Golden.bundle());
        assertEquals("chatml", bundle.model.template);
        assertEquals(384, bundle.model.preprocess.imageSize);
        assertEquals(576, bundle.model.hiddenSize);
        assertNotNull(bundle.find("decoder", "int4"));
        assertNull(bundle.find("decoder", "fp64"));
        assertTrue(bundle.numImageTokens > 0);
        bundle.verify(List.of(bundle.find("vision", "fp32")), Bundle.Verify.SIZE);
        assertTrue(bundle.tokenizerPath().toString().endsWith("tokenizer.json"));
    }

    @Test
    public void aMissingDirectoryIsNamed() {
        Path dir = Path.of("no", "such", "bundle");
        assertEquals("no/such/bundle: no such bundle directory",
                org.junit.Assert.assertThrows(BundleError.class, () -> Bundle.open(dir)).getMessage());
    }

    @Test
    public void jsonParsesWhatPythonParses() throws Exception {
        Object v = Json.parse(" {\"a\": [1, -2.5e3, true, null, \"\\u00e9\\ud83d\\ude00\"], \"b\": {}} ");
        assertEquals("{'a': [1, -2500.0, True, None, '\u00e9\ud83d\ude00'], 'b': {}}", PyRepr.repr(v));
        assertEquals(12345678901234L, Json.parse("12345678901234"));
        assertEquals("1e-05", PyRepr.reprFloat(1e-5));
        assertEquals("1e+16", PyRepr.reprFloat(1e16));
        assertEquals("123.0", PyRepr.reprFloat(123));
    }

    @Test
    public void jsonValuesAndErrorsAreThoseOfPythonsJsonLoads() {
        for (Map<String, Object> e : Golden.list("json.json")) {
            String text = (String) e.get("text");
            try {
                Object value = Json.parse(text);
                assertEquals(text, e.get("repr"), PyRepr.repr(value));
            } catch (Json.ParseError err) {
                assertEquals(text, e.get("error"), err.getMessage());
            }
        }
    }
}
