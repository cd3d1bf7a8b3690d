package org.mobilevlm.core;

/**
 * Any decoded image to the vision encoder's input (mirrors {@code
 * mobilevlm.generation.preprocess.preprocess}): EXIF orientation applied, the mode converted to
 * RGB as Pillow converts it (transparency composited on white with Pillow's integer arithmetic,
 * 16-bit grayscale shifted to 8 bits when it uses more), padded to a square with the mean color
 * (or cropped, or squashed), Pillow's resize, then {@code (x / 255 - mean) / std} in float32,
 * channel-first: a float[3 * size * size].
 */
public final class Preprocessor {
    /** The largest image decoded (a 64-megapixel photo). */
    public static final long MAX_IMAGE_PIXELS = 64_000_000L;
    /** The square an image is padded to, at most. */
    public static final int MAX_PAD_SIDE = 4096;

    public final PreprocessConfig config;

    public Preprocessor(PreprocessConfig config) {
        this.config = config;
    }

    /** The ImageError a decoder raises, from the header, for an image over the pixel limit. */
    public static void checkSize(int width, int height, String source) {
        if ((long) width * height > MAX_IMAGE_PIXELS) {
            throw new ImageError(MobileVLMError.at(source, width + "x" + height
                    + " is over the 64,000,000-pixel limit"));
        }
    }

    /** The (3, size, size) channel-first pixel tensor of {@code image}. */
    public float[] pixels(RawImage image) {
        checkSize(image.width, image.height, image.source);
        RawImage upright = Orientation.apply(image);
        byte[] rgb = ToRgb.convert(upright);
        int w = upright.width;
        int h = upright.height;
        int size = config.imageSize;
        String filter = config.resample;
        switch (config.aspect) {
            case "pad": {
                int longSide = Math.max(w, h);
                if (longSide > MAX_PAD_SIDE) { // a panorama's square would be its long side squared
                    double scale = (double) MAX_PAD_SIDE / longSide;
                    int nw = Math.max(1, (int) Math.rint(w * scale));
                    int nh = Math.max(1, (int) Math.rint(h * scale));
                    rgb = PillowResample.resize(rgb, w, h, 3, nw, nh, filter);
                    w = nw;
                    h = nh;
                }
                int side = Math.max(w, h);
                if (w != h) {
                    rgb = padToSquare(rgb, w, h, side);
                }
                rgb = PillowResample.resize(rgb, side, side, 3, size, size, filter);
                break;
            }
            case "crop": {
                int shortSide = Math.min(w, h);
                int longSide = Math.max(w, h);
                int newLong = (int) (size * (double) longSide / shortSide);
                int nw = w <= h ? size : newLong;
                int nh = w <= h ? newLong : size;
                rgb = PillowResample.resize(rgb, w, h, 3, nw, nh, filter);
                rgb = crop(rgb, nw, (nh - size) / 2, (nw - size) / 2, size);
                break;
            }
            default: // "resize": squash to the square
                rgb = PillowResample.resize(rgb, w, h, 3, size, size, filter);
        }
        return normalize(rgb, size);
    }

    private byte[] padToSquare(byte[] rgb, int w, int h, int side) {
        byte[] out = new byte[side * side * 3];
        for (int c = 0; c < 3; c++) {
            byte fill = (byte) (int) (config.mean[c] * 255);
            for (int p = c; p < out.length; p += 3) out[p] = fill;
        }
        int left = (side - w) / 2;
        int top = (side - h) / 2;
        for (int y = 0; y < h; y++) {
            System.arraycopy(rgb, y * w * 3, out, ((y + top) * side + left) * 3, w * 3);
        }
        return out;
    }

    private static byte[] crop(byte[] rgb, int w, int top, int left, int size) {
        byte[] out = new byte[size * size * 3];
        for (int y = 0; y < size; y++) {
            System.arraycopy(rgb, ((y + top) * w + left) * 3, out, y * size * 3, size * 3);
        }
        return out;
    }

    /** {@code (x * float32(1/255) - mean) / std}, each step in float32 as numpy computes it. */
    private float[] normalize(byte[] rgb, int size) {
        float inv = (float) (1.0 / 255);
        float[] mean = {(float) config.mean[0], (float) config.mean[1], (float) config.mean[2]};
        float[] std = {(float) config.std[0], (float) config.std[1], (float) config.std[2]};
        int plane = size * size;
        float[] out = new float[3 * plane];
        for (int p = 0; p < plane; p++) {
            for (int c = 0; c < 3; c++) {
                float x = (rgb[p * 3 + c] & 0xff) * inv;
                out[c * plane + p] = (x - mean[c]) / std[c];
            }
        }
        return out;
    }
}
