package org.mobilevlm.app;

import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.media.ExifInterface;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import org.mobilevlm.core.ImageDecoder;
import org.mobilevlm.core.ImageError;
import org.mobilevlm.core.MobileVLMError;
import org.mobilevlm.core.Preprocessor;
import org.mobilevlm.core.RawImage;

/**
 * The platform's part of preprocessing on Android: {@link BitmapFactory} decodes the file to
 * 8-bit RGBA, not premultiplied (the core composites transparency as Pillow does, which needs
 * the straight alpha), and {@link ExifInterface} reads its orientation, which BitmapFactory does
 * not apply; the core applies it. From the {@link RawImage} on, the code is the core's, the one
 * the JVM tests hold to the Python side. Android's decoder, not Pillow's, turns palette,
 * grayscale and 16-bit files into 8-bit RGBA: for 8-bit RGB and RGBA files that is the file's
 * own pixels.
 */
final class AndroidImageDecoder implements ImageDecoder {
    @Override
    public RawImage decode(byte[] encoded, String source) {
        BitmapFactory.Options bounds = new BitmapFactory.Options();
        bounds.inJustDecodeBounds = true;
        BitmapFactory.decodeByteArray(encoded, 0, encoded.length, bounds);
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) {
            throw new ImageError(MobileVLMError.at(source, "not an image Android can decode"));
        }
        Preprocessor.checkSize(bounds.outWidth, bounds.outHeight, source); // before allocating

        BitmapFactory.Options options = new BitmapFactory.Options();
        options.inPreferredConfig = Bitmap.Config.ARGB_8888;
        options.inPremultiplied = false;
        options.inScaled = false;
        Bitmap bitmap = BitmapFactory.decodeByteArray(encoded, 0, encoded.length, options);
        if (bitmap == null) {
            throw new ImageError(MobileVLMError.at(source, "not an image Android can decode"));
        }
        try {
            int width = bitmap.getWidth();
            int height = bitmap.getHeight();
            int[] argb = new int[width * height];
            bitmap.getPixels(argb, 0, width, 0, 0, width, height); // straight (unpremultiplied) ARGB
            boolean alpha = bitmap.hasAlpha();
            int channels = alpha ? 4 : 3;
            byte[] samples = new byte[argb.length * channels];
            for (int p = 0, s = 0; p < argb.length; p++) {
                int c = argb[p];
                samples[s++] = (byte) (c >>> 16);
                samples[s++] = (byte) (c >>> 8);
                samples[s++] = (byte) c;
                if (alpha) samples[s++] = (byte) (c >>> 24);
            }
            return RawImage.of8(width, height, alpha ? "RGBA" : "RGB", samples,
                    orientation(encoded), source);
        } finally {
            bitmap.recycle();
        }
    }

    /** The EXIF orientation (1..8), 1 when the file has none. */
    static int orientation(byte[] encoded) {
        try {
            int value = new ExifInterface(new ByteArrayInputStream(encoded))
                    .getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL);
            return value >= 1 && value <= 8 ? value : 1;
        } catch (IOException | RuntimeException e) {
            return 1; // no readable EXIF: as Pillow, upright
        }
    }
}
