package org.mobilevlm.core.desktop;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.mobilevlm.core.Bundle;
import org.mobilevlm.core.Json;
import org.mobilevlm.core.MobileVLMError;
import org.mobilevlm.core.Npy;
import org.mobilevlm.core.Preprocessor;
import org.mobilevlm.core.PromptTemplate;
import org.mobilevlm.core.RawImage;
import org.mobilevlm.core.Tokenizer;
import org.mobilevlm.core.Turn;

/**
 * The jar's command line, a client of the core only: tokenize, preprocess and template, so that
 * the Python tests can hold the Java core against the Python runtime. Results go to stdout; a
 * user error is one line on stderr and exit code 2, as in the Python CLI.
 */
public final class Main {
    static final String USAGE = String.join("\n",
            "usage: java -jar mobilevlm-core.jar COMMAND [OPTIONS]",
            "",
            "commands:",
            "  tokenize --tokenizer FILE TEXT     print the token ids of TEXT, separated by spaces",
            "  tokenize --tokenizer FILE --batch  read a JSON list of strings on stdin; print one line of ids each",
            "  preprocess --bundle DIR --image FILE --out FILE.npy [--image FILE --out FILE.npy ...]",
            "                                     write each image's pixel tensor as float32 (3, S, S)",
            "  template --bundle DIR --prompt TEXT [--no-image]",
            "                                     print the prompt rendered in the bundle's template",
            "",
            "Errors: one line on stderr, exit code 2. Text arguments need a UTF-8 locale.");

    /** A mistake in the command line itself. */
    static final class UsageError extends MobileVLMError {
        UsageError(String message) {
            super(message);
        }
    }

    public static void main(String[] args) {
        PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);
        PrintStream err = new PrintStream(new FileOutputStream(FileDescriptor.err), true, StandardCharsets.UTF_8);
        System.exit(run(args, out, err));
    }

    static int run(String[] args, PrintStream out, PrintStream err) {
        try {
            if (args.length == 0 || args[0].equals("--help") || args[0].equals("-h")) {
                (args.length == 0 ? err : out).println(USAGE);
                return args.length == 0 ? 2 : 0;
            }
            Options o = new Options(args);
            if (o.help) {
                out.println(USAGE);
                return 0;
            }
            switch (args[0]) {
                case "tokenize": tokenize(o, out); break;
                case "preprocess": preprocess(o); break;
                case "template": template(o, out); break;
                default: throw new UsageError("unknown command " + args[0] + " (expected tokenize, preprocess or template; see --help)");
            }
            out.flush();
            return 0;
        } catch (MobileVLMError e) {
            err.println("mobilevlm-core: error: " + e.getMessage().replace('\n', ' '));
            return 2;
        }
    }

    /** The options after the command: --name VALUE pairs (repeatable), flags and positionals. */
    static final class Options {
        final List<String[]> pairs = new ArrayList<>();
        final List<String> positional = new ArrayList<>();
        boolean batch;
        boolean noImage;
        boolean help;

        Options(String[] args) {
            for (int k = 1; k < args.length; k++) {
                String a = args[k];
                switch (a) {
                    case "--batch": batch = true; break;
                    case "--no-image": noImage = true; break;
                    case "--help": case "-h": help = true; break;
                    case "--tokenizer": case "--bundle": case "--image": case "--out": case "--prompt":
                        if (k + 1 >= args.length) throw new UsageError(a + " needs a value");
                        pairs.add(new String[] {a, args[++k]});
                        break;
                    default:
                        if (a.startsWith("--")) throw new UsageError("unknown option " + a + " (see --help)");
                        positional.add(a);
                }
            }
        }

        List<String> all(String name) {
            List<String> values = new ArrayList<>();
            for (String[] p : pairs) if (p[0].equals(name)) values.add(p[1]);
            return values;
        }

        String one(String name) {
            List<String> values = all(name);
            if (values.size() != 1) throw new UsageError("give " + name + " once");
            return values.get(0);
        }
    }

    private static void tokenize(Options o, PrintStream out) {
        Tokenizer tokenizer = Tokenizer.fromFile(Path.of(o.one("--tokenizer")));
        List<String> texts = new ArrayList<>();
        if (o.batch) {
            if (!o.positional.isEmpty()) throw new UsageError("--batch reads the texts from stdin, not the arguments");
            Object list;
            try {
                list = Json.parse(new String(System.in.readAllBytes(), StandardCharsets.UTF_8));
            } catch (IOException | Json.ParseError e) {
                throw new UsageError("stdin is not a JSON list of strings (" + e.getMessage() + ")");
            }
            if (!(list instanceof List) || !((List<?>) list).stream().allMatch(t -> t instanceof String)) {
                throw new UsageError("stdin is not a JSON list of strings");
            }
            for (Object t : (List<?>) list) texts.add((String) t);
        } else {
            if (o.positional.size() != 1) throw new UsageError("tokenize takes one TEXT (or --batch)");
            texts.add(o.positional.get(0));
        }
        StringBuilder all = new StringBuilder();
        for (String text : texts) {
            StringBuilder line = new StringBuilder();
            for (int id : tokenizer.encode(text, false)) line.append(line.length() > 0 ? " " : "").append(id);
            all.append(line).append('\n');
        }
        out.print(all);
    }

    private static void preprocess(Options o) {
        Bundle bundle = Bundle.open(Path.of(o.one("--bundle")));
        List<String> images = o.all("--image");
        List<String> outs = o.all("--out");
        if (images.isEmpty() || images.size() != outs.size()) {
            throw new UsageError("give each --image its --out");
        }
        Preprocessor preprocessor = new Preprocessor(bundle.model.preprocess);
        ImageIoDecoder decoder = new ImageIoDecoder();
        int size = bundle.model.preprocess.imageSize;
        for (int k = 0; k < images.size(); k++) {
            Path image = Path.of(images.get(k));
            if (!Files.isRegularFile(image)) throw new org.mobilevlm.core.ImageError(MobileVLMError.at(image, "no such image file"));
            byte[] bytes;
            try {
                bytes = Files.readAllBytes(image);
            } catch (IOException e) {
                throw new org.mobilevlm.core.ImageError(MobileVLMError.at(image, "cannot read image (" + e.getMessage() + ")"));
            }
            RawImage raw = decoder.decode(bytes, image.toString());
            float[] pixels = preprocessor.pixels(raw);
            try {
                Npy.writeFloat32(Path.of(outs.get(k)), pixels, 3, size, size);
            } catch (IOException e) {
                throw new UsageError(MobileVLMError.at(outs.get(k), "cannot be written (" + e.getMessage() + ")"));
            }
        }
    }

    private static void template(Options o, PrintStream out) {
        Bundle bundle = Bundle.open(Path.of(o.one("--bundle")));
        PromptTemplate template = PromptTemplate.get(bundle.model.template);
        out.print(template.render(List.of(new Turn(o.one("--prompt"))), bundle.model.systemPrompt, !o.noImage));
    }
}
