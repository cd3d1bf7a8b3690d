package org.mobilevlm.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.nio.file.Files;
import java.util.List;
import java.util.Map;
import org.junit.Test;
import org.mobilevlm.core.desktop.ImageIoDecoder;

/** Pixel tensors of every golden image (each mode, orientation, size, aspect and filter) agree
 * with mobilevlm's preprocess within 1e-5, that is with identical 8-bit pixels. */
public class PreprocessorTest {
    static PreprocessConfig config(Map<?, ?> c) {
        List<?> mean = (List<?>) c.get("mean");
        List<?> std = (List<?>) c.get("std");
        return new PreprocessConfig(((Long) c.get("image_size")).intValue(),
                new double[] {Golden.number(mean.get(0)), Golden.number(mean.get(1)), Golden.number(mean.get(2))},
                new double[] {Golden.number(std.get(0)), Golden.number(std.get(1)), Golden.number(std.get(2))},
                (String) c.get("aspect"), (String) c.get("resample"));
    }

    @Test
    public void everyGoldenImageGivesPythonsPixels() throws Exception {
        ImageIoDecoder decoder = new ImageIoDecoder();
        int checked = 0;
        for (Map<String, Object> e : Golden.list("images.json")) {
            String name = (String) e.get("image");
            byte[] bytes = Files.readAllBytes(Golden.dir().resolve(name));
            RawImage raw = decoder.decode(bytes, name);
            assertEquals(name + " decoded in Pillow's mode", e.get("mode"), raw.mode);
            PreprocessConfig config = config((Map<?, ?>) e.get("config"));
            float[] pixels = new Preprocessor(config).pixels(raw);
            Npy.Array expected = Golden.npy((String) e.get("pixels"));
            assertArrayEquals(name, new int[] {3, config.imageSize, config.imageSize}, expected.shape);
            double worst = 0;
            for (int k = 0; k < pixels.length; k++) worst = Math.max(worst, Math.abs(pixels[k] - expected.data[k]));
            assertTrue(name + " differs by " + worst, worst <= 1e-5);
            checked++;
        }
        assertTrue(checked >= 30);
    }

    @Test
    public void anImageOverThePixelLimitIsRefusedByName() {
        ImageError e = assertThrows(ImageError.class, () -> Preprocessor.checkSize(10000, 6401, "big.png"));
        assertEquals("big.png: 10000x6401 is over the 64,000,000-pixel limit", e.getMessage());
    }

    @Test
    public void aFileThatIsNoImageIsAnImageError() {
        ImageError e = assertThrows(ImageError.class,
                () -> new ImageIoDecoder().decode("hello".getBytes(java.nio.charset.StandardCharsets.UTF_8), "x.png"));
        assertTrue(e.getMessage(), e.getMessage().startsWith("x.png: cannot read image"));
    }

    @Test
    public void anUnknownFilterIsRefused() {
        PreprocessConfig c = new PreprocessConfig(8, new double[] {0.5, 0.5, 0.5}, new double[] {0.5, 0.5, 0.5}, "pad", "box");
        RawImage image = RawImage.of8(2, 3, "L", new byte[6], 1, "x");
        assertEquals("unknown resample filter 'box'",
                assertThrows(ImageError.class, () -> new Preprocessor(c).pixels(image)).getMessage());
    }
}
