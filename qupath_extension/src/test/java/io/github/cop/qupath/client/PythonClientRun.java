package io.github.cop.qupath.client;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;

import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * One session through the project's Python client ({@code cop_server.client}), run by
 * {@code python_client_run.py} in the server's virtual environment, for comparison with the
 * Java client on the same server and input.
 */
final class PythonClientRun {

    String sha256;
    final Map<String, Long> counts = new LinkedHashMap<>();
    final List<Double> areas = new ArrayList<>();
    long tiles;
    long bytes;
    double seconds;

    /**
     * @param mpp        level-0 microns per pixel to declare (0: unknown)
     * @param downsample explicit working downsample (0: the server chooses from mpp)
     */
    static PythonClientRun run(LocalServer server, Path image, List<PromptPoint> clicks, String imageId, String encoding,
                               double mpp, double downsample) throws Exception {
        Path python = RealServer.python(RealServer.copExecutable());
        Path script = Files.createTempFile("cop-python-client", ".py");
        try (InputStream in = PythonClientRun.class.getResourceAsStream("/python_client_run.py")) {
            Files.write(script, in.readAllBytes());
        }
        List<String> classNames = clicks.stream().map(PromptPoint::className).distinct().toList();
        String clickList = clicks.stream()
                .map(c -> String.format(Locale.ROOT, "[%s, %s, %d]", c.x(), c.y(), classNames.indexOf(c.className())))
                .collect(Collectors.joining(", "));
        String classes = classNames.stream().map(n -> "\"" + n.replace("\"", "\\\"") + "\"").collect(Collectors.joining(", "));
        String spec = "{\"clicks\": [" + clickList + "], \"classes\": [" + classes + "], \"image_id\": \"" + imageId
                + "\", \"encoding\": \"" + encoding + "\""
                + (mpp > 0 ? String.format(Locale.ROOT, ", \"mpp\": %s", mpp) : "")
                + (downsample > 0 ? String.format(Locale.ROOT, ", \"params\": {\"downsample\": %s}", downsample) : "")
                + "}";
        Process p = new ProcessBuilder(python.toString(), script.toString(), server.address().toString(), image.toString(), spec)
                .redirectErrorStream(true).start();
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        Thread drain = new Thread(() -> {
            try {
                p.getInputStream().transferTo(out);
            } catch (IOException ignored) {
                // the process ended
            }
        });
        drain.start();
        boolean done = p.waitFor(30, TimeUnit.MINUTES);
        if (!done) {
            p.destroyForcibly();
        }
        drain.join(5000);
        Files.deleteIfExists(script);
        String text = out.toString(StandardCharsets.UTF_8);
        assertTrue(done && p.exitValue() == 0, "the Python client failed:\n" + text);
        PythonClientRun run = new PythonClientRun();
        for (String line : text.split("\n")) {
            String[] f = line.split("\t");
            switch (f[0]) {
                case "sha256" -> run.sha256 = f[1];
                case "count" -> run.counts.put(f[1], Long.parseLong(f[2].trim()));
                case "area" -> run.areas.add(Double.parseDouble(f[1]));
                case "tiles" -> {
                    run.tiles = Long.parseLong(f[1]);
                    run.bytes = Long.parseLong(f[2].trim());
                }
                case "seconds" -> run.seconds = Double.parseDouble(f[1]);
                default -> { }
            }
        }
        return run;
    }
}
