package io.github.cop.qupath.client;

import io.github.cop.qupath.client.CopException.Kind;

import java.time.Duration;
import java.util.Map;
import java.util.Optional;

/**
 * Connects to the configured server, starting a local one when nothing listens there and the
 * user gave a command for it, and keeps that process for later runs.
 *
 * <p>This is the policy behind the 'Local server command' preference: the extension never starts
 * a server when one already answers (the user's own, possibly on a GPU box), and never leaves
 * the user guessing when starting fails (the message of {@link LocalServer#start} names the
 * command, the address and the server's last output).
 */
public final class ServerConnector implements AutoCloseable {

    private LocalServer started;

    /**
     * Connects, starting the local server if needed.
     *
     * @param settings       where the server should listen
     * @param startCommand   the command template, or empty to never start one
     * @param startupTimeout how long a started server may take to answer
     * @return a client that has passed {@link CopClient#connect()}; close it after use
     * @throws CopException         when the server cannot be reached (and none could be started)
     * @throws InterruptedException when interrupted while a server starts
     */
    public synchronized CopClient connect(ConnectionSettings settings, Optional<String> startCommand,
                                          Duration startupTimeout) throws CopException, InterruptedException {
        CopClient client = CopClient.create(settings);
        try {
            client.connect();
            return client;
        } catch (CopException e) {
            client.close();
            boolean canStart = startCommand.filter(c -> !c.isBlank()).isPresent()
                    && e.kind() == Kind.SERVER_UNREACHABLE && settings.address().isLoopback();
            if (!canStart) {
                throw e;
            }
        }
        if (started != null) {
            started.close(); // it died or moved: replace it
            started = null;
        }
        started = LocalServer.start(startCommand.get(), settings, Map.of(), startupTimeout);
        CopClient fresh = CopClient.create(settings);
        try {
            fresh.connect();
            return fresh;
        } catch (CopException e) {
            fresh.close();
            throw e;
        }
    }

    /** @return the server this connector started, if any */
    public synchronized Optional<LocalServer> startedServer() {
        return Optional.ofNullable(started);
    }

    /** Stops the server this connector started, if any. */
    @Override
    public synchronized void close() {
        if (started != null) {
            started.close();
            started = null;
        }
    }
}
