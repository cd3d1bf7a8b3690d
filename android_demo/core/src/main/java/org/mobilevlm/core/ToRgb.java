package org.mobilevlm.core;

/**
 * Any {@link RawImage} mode to 8-bit RGB, as {@code mobilevlm.generation.preprocess._to_rgb} has
 * Pillow do it: I;16 shifted right by 8 only when some sample exceeds 255; a palette image with
 * transparency, LA and RGBA composited over opaque white with Pillow's {@code alpha_composite}
 * integer arithmetic; L and mode 1 replicated; a palette image without transparency looked up.
 */
final class ToRgb {
    private ToRgb() {}

    static byte[] convert(RawImage im) {
        int n = im.width * im.height;
        byte[] out = new byte[n * 3];
        switch (im.mode) {
            case "RGB":
                return im.samples8.clone();
            case "1":
            case "L":
                for (int p = 0; p < n; p++) gray(out, p, im.samples8[p] & 0xff);
                return out;
            case "I;16": {
                int max = 0;
                for (char c : im.samples16) max = Math.max(max, c);
                int shift = max > 255 ? 8 : 0;
                for (int p = 0; p < n; p++) gray(out, p, im.samples16[p] >> shift);
                return out;
            }
            case "LA":
                for (int p = 0; p < n; p++) {
                    int l = im.samples8[2 * p] & 0xff;
                    composite(out, p, l, l, l, im.samples8[2 * p + 1] & 0xff);
                }
                return out;
            case "RGBA":
                for (int p = 0; p < n; p++) {
                    byte[] s = im.samples8;
                    composite(out, p, s[4 * p] & 0xff, s[4 * p + 1] & 0xff, s[4 * p + 2] & 0xff, s[4 * p + 3] & 0xff);
                }
                return out;
            case "P":
                for (int p = 0; p < n; p++) {
                    int i = im.samples8[p] & 0xff;
                    int r = entry(im.palette, 3 * i);
                    int g = entry(im.palette, 3 * i + 1);
                    int b = entry(im.palette, 3 * i + 2);
                    if (im.paletteAlpha == null) {
                        out[3 * p] = (byte) r;
                        out[3 * p + 1] = (byte) g;
                        out[3 * p + 2] = (byte) b;
                    } else {
                        int a = i < im.paletteAlpha.length ? im.paletteAlpha[i] & 0xff : 255;
                        composite(out, p, r, g, b, a);
                    }
                }
                return out;
            default:
                throw new ImageError(MobileVLMError.at(im.source, "image mode " + im.mode + " is not supported"));
        }
    }

    /** A palette entry; entries past the palette's end are black, as in Pillow. */
    private static int entry(byte[] palette, int k) {
        return k < palette.length ? palette[k] & 0xff : 0;
    }

    private static void gray(byte[] out, int p, int v) {
        out[3 * p] = out[3 * p + 1] = out[3 * p + 2] = (byte) v;
    }

    /** Pillow's alpha_composite of (r, g, b, a) over opaque white, 7 bits of extra precision. */
    private static void composite(byte[] out, int p, int r, int g, int b, int a) {
        if (a == 0) {
            out[3 * p] = out[3 * p + 1] = out[3 * p + 2] = (byte) 255;
            return;
        }
        final int bits = 7;
        int blend = 255 * (255 - a); // the background's alpha times what shows through
        int outA255 = a * 255 + blend;
        int coef1 = a * 255 * 255 * (1 << bits) / outA255;
        int coef2 = 255 * (1 << bits) - coef1;
        out[3 * p] = (byte) channel(r, coef1, coef2);
        out[3 * p + 1] = (byte) channel(g, coef1, coef2);
        out[3 * p + 2] = (byte) channel(b, coef1, coef2);
    }

    private static int channel(int src, int coef1, int coef2) {
        int tmp = src * coef1 + 255 * coef2 + (0x80 << 7);
        return (((tmp >> 8) + tmp) >> 8) >> 7;
    }
}
