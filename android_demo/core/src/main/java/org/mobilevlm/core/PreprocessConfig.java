package org.mobilevlm.core;

import java.util.Arrays;
import java.util.List;

/**
 * How an image becomes pixel values (mirrors {@code mobilevlm.config.PreprocessConfig}): the
 * square side, the mean and std of normalization (the mean, times 255, is also the padding fill),
 * the aspect handling (pad, crop or resize) and the resampling filter.
 */
public final class PreprocessConfig {
    public static final int MAX_IMAGE_SIZE = 4096;
    static final List<String> ASPECTS = List.of("pad", "crop", "resize");

    public final int imageSize;
    public final double[] mean;
    public final double[] std;
    public final String aspect;
    public final String resample;

    public PreprocessConfig(int imageSize, double[] mean, double[] std, String aspect, String resample) {
        this.imageSize = imageSize;
        this.mean = mean.clone();
        this.std = std.clone();
        this.aspect = aspect;
        this.resample = resample;
        if (imageSize < 1 || imageSize > MAX_IMAGE_SIZE) {
            throw new ConfigError(
                    "image_size must be 1 to " + MAX_IMAGE_SIZE + ", got " + imageSize);
        }
        if (!ASPECTS.contains(aspect)) {
            throw new ConfigError(
                    "aspect must be one of pad, crop, resize, got " + PyRepr.repr(aspect));
        }
        for (double s : std) {
            if (s <= 0) {
                throw new ConfigError("std must be positive, got " + tuple(std));
            }
        }
    }

    /** CLIP's defaults, as the Python dataclass has them. */
    public static PreprocessConfig defaults() {
        return new PreprocessConfig(336, new double[] {0.48145466, 0.4578275, 0.40821073},
                new double[] {0.26862954, 0.26130258, 0.27577711}, "pad", "bicubic");
    }

    static PreprocessConfig fromJson(Object data) {
        ConfigFields f = ConfigFields.of("PreprocessConfig", data);
        PreprocessConfig d = defaults();
        long size = f.integer("image_size", (long) d.imageSize, false);
        double[] mean = f.floats("mean", d.mean);
        double[] std = f.floats("std", d.std);
        String aspect = f.string("aspect", d.aspect);
        String resample = f.string("resample", d.resample);
        if (size < Integer.MIN_VALUE || size > Integer.MAX_VALUE) {
            throw new ConfigError("image_size must be 1 to " + MAX_IMAGE_SIZE + ", got " + size);
        }
        return new PreprocessConfig((int) size, mean, std, aspect, resample);
    }

    private static String tuple(double[] values) {
        StringBuilder b = new StringBuilder("(");
        for (int k = 0; k < values.length; k++) {
            b.append(k > 0 ? ", " : "").append(PyRepr.reprFloat(values[k]));
        }
        return b.append(')').toString();
    }

    @Override
    public String toString() {
        return "PreprocessConfig(" + imageSize + ", " + Arrays.toString(mean) + ", "
                + Arrays.toString(std) + ", " + aspect + ", " + resample + ")";
    }
}
