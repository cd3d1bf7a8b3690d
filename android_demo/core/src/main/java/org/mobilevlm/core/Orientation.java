package org.mobilevlm.core;

/**
 * EXIF orientation applied to the samples, as Pillow's {@code ImageOps.exif_transpose} does:
 * 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90
 * counter-clockwise; the result has orientation 1.
 */
final class Orientation {
    private Orientation() {}

    static RawImage apply(RawImage im) {
        int o = im.orientation;
        if (o < 2 || o > 8) return im;
        int w = im.width;
        int h = im.height;
        boolean swap = o >= 5;
        int ow = swap ? h : w;
        int oh = swap ? w : h;
        int ch = RawImage.channels(im.mode);
        byte[] s8 = im.samples8 != null ? new byte[im.samples8.length] : null;
        char[] s16 = im.samples16 != null ? new char[im.samples16.length] : null;
        for (int y = 0; y < oh; y++) {
            for (int x = 0; x < ow; x++) {
                int sx;
                int sy;
                switch (o) {
                    case 2: sx = w - 1 - x; sy = y; break;
                    case 3: sx = w - 1 - x; sy = h - 1 - y; break;
                    case 4: sx = x; sy = h - 1 - y; break;
                    case 5: sx = y; sy = x; break;
                    case 6: sx = y; sy = h - 1 - x; break;
                    case 7: sx = w - 1 - y; sy = h - 1 - x; break;
                    default: sx = w - 1 - y; sy = x; break;
                }
                int from = (sy * w + sx) * ch;
                int to = (y * ow + x) * ch;
                if (s8 != null) System.arraycopy(im.samples8, from, s8, to, ch);
                else System.arraycopy(im.samples16, from, s16, to, ch);
            }
        }
        return im.withSamples(ow, oh, s8, s16);
    }
}
