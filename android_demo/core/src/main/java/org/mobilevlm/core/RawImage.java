package org.mobilevlm.core;

/**
 * A decoded image before any conversion, as the platform's decoder found it, in Pillow's terms so
 * that preprocessing converts it as Pillow does: {@code mode} is one of {@code 1 L LA RGB RGBA P
 * I;16}; samples are interleaved per pixel, row-major ({@code samples8} 0..255 for the 8-bit modes,
 * mode 1 as 0 or 255; {@code samples16} for I;16; palette indices in {@code samples8} for P); a
 * palette is RGB triples, with per-entry alphas only when the file declares transparency; {@code
 * orientation} is the EXIF orientation (1 when there is none).
 */
public final class RawImage {
    public final int width;
    public final int height;
    public final String mode;
    public final byte[] samples8;
    public final char[] samples16;
    public final byte[] palette;
    public final byte[] paletteAlpha;
    public final int orientation;
    /** Where it came from, for error messages ("<bytes>" when unknown). */
    public final String source;

    private RawImage(int width, int height, String mode, byte[] samples8, char[] samples16,
            byte[] palette, byte[] paletteAlpha, int orientation, String source) {
        this.width = width;
        this.height = height;
        this.mode = mode;
        this.samples8 = samples8;
        this.samples16 = samples16;
        this.palette = palette;
        this.paletteAlpha = paletteAlpha;
        this.orientation = orientation;
        this.source = source;
        long expected = (long) width * height * channels(mode);
        long have = samples8 != null ? samples8.length : samples16.length;
        if (width < 1 || height < 1 || have != expected) {
            throw new ImageError(MobileVLMError.at(source, "a " + width + "x" + height + " " + mode
                    + " image needs " + expected + " samples, got " + have));
        }
    }

    /** Samples per pixel of a mode. */
    public static int channels(String mode) {
        switch (mode) {
            case "1": case "L": case "P": case "I;16": return 1;
            case "LA": return 2;
            case "RGB": return 3;
            case "RGBA": return 4;
            default: throw new ImageError("image mode " + PyRepr.repr(mode) + " is not supported");
        }
    }

    /** An 8-bit image of mode 1, L, LA, RGB or RGBA. */
    public static RawImage of8(int width, int height, String mode, byte[] samples, int orientation, String source) {
        if (mode.equals("P") || mode.equals("I;16")) {
            throw new ImageError("mode " + mode + " needs its own constructor");
        }
        return new RawImage(width, height, mode, samples, null, null, null, orientation, source);
    }

    /** A 16-bit grayscale image (Pillow's I;16). */
    public static RawImage of16(int width, int height, char[] samples, int orientation, String source) {
        return new RawImage(width, height, "I;16", null, samples, null, null, orientation, source);
    }

    /** A palette image: indices, RGB triples, and alphas (null: the file declares no transparency). */
    public static RawImage ofPalette(int width, int height, byte[] indices, byte[] paletteRgb,
            byte[] alpha, int orientation, String source) {
        return new RawImage(width, height, "P", indices, null, paletteRgb, alpha, orientation, source);
    }

    RawImage withSamples(int w, int h, byte[] s8, char[] s16) {
        return new RawImage(w, h, mode, s8, s16, palette, paletteAlpha, 1, source);
    }
}
