package io.github.cop.qupath.client;

import io.github.cop.qupath.client.CopException.Kind;
import io.github.cop.qupath.proto.v1.ServerInfo;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * A {@code cop serve} process started by the client (by the extension when the user set a
 * 'Local server command', and by the integration tests).
 *
 * <p>Starting a server is where users most often get stuck (wrong path, missing virtual
 * environment, port already taken), so every failure says which command was run, at which
 * address it was expected, and what the process printed last.
 *
 * <p>The command is a template: {@code {host}}, {@code {port}} and {@code {token}} are replaced
 * by the connection's values, e.g. {@code /opt/cop/.venv/bin/cop serve --host {host} --port {port}}.
 * When the connection has a token and the template has no {@code --token}, {@code --token <token>}
 * is appended so that the server and the client always agree.
 */
public final class LocalServer implements AutoCloseable {

    private static final int LOG_LINES = 40;

    private final Process process;
    private final List<String> command;
    private final ServerAddress address;
    private final Deque<String> lines;
    private final ServerInfo info;

    private LocalServer(Process process, List<String> command, ServerAddress address, Deque<String> lines,
                        ServerInfo info) {
        this.process = process;
        this.command = command;
        this.address = address;
        this.lines = lines;
        this.info = info;
    }

    /**
     * Splits a command line into words, honouring single and double quotes and backslash escapes
     * (outside single quotes), the way a POSIX shell does for simple commands. No shell is used,
     * so nothing in the command is interpreted beyond that.
     *
     * @param commandLine the command as typed
     * @return the words
     * @throws IllegalArgumentException on an unclosed quote
     */
    public static List<String> splitCommand(String commandLine) {
        List<String> words = new ArrayList<>();
        StringBuilder current = new StringBuilder();
        boolean inWord = false;
        char quote = 0;
        for (int i = 0; i < commandLine.length(); i++) {
            char ch = commandLine.charAt(i);
            if (quote != 0) {
                if (ch == quote) {
                    quote = 0;
                } else if (ch == '\\' && quote == '"' && i + 1 < commandLine.length()
                        && "\"\\$`".indexOf(commandLine.charAt(i + 1)) >= 0) {
                    current.append(commandLine.charAt(++i));
                } else {
                    current.append(ch);
                }
            } else if (ch == '\'' || ch == '"') {
                quote = ch;
                inWord = true;
            } else if (ch == '\\' && i + 1 < commandLine.length()) {
                current.append(commandLine.charAt(++i));
                inWord = true;
            } else if (Character.isWhitespace(ch)) {
                if (inWord) {
                    words.add(current.toString());
                    current.setLength(0);
                    inWord = false;
                }
            } else {
                current.append(ch);
                inWord = true;
            }
        }
        if (quote != 0) {
            throw new IllegalArgumentException("Unclosed " + quote + " quote in the server command: " + commandLine);
        }
        if (inWord) {
            words.add(current.toString());
        }
        return words;
    }

    /**
     * The words to run for a command template and a connection.
     *
     * @param template the command with {@code {host}}, {@code {port}}, {@code {token}} placeholders
     * @param settings the connection the server must serve
     * @return the words
     */
    public static List<String> expandCommand(String template, ConnectionSettings settings) {
        if (template == null || template.isBlank()) {
            throw new IllegalArgumentException("No local server command is set. Set it in Preferences > Chain-of-Prompts,"
                    + " e.g. /path/to/.venv/bin/cop serve --host {host} --port {port}");
        }
        String token = settings.token().orElse("");
        List<String> words = new ArrayList<>();
        for (String w : splitCommand(template)) {
            words.add(w.replace("{host}", settings.address().host())
                    .replace("{port}", Integer.toString(settings.address().port()))
                    .replace("{token}", token));
        }
        if (!token.isEmpty() && words.stream().noneMatch(w -> w.equals("--token") || w.startsWith("--token="))) {
            words.add("--token");
            words.add(token);
        }
        return words;
    }

