package org.mobilevlm.core;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * NumPy's .npy format for float32 and int32 arrays, little-endian, C order: what the CLI writes
 * for a pixel tensor and what the tests read the golden files from.
 */
public final class Npy {
    /** An array read from a .npy file: its shape and its values as floats. */
    public static final class Array {
        public final int[] shape;
        public final float[] data;

        Array(int[] shape, float[] data) {
            this.shape = shape;
            this.data = data;
        }
    }

    private Npy() {}

    /** Writes {@code data} of {@code shape} as float32, to a temp file renamed into place. */
    public static void writeFloat32(Path path, float[] data, int... shape) throws IOException {
        StringBuilder dims = new StringBuilder();
        for (int d : shape) dims.append(d).append(", ");
        String dimText = shape.length == 1 ? shape[0] + "," : dims.substring(0, dims.length() - 2);
        String header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dimText + "), }";
        int total = 10 + header.length() + 1;
        int pad = (64 - total % 64) % 64;
        header = header + " ".repeat(pad) + "\n";
        ByteBuffer buf = ByteBuffer.allocate(10 + header.length() + 4 * data.length).order(ByteOrder.LITTLE_ENDIAN);
        buf.put((byte) 0x93).put("NUMPY".getBytes(StandardCharsets.US_ASCII)).put((byte) 1).put((byte) 0);
        buf.putShort((short) header.length()).put(header.getBytes(StandardCharsets.US_ASCII));
        buf.asFloatBuffer().put(data);
        Path absolute = path.toAbsolutePath();
        Path tmp = Files.createTempFile(absolute.getParent(), "." + absolute.getFileName(), ".tmp");
        try {
            Files.write(tmp, buf.array());
            Files.move(tmp, absolute, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    private static final Pattern DESCR = Pattern.compile("'descr':\\s*'([<|=]?)([fiu])(\\d)'");
    private static final Pattern SHAPE = Pattern.compile("'shape':\\s*\\(([^)]*)\\)");

    /** A little-endian float32, float64, int32 or int64 array, values as floats. */
    public static Array read(Path path) throws IOException {
        ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(path)).order(ByteOrder.LITTLE_ENDIAN);
        int major = b.get(6);
        b.position(8);
        int headerLength = major == 1 ? b.getShort() & 0xffff : b.getInt();
        byte[] headerBytes = new byte[headerLength];
        b.get(headerBytes);
        String header = new String(headerBytes, StandardCharsets.US_ASCII);
        Matcher d = DESCR.matcher(header);
        Matcher s = SHAPE.matcher(header);
        if (!d.find() || !s.find() || header.contains("'fortran_order': True")) {
            throw new IOException(path + ": unsupported .npy header " + header.trim());
        }
        String[] parts = s.group(1).split(",");
        int count = 0;
        int total = 1;
        int[] shape = new int[parts.length];
        for (String p : parts) {
            if (!p.isBlank()) {
                shape[count] = Integer.parseInt(p.trim());
                total *= shape[count++];
            }
        }
        shape = java.util.Arrays.copyOf(shape, count);
        float[] out = new float[total];
        String kind = d.group(2) + d.group(3);
        for (int k = 0; k < total; k++) {
            switch (kind) {
                case "f4": out[k] = b.getFloat(); break;
                case "f8": out[k] = (float) b.getDouble(); break;
                case "i4": out[k] = b.getInt(); break;
                case "i8": out[k] = b.getLong(); break;
                case "u1": out[k] = b.get() & 0xff; break;
                default: throw new IOException(path + ": unsupported dtype " + kind);
            }
        }
        return new Array(shape, out);
    }
}
