package org.mobilevlm.core;

/**
 * Pillow's convolution resize of 8-bit images (Image.resize with BICUBIC, BILINEAR or LANCZOS),
 * reproduced to the bit, because the vision encoder was trained on Pillow's output.
 *
 * <p>The algorithm, in Pillow's order: per output column (then row) the filter's weights over the
 * input pixels within {@code support * max(scale, 1)} of the output pixel's center, normalized to
 * sum 1 in double precision, then rounded to fixed point with 22 fractional bits (32 - 8 - 2:
 * 8 bits of value and two of headroom for the negative lobes); each output is the integer sum
 * plus one half, shifted down and clipped to 0..255. The horizontal pass runs first, over only
 * the input rows the vertical pass reads, and each pass rounds to 8 bits.
 */
final class PillowResample {
    private static final int PRECISION_BITS = 32 - 8 - 2;

    private PillowResample() {}

    /** The filter's support (its radius at scale 1) and weight function. */
    private static double support(String filter) {
        switch (filter) {
            case "bilinear": return 1.0;
            case "bicubic": return 2.0;
            case "lanczos": return 3.0;
            default: throw new ImageError(filter.equals("nearest")
                    ? "resample filter 'nearest' is not supported by the Java core"
                    : "unknown resample filter " + PyRepr.repr(filter));
        }
    }

    private static double weight(String filter, double x) {
        switch (filter) {
            case "bilinear":
                if (x < 0.0) x = -x;
                return x < 1.0 ? 1.0 - x : 0.0;
            case "bicubic": {
                final double a = -0.5;
                if (x < 0.0) x = -x;
                if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
                if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
                return 0.0;
            }
            default: // lanczos: a sinc windowed by a sinc three times wider
                return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0;
        }
    }

    private static double sinc(double x) {
        if (x == 0.0) return 1.0;
        x = x * Math.PI;
        return Math.sin(x) / x;
    }

    /** Per output pixel: the first input pixel, the count, and fixed-point weights (ksize each). */
    private static final class Coefficients {
        final int ksize;
        final int[] bounds;
        final int[] weights;

        Coefficients(int inSize, int outSize, String filter) {
            double scale = (double) ((float) inSize) / outSize;
            double filterScale = Math.max(scale, 1.0);
            double support = support(filter) * filterScale;
            ksize = (int) Math.ceil(support) * 2 + 1;
            bounds = new int[outSize * 2];
            weights = new int[outSize * ksize];
            double[] k = new double[ksize];
            for (int xx = 0; xx < outSize; xx++) {
                double center = (xx + 0.5) * scale;
                double ss = 1.0 / filterScale;
                int xmin = Math.max((int) (center - support + 0.5), 0);
                int xmax = Math.min((int) (center + support + 0.5), inSize) - xmin;
                double ww = 0.0;
                for (int x = 0; x < xmax; x++) {
                    double w = weight(filter, (x + xmin - center + 0.5) * ss);
                    k[x] = w;
                    ww += w;
                }
                for (int x = 0; x < xmax; x++) {
                    double w = ww != 0.0 ? k[x] / ww : k[x];
                    weights[xx * ksize + x] = w < 0
                            ? (int) (-0.5 + w * (1 << PRECISION_BITS))
                            : (int) (0.5 + w * (1 << PRECISION_BITS));
                }
                bounds[xx * 2] = xmin;
                bounds[xx * 2 + 1] = xmax;
            }
        }
    }

    private static int clip8(int sum) {
        int v = sum >> PRECISION_BITS;
        return v < 0 ? 0 : Math.min(v, 255);
    }

    /** {@code src} (w x h, {@code channels} interleaved bytes) resized to outW x outH. */
    static byte[] resize(byte[] src, int w, int h, int channels, int outW, int outH, String filter) {
        support(filter); // refuse an unknown filter even when no pass runs
        if (outW == w && outH == h) return src.clone();
        Coefficients vertical = new Coefficients(h, outH, filter);
        int first = vertical.bounds[0];
        int last = vertical.bounds[outH * 2 - 2] + vertical.bounds[outH * 2 - 1];
        byte[] image = src;
        int rowOffset = 0;
        int width = w;
        if (outW != w) {
            Coefficients c = new Coefficients(w, outW, filter);
            int rows = last - first;
            byte[] out = new byte[outW * rows * channels];
            for (int y = 0; y < rows; y++) {
                int inRow = (y + first) * w * channels;
                for (int xx = 0; xx < outW; xx++) {
                    int xmin = c.bounds[xx * 2];
                    int xmax = c.bounds[xx * 2 + 1];
                    int kk = xx * c.ksize;
                    for (int ch = 0; ch < channels; ch++) {
                        int ss = 1 << (PRECISION_BITS - 1);
                        for (int x = 0; x < xmax; x++) {
                            ss += (src[inRow + (x + xmin) * channels + ch] & 0xff) * c.weights[kk + x];
                        }
                        out[(y * outW + xx) * channels + ch] = (byte) clip8(ss);
                    }
                }
            }
            image = out;
            rowOffset = first;
            width = outW;
        }
        if (outH == h) return image;
        byte[] out = new byte[width * outH * channels];
        for (int yy = 0; yy < outH; yy++) {
            int ymin = vertical.bounds[yy * 2] - rowOffset;
            int ymax = vertical.bounds[yy * 2 + 1];
            int kk = yy * vertical.ksize;
            for (int xx = 0; xx < width; xx++) {
                for (int ch = 0; ch < channels; ch++) {
                    int ss = 1 << (PRECISION_BITS - 1);
                    for (int y = 0; y < ymax; y++) {
                        ss += (image[((y + ymin) * width + xx) * channels + ch] & 0xff) * vertical.weights[kk + y];
                    }
                    out[(yy * width + xx) * channels + ch] = (byte) clip8(ss);
                }
            }
        }
        return out;
    }
}