    /**
     * Starts the server and waits until it answers {@code GetInfo} with this client's protocol.
     *
     * @param template       the command template
     * @param settings       where the server must listen, token and deadlines
     * @param environment    extra environment variables for the process (may be empty)
     * @param startupTimeout how long the server may take to load its model and answer
     * @return the running server; close it to stop the process
     * @throws CopException of kind LAUNCH_FAILED (the message names the command, the address and
     *                      the process's last output), or PROTOCOL_MISMATCH
     * @throws InterruptedException when interrupted while waiting (the process is stopped)
     */
    public static LocalServer start(String template, ConnectionSettings settings, Map<String, String> environment,
                                    Duration startupTimeout) throws CopException, InterruptedException {
        List<String> command = expandCommand(template, settings);
        String shown = String.join(" ", command).replace(settings.token().orElse("\0"), "<token>");
        ProcessBuilder pb = new ProcessBuilder(command).redirectErrorStream(true);
        pb.environment().putAll(environment);
        Process process;
        try {
            process = pb.start();
        } catch (IOException e) {
            throw new CopException(Kind.LAUNCH_FAILED, "Could not run the local server command '" + shown + "': "
                    + e.getMessage() + ". Set 'Local server command' in Preferences > Chain-of-Prompts to the full path of"
                    + " the cop program, e.g. /path/to/.venv/bin/cop serve --host {host} --port {port}.", e);
        }
        Deque<String> lines = new ArrayDeque<>();
        Thread drain = new Thread(() -> drain(process, lines), "cop-local-server-output");
        drain.setDaemon(true);
        drain.start();

        long deadline = System.nanoTime() + startupTimeout.toNanos();
        ConnectionSettings probeSettings = settings.withInfoTimeout(Duration.ofSeconds(2));
        CopException last = null;
        try (CopClient probe = CopClient.create(probeSettings)) {
            while (System.nanoTime() < deadline) {
                if (!process.isAlive()) {
                    drain.join(1000);
                    throw new CopException(Kind.LAUNCH_FAILED, "The local server command '" + shown + "' exited with code "
                            + process.exitValue() + " before answering at " + settings.address() + ". Its last output:\n"
                            + tail(lines));
                }
                try {
                    ServerInfo info = probe.connect();
                    return new LocalServer(process, command, settings.address(), lines, info);
                } catch (CopException e) {
                    if (e.kind() == Kind.PROTOCOL_MISMATCH || e.kind() == Kind.UNAUTHENTICATED) {
                        throw e;
                    }
                    last = e;
                }
                Thread.sleep(200);
            }
        } catch (CopException | InterruptedException | RuntimeException e) {
            stop(process);
            throw e;
        }
        stop(process);
        throw new CopException(Kind.LAUNCH_FAILED, "The local server started with '" + shown + "' did not answer at "
                + settings.address() + " within " + ErrorMessages.seconds(startupTimeout)
                + (last != null ? " (" + last.getMessage() + ")" : "") + ". Its last output:\n" + tail(lines));
    }

    private static void drain(Process process, Deque<String> lines) {
        try (BufferedReader r = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
            String line;
            while ((line = r.readLine()) != null) {
                synchronized (lines) {
                    lines.addLast(line);
                    while (lines.size() > LOG_LINES) {
                        lines.removeFirst();
                    }
                }
            }
        } catch (IOException ignored) {
            // the process ended
        }
    }

    private static String tail(Deque<String> lines) {
        synchronized (lines) {
            return lines.isEmpty() ? "(nothing)" : String.join("\n", lines);
        }
    }

    private static void stop(Process process) {
        process.descendants().forEach(ProcessHandle::destroy);
        process.destroy();
        try {
            if (!process.waitFor(10, TimeUnit.SECONDS)) {
                process.descendants().forEach(ProcessHandle::destroyForcibly);
                process.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            process.destroyForcibly();
            Thread.currentThread().interrupt();
        }
    }

    /** @return what the server said when it first answered */
    public ServerInfo info() {
        return info;
    }

    /** @return where it listens */
    public ServerAddress address() {
        return address;
    }

    /** @return the words that were run */
    public List<String> command() {
        return command;
    }

    /** @return the last lines the server printed (its log), for error reports */
    public String recentOutput() {
        return tail(lines);
    }

    /** @return whether the process is still running */
    public boolean isAlive() {
        return process.isAlive();
    }

    /** @return the process id, for logs */
    public long pid() {
        return process.pid();
    }

    /** Stops the server (SIGTERM, which lets it finish gracefully; forcibly after 10 s). */
    @Override
    public void close() {
        stop(process);
    }
}
