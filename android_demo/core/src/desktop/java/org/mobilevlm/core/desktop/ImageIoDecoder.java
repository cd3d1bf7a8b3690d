package org.mobilevlm.core.desktop;

import java.awt.image.BufferedImage;
import java.awt.image.ColorModel;
import java.awt.image.DataBuffer;
import java.awt.image.IndexColorModel;
import java.awt.image.Raster;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.Iterator;
import javax.imageio.ImageIO;
import javax.imageio.ImageReader;
import javax.imageio.stream.ImageInputStream;
import org.mobilevlm.core.Exif;
import org.mobilevlm.core.ImageDecoder;
import org.mobilevlm.core.ImageError;
import org.mobilevlm.core.MobileVLMError;
import org.mobilevlm.core.Preprocessor;
import org.mobilevlm.core.RawImage;

/**
 * The desktop JVM's {@link ImageDecoder}: javax.imageio decodes, and the result is described in
 * the mode Pillow opens the same file in, so that preprocessing matches the Python side.
 *
 * <p>For PNG the chunks are read here too, because ImageIO's view differs from Pillow's: the
 * palette and its alphas come from PLTE and tRNS as stored; 16-bit color keeps its high byte as
 * Pillow's decoder does (16-bit grayscale stays I;16); 1-bit grayscale is Pillow's mode 1 and 2-
 * and 4-bit grayscale are scaled to 8 bits; a tRNS color key of grayscale or RGB images, which
 * ImageIO turns into an alpha band and Pillow ignores on conversion, is dropped; eXIf gives the
 * orientation. Other formats (BMP, GIF, TIFF) are described from ImageIO's color model.
 */
public final class ImageIoDecoder implements ImageDecoder {
    @Override
    public RawImage decode(byte[] encoded, String source) {
        BufferedImage image;
        try (ImageInputStream in = ImageIO.createImageInputStream(new ByteArrayInputStream(encoded))) {
            Iterator<ImageReader> readers = ImageIO.getImageReaders(in);
            if (in == null || !readers.hasNext()) {
                throw new ImageError(MobileVLMError.at(source, "cannot read image (not an image format this runtime reads)"));
            }
            ImageReader reader = readers.next();
            try {
                reader.setInput(in, true, true);
                Preprocessor.checkSize(reader.getWidth(0), reader.getHeight(0), source);
                image = reader.read(0);
            } finally {
                reader.dispose();
            }
        } catch (IOException | RuntimeException e) {
            if (e instanceof ImageError) throw (ImageError) e;
            throw new ImageError(MobileVLMError.at(source, "cannot read image (" + e.getClass().getSimpleName() + ": " + e.getMessage() + ")"));
        }
        Png png = Png.read(encoded);
        return png != null ? fromPng(image, png, source) : fromColorModel(image, source);
    }

    /** What Pillow reads from a PNG's chunks: header, palette, transparency, EXIF. */
    private static final class Png {
        int bitDepth;
        int colorType;
        byte[] palette;
        byte[] transparency;
        int orientation = 1;

        static Png read(byte[] b) {
            byte[] signature = {(byte) 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
            if (b.length < 8 || !ByteBuffer.wrap(b, 0, 8).equals(ByteBuffer.wrap(signature))) return null;
            Png png = new Png();
            int at = 8;
            while (at + 8 <= b.length) {
                int length = ByteBuffer.wrap(b, at, 4).getInt();
                String type = new String(b, at + 4, 4, java.nio.charset.StandardCharsets.ISO_8859_1);
                int data = at + 8;
                if (length < 0 || data + length > b.length) break;
                byte[] chunk = java.util.Arrays.copyOfRange(b, data, data + length);
                switch (type) {
                    case "IHDR": png.bitDepth = chunk[8] & 0xff; png.colorType = chunk[9] & 0xff; break;
                    case "PLTE": png.palette = chunk; break;
                    case "tRNS": png.transparency = chunk; break;
                    case "eXIf": png.orientation = Exif.orientation(chunk); break;
                    default: break;
                }
                if (type.equals("IEND")) break;
                at = data + length + 4;
            }
            return png;
        }
    }

