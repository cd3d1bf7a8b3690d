package org.mobilevlm.app;

import android.app.Activity;
import android.app.AlertDialog;
import android.content.ActivityNotFoundException;
import android.content.Context;
import android.content.Intent;
import android.content.SharedPreferences;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.net.Uri;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.provider.MediaStore;
import android.system.ErrnoException;
import android.system.Os;
import android.util.Log;
import android.view.View;
import android.view.inputmethod.EditorInfo;
import android.widget.Button;
import android.widget.EditText;
import android.widget.ImageView;
import android.widget.RadioButton;
import android.widget.RadioGroup;
import android.widget.ScrollView;
import android.widget.TextView;
import android.widget.Toast;
import androidx.core.content.FileProvider;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.util.EnumSet;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.mobilevlm.core.Answer;
import org.mobilevlm.core.CancelToken;
import org.mobilevlm.core.Conversation;
import org.mobilevlm.core.GenerationConfig;
import org.mobilevlm.core.GenerationStats;
import org.mobilevlm.core.MobileVLMError;
import org.mobilevlm.core.RawImage;
import org.mobilevlm.core.Tokenizer;

/**
 * The one screen: pick or take an image, ask about it, watch the answer stream in with its
 * stats, ask a follow-up (the conversation, and so the KV cache, goes on). Loading, decoding
 * and generation run on one worker thread, in the order they were asked for; the UI thread
 * only shows what they produce.
 */
public final class MainActivity extends Activity {
    private static final String TAG = "MobileVLM";
    private static final int REQUEST_PICK = 1;
    private static final int REQUEST_CAMERA = 2;
    static final String BUNDLE_DIR = "bundle";

    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final Handler ui = new Handler(Looper.getMainLooper());

    private TextView status;
    private TextView transcript;
    private TextView stats;
    private ScrollView scroll;
    private ImageView preview;
    private EditText question;
    private Button send;
    private Button cancel;

    private Settings settings;
    private Uri cameraUri;

    // owned by the worker thread
    private org.mobilevlm.core.Bundle bundle;
    private Tokenizer tokenizer;
    private volatile OrtEngine engine; // also read by the UI thread to interrupt it
    private Conversation conversation;
    private RawImage image;

    // set on the UI thread, read by both
    private volatile CancelToken answering; // non-null while an answer is generated
    private volatile List<String> precisions = java.util.Collections.emptyList();

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        setContentView(R.layout.activity_main);
        status = findViewById(R.id.status);
        transcript = findViewById(R.id.transcript);
        stats = findViewById(R.id.stats);
        scroll = findViewById(R.id.scroll);
        preview = findViewById(R.id.preview);
        question = findViewById(R.id.question);
        send = findViewById(R.id.send);
        cancel = findViewById(R.id.cancel);

        findViewById(R.id.pick).setOnClickListener(v -> pickImage());
        findViewById(R.id.camera).setOnClickListener(v -> takePhoto());
        findViewById(R.id.settings).setOnClickListener(v -> showSettings());
        send.setOnClickListener(v -> ask());
        cancel.setOnClickListener(v -> stop());
        question.setOnEditorActionListener((v, action, event) -> {
            if (action != EditorInfo.IME_ACTION_SEND) return false;
            ask();
            return true;
        });

