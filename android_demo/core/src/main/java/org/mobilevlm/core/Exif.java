package org.mobilevlm.core;

/**
 * The orientation tag (0x0112) of an EXIF block: what every decoder needs to apply it as Pillow's
 * {@code ImageOps.exif_transpose} does, whatever the container (a PNG eXIf chunk, a JPEG APP1).
 */
public final class Exif {
    private Exif() {}

    /** The orientation (1..8) in a TIFF-structured EXIF block, optionally prefixed with
     * "Exif\0\0"; 1 when it has none or the block is malformed. */
    public static int orientation(byte[] b) {
        int base = 0;
        if (b.length >= 6 && b[0] == 'E' && b[1] == 'x' && b[2] == 'i' && b[3] == 'f' && b[4] == 0 && b[5] == 0) {
            base = 6;
        }
        if (b.length < base + 8) return 1;
        boolean little;
        if (b[base] == 'I' && b[base + 1] == 'I') little = true;
        else if (b[base] == 'M' && b[base + 1] == 'M') little = false;
        else return 1;
        long ifd = u32(b, base + 4, little);
        if (ifd < 0 || base + ifd + 2 > b.length) return 1;
        int at = (int) (base + ifd);
        int count = u16(b, at, little);
        for (int k = 0; k < count; k++) {
            int entry = at + 2 + 12 * k;
            if (entry + 12 > b.length) return 1;
            if (u16(b, entry, little) == 0x0112) {
                int value = u16(b, entry + 8, little);
                return value >= 1 && value <= 8 ? value : 1;
            }
        }
        return 1;
    }

    private static int u16(byte[] b, int at, boolean little) {
        int x = b[at] & 0xff;
        int y = b[at + 1] & 0xff;
        return little ? x | (y << 8) : (x << 8) | y;
    }

    private static long u32(byte[] b, int at, boolean little) {
        long v = 0;
        for (int k = 0; k < 4; k++) {
            int byt = b[at + (little ? 3 - k : k)] & 0xff;
            v = (v << 8) | byt;
        }
        return v;
    }
}
