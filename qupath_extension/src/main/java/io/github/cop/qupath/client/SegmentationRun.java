package io.github.cop.qupath.client;

import java.time.Duration;

/**
 * A session in progress: cancel it, or wait for its result.
 */
public interface SegmentationRun {

    /**
     * Asks the server to stop (a {@code Cancel} message, so it frees what the session holds) and,
     * if it has not ended within a few seconds, cancels the call itself. Returns at once; safe to
     * call more than once and from any thread.
     */
    void cancel();

    /** @return whether the session has ended (completed, failed or cancelled) */
    boolean isDone();

    /**
     * Waits for the end of the session.
     *
     * @return the result
     * @throws CopException          with a user-facing message when the session failed or was cancelled
     * @throws InterruptedException  when the waiting thread is interrupted (the session is cancelled too)
     */
    SegmentationResult await() throws CopException, InterruptedException;

    /**
     * Waits at most {@code timeout} for the end of the session.
     *
     * @param timeout how long to wait
     * @return the result
     * @throws CopException         as for {@link #await()}, or of kind TIMEOUT when the wait ran out
     *                              (the session is cancelled then)
     * @throws InterruptedException when interrupted (the session is cancelled too)
     */
    SegmentationResult await(Duration timeout) throws CopException, InterruptedException;
}