        settings = Settings.read(preferences());
        load();
    }

    private SharedPreferences preferences() {
        return getSharedPreferences("settings", Context.MODE_PRIVATE);
    }

    // ---- the bundle and the engine ----

    /** Where a pushed bundle is looked for, in order (README: "Push it to the phone"). */
    private File[] bundleDirs() {
        File external = getExternalFilesDir(null);
        File internal = new File(getFilesDir(), BUNDLE_DIR);
        return external == null ? new File[] {internal}
                : new File[] {new File(external, BUNDLE_DIR), internal};
    }

    /** (Re)loads the bundle with the current settings, on the worker. */
    private void load() {
        final OrtEngine.Options options = settings.engineOptions(getApplicationInfo().nativeLibraryDir);
        final File[] dirs = bundleDirs();
        show(status, getString(R.string.loading, dirs[0].getPath()));
        worker.execute(() -> {
            closeEngine();
            File dir = null;
            for (File d : dirs) {
                if (new File(d, org.mobilevlm.core.Bundle.MANIFEST_FILE).isFile()) {
                    dir = d;
                    break;
                }
            }
            if (dir == null) {
                StringBuilder where = new StringBuilder();
                for (File d : dirs) where.append(where.length() > 0 ? " or " : "").append(d);
                show(status, getString(R.string.no_bundle, where));
                return;
            }
            try {
                long started = System.nanoTime();
                if (options.provider == ExecutionProviders.Provider.QNN) {
                    qnnLibraryPath(options.nativeLibraryDir);
                }
                bundle = org.mobilevlm.core.Bundle.open(dir.toPath());
                precisions = BundleSelection.precisions(bundle);
                tokenizer = Tokenizer.fromFile(bundle.tokenizerPath());
                engine = OrtEngine.load(bundle, options);
                double seconds = (System.nanoTime() - started) / 1e9;
                show(status, String.format(Locale.ROOT, "%s (loaded in %.1f s)\n%s", dir, seconds,
                        engine.describe()));
            } catch (MobileVLMError e) {
                show(status, e.getMessage()); // one line naming the file, as the CLI prints it
            } catch (Exception e) {
                Log.e(TAG, "loading " + dir, e);
                show(status, dir + ": " + e);
            }
        });
    }

    /**
     * Qualcomm's HTP backend loads its DSP-side library through FastRPC, which searches
     * ADSP_LIBRARY_PATH (';'-separated): the app's extracted native libraries first, then the
     * system's own locations.
     */
    private static void qnnLibraryPath(String nativeLibraryDir) {
        String path = nativeLibraryDir
                + ";/system/lib/rfsa/adsp;/system/vendor/lib/rfsa/adsp;/vendor/dsp/cdsp;/dsp";
        try {
            Os.setenv("ADSP_LIBRARY_PATH", path, true);
        } catch (ErrnoException e) {
            Log.w(TAG, "cannot set ADSP_LIBRARY_PATH; the HTP may not open", e);
        }
    }

    private void closeEngine() { // on the worker
        conversation = null;
        if (engine != null) {
            engine.close();
            engine = null;
        }
    }

    // ---- the image ----

    private void pickImage() {
        Intent intent = new Intent(Intent.ACTION_GET_CONTENT);
        intent.setType("image/*");
        intent.addCategory(Intent.CATEGORY_OPENABLE);
        startActivityForResult(intent, REQUEST_PICK);
    }

    private void takePhoto() {
        File dir = new File(getCacheDir(), "camera");
        if (!dir.isDirectory() && !dir.mkdirs()) {
            toast(getString(R.string.no_camera));
            return;
        }
        cameraUri = FileProvider.getUriForFile(this, getPackageName() + ".camera",
                new File(dir, "photo.jpg"));
        Intent intent = new Intent(MediaStore.ACTION_IMAGE_CAPTURE);
        intent.putExtra(MediaStore.EXTRA_OUTPUT, cameraUri);
        intent.addFlags(Intent.FLAG_GRANT_WRITE_URI_PERMISSION | Intent.FLAG_GRANT_READ_URI_PERMISSION);
        try {
            startActivityForResult(intent, REQUEST_CAMERA);
        } catch (ActivityNotFoundException e) {
            toast(getString(R.string.no_camera));
        }
    }

    @Override
    protected void onActivityResult(int request, int result, Intent data) {
        super.onActivityResult(request, result, data);
        if (result != RESULT_OK) return;
        Uri uri = request == REQUEST_PICK && data != null ? data.getData()
                : request == REQUEST_CAMERA ? cameraUri : null;
        if (uri != null) useImage(uri);
    }

    /** Decodes the image on the worker; the next question starts a conversation about it. */
    private void useImage(Uri uri) {
        worker.execute(() -> {
            try {
                byte[] bytes = readAll(uri);
                RawImage decoded = new AndroidImageDecoder().decode(bytes, uri.toString());
                Bitmap thumbnail = thumbnail(bytes);
                image = decoded; // the conversation starts over about it at the next question
                ui.post(() -> {
                    preview.setImageBitmap(thumbnail);
                    transcript.append("\n" + getString(R.string.new_image) + "\n");
                });
            } catch (MobileVLMError e) {
                show(stats, e.getMessage());
            } catch (IOException | RuntimeException e) {
                Log.e(TAG, "reading " + uri, e);
                show(stats, uri + ": " + e);
            }
        });
    }

    private byte[] readAll(Uri uri) throws IOException {
        try (InputStream in = getContentResolver().openInputStream(uri)) {
            if (in == null) throw new IOException("cannot be opened");
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buffer = new byte[1 << 16];
            for (int n; (n = in.read(buffer)) > 0; ) out.write(buffer, 0, n);
            return out.toByteArray();
        }
    }

    /** A preview at most about 1024 pixels on its long side (display only; the model gets the
     * full image). */
    private static Bitmap thumbnail(byte[] bytes) {
        BitmapFactory.Options bounds = new BitmapFactory.Options();
        bounds.inJustDecodeBounds = true;
        BitmapFactory.decodeByteArray(bytes, 0, bytes.length, bounds);
        BitmapFactory.Options options = new BitmapFactory.Options();
        options.inSampleSize = 1;
        while (Math.max(bounds.outWidth, bounds.outHeight) / (options.inSampleSize * 2) >= 1024) {
            options.inSampleSize *= 2;
        }
        return BitmapFactory.decodeByteArray(bytes, 0, bytes.length, options);
    }

    // ---- questions and answers ----

    private void ask() {
        final String text = question.getText().toString().trim();
        if (text.isEmpty()) return;
        if (answering != null) {
            toast(getString(R.string.busy));
            return;
        }
        final CancelToken token = new CancelToken();
        final GenerationConfig config = GenerationConfig.defaults()
                .withMaxNewTokens(settings.maxNewTokens)
                .withSampling(settings.temperature, 0, 1.0, null);
        answering = token;
        question.setText("");
        send.setEnabled(false);
        cancel.setEnabled(true);
        transcript.append("\nQ: " + text + "\nA: ");
        scrollDown();
        worker.execute(() -> {
            try {
                if (engine == null) {
                    show(stats, getString(R.string.not_loaded));
                    return;
                }
                engine.resume();
                if (conversation == null) {
                    conversation = new Conversation(bundle.model, tokenizer, engine);
                }
                Answer answer = conversation.ask(image, text, config,
                        piece -> ui.post(() -> {
                            transcript.append(piece);
                            scrollDown();
                        }), token);
                show(stats, describe(answer.stats));
                if (answer.stats.stopReason.equals("cancelled")) {
                    ui.post(() -> transcript.append(" " + getString(R.string.cancelled)));
                }
            } catch (OrtEngine.Interrupted e) {
                conversation = null; // stopped inside a run: start over from what the cache holds
                ui.post(() -> transcript.append(" " + getString(R.string.cancelled)));
                show(stats, "");
            } catch (MobileVLMError e) {
                conversation = null;
                show(stats, e.getMessage());
            } catch (RuntimeException e) {
                conversation = null;
                Log.e(TAG, "answering", e);
                show(stats, e.toString());
            } finally {
                ui.post(() -> {
                    answering = null;
                    send.setEnabled(true);
                    cancel.setEnabled(false);
                });
            }
        });
    }

    /** Ends the answer after its current token, and interrupts an encode or prefill. */
    private void stop() {
        CancelToken token = answering;
        if (token == null) return;
        token.cancel();
        OrtEngine running = engine;
        if (running != null) running.interrupt();
    }

    private static String describe(GenerationStats s) {
        return String.format(Locale.ROOT,
                "encode %.0f ms · first token %.0f ms · prefill %.0f tok/s · decode %.1f tok/s"
                        + "\n%d image + %d prompt tokens (%d reused) · %d generated · %s",
                s.imageEncodeMs, s.timeToFirstTokenMs(), s.prefillTokensPerS(),
                s.decodeTokensPerS(), s.imageTokens, s.promptTokens, s.cachedTokens,
                s.generatedTokens, s.stopReason);
    }

    // ---- settings ----

    private void showSettings() {
        if (answering != null) {
            toast(getString(R.string.busy));
            return;
        }
        View view = getLayoutInflater().inflate(R.layout.dialog_settings, null);
        RadioGroup accelerators = view.findViewById(R.id.accelerator);
        EnumSet<ExecutionProviders.Provider> available = ExecutionProviders.available();
        int[] ids = {R.id.provider_cpu, R.id.provider_xnnpack, R.id.provider_nnapi, R.id.provider_qnn};
        ExecutionProviders.Provider[] providers = ExecutionProviders.Provider.values();
        for (int k = 0; k < providers.length; k++) {
            RadioButton button = view.findViewById(ids[k]);
            if (!available.contains(providers[k])) {
                button.setEnabled(false);
                button.setText(getString(R.string.provider_missing, button.getText()));
            }
            if (providers[k] == settings.provider) button.setChecked(true);
        }
        RadioGroup precisionGroup = view.findViewById(R.id.precision);
        addPrecision(precisionGroup, getString(R.string.precision_fastest), null);
        for (String p : precisions) addPrecision(precisionGroup, p, p);
        EditText threads = view.findViewById(R.id.threads);
        EditText context = view.findViewById(R.id.context);
        EditText maxNewTokens = view.findViewById(R.id.max_new_tokens);
        EditText temperature = view.findViewById(R.id.temperature);
        threads.setText(String.valueOf(settings.threads));
        context.setText(String.valueOf(settings.context));
        maxNewTokens.setText(String.valueOf(settings.maxNewTokens));
        temperature.setText(String.valueOf(settings.temperature));

        new AlertDialog.Builder(this)
                .setTitle(R.string.settings)
                .setView(view)
                .setNegativeButton(android.R.string.cancel, null)
                .setPositiveButton(R.string.apply, (dialog, which) -> {
                    Settings s = new Settings();
                    for (int k = 0; k < providers.length; k++) {
                        if (accelerators.getCheckedRadioButtonId() == ids[k]) s.provider = providers[k];
                    }
                    View chosen = precisionGroup.findViewById(precisionGroup.getCheckedRadioButtonId());
                    s.precision = chosen == null ? null : (String) chosen.getTag();
                    s.threads = number(threads, 0, 0, 64);
                    s.context = number(context, settings.context, 16, 1 << 20);
                    s.maxNewTokens = number(maxNewTokens, settings.maxNewTokens, 1, 1 << 16);
                    try {
                        s.temperature = Math.max(0.0, Double.parseDouble(temperature.getText().toString()));
                    } catch (NumberFormatException e) {
                        s.temperature = settings.temperature;
                    }
                    settings = s;
                    s.write(preferences());
                    load();
                })
                .show();
    }

    private void addPrecision(RadioGroup group, String label, String precision) {
        RadioButton button = new RadioButton(this);
        button.setId(View.generateViewId());
        button.setText(label);
        button.setTag(precision);
        group.addView(button);
        boolean same = precision == null ? settings.precision == null : precision.equals(settings.precision);
        if (same) button.setChecked(true);
    }

    private static int number(EditText field, int fallback, int min, int max) {
        try {
            return Math.max(min, Math.min(max, Integer.parseInt(field.getText().toString().trim())));
        } catch (NumberFormatException e) {
            return fallback;
        }
    }

    // ---- helpers ----

    private void show(TextView view, String text) {
        ui.post(() -> view.setText(text));
    }

    private void scrollDown() {
        scroll.post(() -> scroll.fullScroll(View.FOCUS_DOWN));
    }

    private void toast(String text) {
        Toast.makeText(this, text, Toast.LENGTH_SHORT).show();
    }

    @Override
    protected void onDestroy() {
        stop();
        worker.execute(this::closeEngine);
        worker.shutdown();
        super.onDestroy();
    }
}