    private static RawImage fromPng(BufferedImage image, Png png, String source) {
        int w = image.getWidth();
        int h = image.getHeight();
        Raster r = image.getRaster();
        int o = png.orientation;
        switch (png.colorType) {
            case 0: // grayscale
                if (png.bitDepth == 16) {
                    char[] s = new char[w * h];
                    for (int y = 0; y < h; y++) for (int x = 0; x < w; x++) s[y * w + x] = (char) r.getSample(x, y, 0);
                    return RawImage.of16(w, h, s, o, source);
                }
                int scale = png.bitDepth == 1 ? 255 : png.bitDepth == 2 ? 85 : png.bitDepth == 4 ? 17 : 1;
                byte[] g = bands(r, w, h, new int[] {0}, 0, scale);
                return RawImage.of8(w, h, png.bitDepth == 1 ? "1" : "L", g, o, source);
            case 2:
                return RawImage.of8(w, h, "RGB", bands(r, w, h, new int[] {0, 1, 2}, png.bitDepth == 16 ? 8 : 0, 1), o, source);
            case 3: {
                byte[] indices = bands(r, w, h, new int[] {0}, 0, 1);
                byte[] palette = png.palette != null ? png.palette : new byte[0];
                return RawImage.ofPalette(w, h, indices, palette, png.transparency, o, source);
            }
            case 4:
                return RawImage.of8(w, h, "LA", bands(r, w, h, new int[] {0, 1}, png.bitDepth == 16 ? 8 : 0, 1), o, source);
            case 6:
                return RawImage.of8(w, h, "RGBA", bands(r, w, h, new int[] {0, 1, 2, 3}, png.bitDepth == 16 ? 8 : 0, 1), o, source);
            default:
                throw new ImageError(MobileVLMError.at(source, "cannot read image (PNG color type " + png.colorType + ")"));
        }
    }

    /** The raster's {@code which} bands, interleaved, each sample shifted right then scaled. */
    private static byte[] bands(Raster r, int w, int h, int[] which, int shift, int scale) {
        byte[] out = new byte[w * h * which.length];
        int[] row = new int[w];
        for (int b = 0; b < which.length; b++) {
            for (int y = 0; y < h; y++) {
                r.getSamples(0, y, w, 1, which[b], row);
                for (int x = 0; x < w; x++) {
                    out[(y * w + x) * which.length + b] = (byte) ((row[x] >> shift) * scale);
                }
            }
        }
        return out;
    }

    private static RawImage fromColorModel(BufferedImage image, String source) {
        int w = image.getWidth();
        int h = image.getHeight();
        Raster r = image.getRaster();
        ColorModel cm = image.getColorModel();
        if (cm instanceof IndexColorModel) {
            IndexColorModel icm = (IndexColorModel) cm;
            int n = icm.getMapSize();
            byte[] palette = new byte[3 * n];
            byte[] alpha = new byte[n];
            boolean transparent = false;
            for (int i = 0; i < n; i++) {
                palette[3 * i] = (byte) icm.getRed(i);
                palette[3 * i + 1] = (byte) icm.getGreen(i);
                palette[3 * i + 2] = (byte) icm.getBlue(i);
                alpha[i] = (byte) icm.getAlpha(i);
                transparent |= icm.getAlpha(i) != 255;
            }
            return RawImage.ofPalette(w, h, bands(r, w, h, new int[] {0}, 0, 1), palette, transparent ? alpha : null, 1, source);
        }
        int bands = r.getNumBands();
        int shift = r.getTransferType() == DataBuffer.TYPE_USHORT ? 8 : 0;
        if (bands == 1 && shift == 8) {
            char[] s = new char[w * h];
            for (int y = 0; y < h; y++) for (int x = 0; x < w; x++) s[y * w + x] = (char) r.getSample(x, y, 0);
            return RawImage.of16(w, h, s, 1, source);
        }
        String mode = bands == 1 ? "L" : bands == 2 ? "LA" : bands == 3 ? "RGB" : "RGBA";
        int[] which = new int[Math.min(bands, 4)];
        for (int b = 0; b < which.length; b++) which[b] = b;
        return RawImage.of8(w, h, mode, bands(r, w, h, which, shift, 1), 1, source);
    }
}
