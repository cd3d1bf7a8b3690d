package org.mobilevlm.app;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.mobilevlm.core.BundleError;
import org.mobilevlm.core.MobileVLMError;

/**
 * The token embedding table, a (vocab, hidden) float16 or float32 {@code .npy} file, read row
 * by row with positioned reads: none of it is resident. This is what the Python runtime does
 * (runtime/ort/embeddings.py) and for the same reason: a memory-mapped table becomes resident
 * by far more than the rows a prompt reads (the kernel maps read-around pages), and on a
 * phone those pages count against the app. A positioned read costs a system call per token,
 * microseconds against a decoder step's milliseconds, and leaves the file in the page cache.
 */
final class EmbeddingTable implements AutoCloseable {
    private static final byte[] MAGIC = {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y'};
    private static final Pattern DESCR = Pattern.compile("'descr':\\s*'([<>|=]?)([a-z])(\\d+)'");
    private static final Pattern FORTRAN = Pattern.compile("'fortran_order':\\s*(True|False)");
    private static final Pattern SHAPE = Pattern.compile("'shape':\\s*\\(([^)]*)\\)");

    private final Path path;
    private final FileChannel file;
    private final long offset; // where row 0 starts
    private final int vocab;
    private final int hidden;
    private final int itemBytes; // 2 (float16) or 4 (float32)
    private final ByteBuffer row; // one row's bytes, reused

    /**
     * Opens {@code path}, which must hold a (vocab, hidden) little-endian float table; a file
     * that does not is a {@link BundleError} naming it, as on the Python side.
     */
    EmbeddingTable(Path path, int vocab, int hidden) throws IOException {
        this.path = path;
        this.vocab = vocab;
        this.hidden = hidden;
        this.file = FileChannel.open(path, StandardOpenOption.READ);
        try {
            ByteBuffer start = readFully(0, 12);
            for (int i = 0; i < MAGIC.length; i++) {
                if (start.get(i) != MAGIC[i]) throw bad("not a .npy file");
            }
            int major = start.get(6), minor = start.get(7);
            long headerLength;
            long headerStart;
            if (major == 1 && minor == 0) {
                headerLength = start.getShort(8) & 0xffff;
                headerStart = 10;
            } else if (major == 2 && minor == 0) {
                headerLength = start.getInt(8) & 0xffffffffL;
                headerStart = 12;
            } else {
                throw bad(".npy format version (" + major + ", " + minor + ") is not supported");
            }
            ByteBuffer header = readFully(headerStart, (int) headerLength);
            String text = StandardCharsets.ISO_8859_1.decode(header).toString();
            itemBytes = checkHeader(text);
            offset = headerStart + headerLength;
            long needed = offset + (long) vocab * hidden * itemBytes;
            if (file.size() < needed) {
                throw bad("truncated: fewer rows than its header declares");
            }
        } catch (IOException | RuntimeException e) {
            file.close();
            throw e;
        }
        row = ByteBuffer.allocate(hidden * itemBytes).order(ByteOrder.LITTLE_ENDIAN);
    }

    /** The bytes per value the header declares, after checking dtype, order and shape. */
    private int checkHeader(String header) {
        Matcher descr = DESCR.matcher(header);
        Matcher fortran = FORTRAN.matcher(header);
        Matcher shape = SHAPE.matcher(header);
        if (!descr.find() || !fortran.find() || !shape.find()) {
            throw bad("not a .npy embedding table (unreadable header " + header.trim() + ")");
        }
        // as the Python side words it: "shape (49152, 576) float16, expected (49152, 576)"
        String dims = shape.group(1).trim().replaceAll(",$", "");
        String found = "(" + dims.replaceAll(",\\s*", ", ") + ")";
        String expected = "(" + vocab + ", " + hidden + ")";
        boolean bigEndian = descr.group(1).equals(">");
        int bytes = Integer.parseInt(descr.group(3));
        boolean floats = descr.group(2).equals("f") && (bytes == 2 || bytes == 4);
        if (!found.equals(expected) || fortran.group(1).equals("True") || !floats || bigEndian) {
            String dtype = descr.group(2).equals("f") ? "float" + 8 * bytes : descr.group(0);
            throw bad("shape " + found + " " + dtype + ", expected " + expected
                    + " (little-endian float16 or float32)");
        }
        return bytes;
    }

    int vocabSize() {
        return vocab;
    }

    int hiddenSize() {
        return hidden;
    }

    /** Rows {@code ids}, (ids.length * hidden) row-major float32. */
    synchronized float[] rows(int[] ids) throws IOException {
        float[] out = new float[ids.length * hidden];
        for (int i = 0; i < ids.length; i++) {
            read(ids[i], out, i * hidden);
        }
        return out;
    }

    /** Writes row {@code token} as float32 into {@code out} from {@code at}. */
    synchronized void read(int token, float[] out, int at) throws IOException {
        if (token < 0 || token >= vocab) {
            throw new IndexOutOfBoundsException(
                    "token " + token + " outside the vocabulary of " + vocab);
        }
        row.clear();
        long where = offset + (long) token * hidden * itemBytes;
        while (row.hasRemaining()) {
            if (file.read(row, where + row.position()) < 0) throw bad("truncated at row " + token);
        }
        if (itemBytes == 4) {
            for (int j = 0; j < hidden; j++) out[at + j] = row.getFloat(j * 4);
        } else {
            for (int j = 0; j < hidden; j++) out[at + j] = halfToFloat(row.getShort(j * 2));
        }
    }

    /** IEEE binary16 to binary32, exact (what numpy's astype(float32) gives). */
    static float halfToFloat(short half) {
        int bits = half & 0xffff;
        int sign = (bits & 0x8000) << 16;
        int exponent = (bits >>> 10) & 0x1f;
        int mantissa = bits & 0x3ff;
        if (exponent == 0x1f) { // infinity or NaN
            return Float.intBitsToFloat(sign | 0x7f800000 | (mantissa << 13));
        }
        if (exponent == 0) { // zero or subnormal: mantissa * 2^-24, exact in float32
            float value = mantissa * 0x1p-24f;
            return sign != 0 ? -value : value;
        }
        return Float.intBitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
    }

    private ByteBuffer readFully(long position, int length) throws IOException {
        ByteBuffer buffer = ByteBuffer.allocate(length).order(ByteOrder.LITTLE_ENDIAN);
        while (buffer.hasRemaining()) {
            if (file.read(buffer, position + buffer.position()) < 0) {
                throw bad("not a .npy embedding table (file ends inside its header)");
            }
        }
        buffer.flip();
        return buffer;
    }

    private BundleError bad(String problem) {
        return new BundleError(MobileVLMError.at(path, problem));
    }

    @Override
    public void close() throws IOException {
        file.close();
    }
}
