package org.mobilevlm.app;

import android.content.SharedPreferences;

/** What the settings dialog sets, kept in the app's preferences. */
final class Settings {
    ExecutionProviders.Provider provider = ExecutionProviders.Provider.CPU;
    String precision; // null: the fastest the bundle has
    int threads; // 0: ONNX Runtime's default (one per core)
    int context = 1024; // KV cache positions, allocated at load
    int maxNewTokens = 128; // the Python side's default
    double temperature; // 0: greedy, the Python side's default

    static Settings read(SharedPreferences prefs) {
        Settings s = new Settings();
        try {
            s.provider = ExecutionProviders.Provider.valueOf(prefs.getString("provider", "CPU"));
        } catch (IllegalArgumentException e) {
            s.provider = ExecutionProviders.Provider.CPU;
        }
        String precision = prefs.getString("precision", "");
        s.precision = precision.isEmpty() ? null : precision;
        s.threads = prefs.getInt("threads", s.threads);
        s.context = prefs.getInt("context", s.context);
        s.maxNewTokens = prefs.getInt("max_new_tokens", s.maxNewTokens);
        s.temperature = prefs.getFloat("temperature", (float) s.temperature);
        return s;
    }

    void write(SharedPreferences prefs) {
        prefs.edit()
                .putString("provider", provider.name())
                .putString("precision", precision == null ? "" : precision)
                .putInt("threads", threads)
                .putInt("context", context)
                .putInt("max_new_tokens", maxNewTokens)
                .putFloat("temperature", (float) temperature)
                .apply();
    }

    OrtEngine.Options engineOptions(String nativeLibraryDir) {
        OrtEngine.Options options = new OrtEngine.Options();
        options.provider = provider;
        options.precision = precision;
        options.threads = threads;
        options.context = context;
        options.nativeLibraryDir = nativeLibraryDir;
        return options;
    }
}
