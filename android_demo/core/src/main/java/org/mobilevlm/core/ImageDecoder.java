package org.mobilevlm.core;

/**
 * Decodes an image file into a {@link RawImage}: the platform's part (javax.imageio on the
 * desktop JVM, BitmapFactory on Android), so that the core needs no java.desktop. An
 * implementation throws {@link ImageError} naming the source for a file it cannot read.
 */
public interface ImageDecoder {
    /** {@code source} names the bytes in error messages (a path, or "<bytes>"). */
    RawImage decode(byte[] encoded, String source);
}
