package io.github.cop.qupath.client;

import com.google.protobuf.UnsafeByteOperations;
import io.github.cop.qupath.client.CopException.Kind;
import io.github.cop.qupath.proto.v1.Cancel;
import io.github.cop.qupath.proto.v1.ClientMessage;
import io.github.cop.qupath.proto.v1.CopGrpc;
import io.github.cop.qupath.proto.v1.Detection;
import io.github.cop.qupath.proto.v1.DetectionBatch;
import io.github.cop.qupath.proto.v1.PixelEncoding;
import io.github.cop.qupath.proto.v1.Progress;
import io.github.cop.qupath.proto.v1.ServerInfo;
import io.github.cop.qupath.proto.v1.ServerMessage;
import io.github.cop.qupath.proto.v1.Summary;
import io.github.cop.qupath.proto.v1.TileData;
import io.github.cop.qupath.proto.v1.TileRequest;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.geom.Polygon;

import java.awt.image.BufferedImage;
import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Drives one {@code Segment} stream: opens it, answers the server's tile requests, collects
 * detections, and ends in exactly one outcome (a result, or one {@link CopException}).
 *
 * <h2>Threads</h2>
 * gRPC delivers server messages one at a time on its callback executor; tile reading and
 * encoding run on a small pool so a slow image never delays reading the server's messages
 * (Cancel must stay responsive). Sends from the pool and from {@link #cancel()} are serialised
 * by {@code sendLock}, because a gRPC request stream is not thread-safe.
 *
 * <h2>Ending</h2>
 * Every path ends in {@link #finish}: the server's summary and end of stream (success), the
 * server's error status, a local failure (a tile that cannot be read or is too large, a
 * protocol violation, the idle timeout) which cancels the call, or the user's cancel. The
 * first local failure wins over the status that the resulting cancellation produces, so the
 * user sees the cause, not "CANCELLED".
 */
final class SegmentSession implements SegmentationRun, ClientResponseObserver<ClientMessage, ServerMessage> {

    private static final System.Logger LOG = System.getLogger(SegmentSession.class.getName());

    /** How long the server gets to stop by itself after a Cancel message before the call is cancelled. */
    static final Duration CANCEL_GRACE = Duration.ofSeconds(2);

    /** Refuse tile requests beyond this side even if the server allows more: 16k x 16k RGB is 1 GiB. */
    static final int HARD_MAX_TILE_SIDE = 16384;

    private final SegmentationJob job;
    private final TileSource tiles;
    private final SessionListener listener;
    private final ConnectionSettings settings;
    private final ServerInfo info;
    private final int protocolMajor;
    private final ScheduledExecutorService scheduler;
    private final ExecutorService tilePool;
    private final GeometryFactory factory = new GeometryFactory();
    private final CompletableFuture<SegmentationResult> outcome = new CompletableFuture<>();
    private final List<CellDetection> detections = new ArrayList<>();
    private final TransferStats transfer = new TransferStats();
    private final Object sendLock = new Object();
    private final AtomicReference<CopException> localFailure = new AtomicReference<>();
    private final AtomicInteger tilesInFlight = new AtomicInteger();
    private final AtomicInteger repaired = new AtomicInteger();
    private final AtomicInteger dropped = new AtomicInteger();

    private volatile ClientCallStreamObserver<ClientMessage> requests;
    private volatile SessionStart start;
    private volatile Summary summary;
    private volatile boolean cancelRequested;
    private volatile long lastActivityNanos;
    private boolean halfClosed; // guarded by sendLock
    private volatile ScheduledFuture<?> watchdog;
    private long startNanos;

    SegmentSession(SegmentationJob job, TileSource tiles, SessionListener listener, ConnectionSettings settings,
                   ServerInfo info, int protocolMajor, ScheduledExecutorService scheduler) {
        this.job = job;
        this.tiles = tiles;
        this.listener = listener == null ? SessionListener.NONE : listener;
        this.settings = settings;
        this.info = info;
        this.protocolMajor = protocolMajor;
        this.scheduler = scheduler;
        AtomicInteger n = new AtomicInteger();
        this.tilePool = Executors.newFixedThreadPool(settings.tileThreads(), r -> {
            Thread t = new Thread(r, "cop-tile-" + n.incrementAndGet());
            t.setDaemon(true);
            return t;
        });
    }

    /** Opens the stream and sends the request. */
    void start(CopGrpc.CopStub stub) {
        startNanos = System.nanoTime();
        lastActivityNanos = startNanos;
        // Scheduled before the call exists, so that finish() always finds it to cancel.
        long period = Math.max(50, Math.min(1000, settings.idleTimeout().toMillis() / 4));
        watchdog = scheduler.scheduleWithFixedDelay(this::checkIdle, period, period, TimeUnit.MILLISECONDS);
        stub.withDeadlineAfter(settings.sessionDeadline().toMillis(), TimeUnit.MILLISECONDS).segment(this);
        send(ClientMessage.newBuilder().setStart(job.toProto(protocolMajor)).build());
    }

    // ---- server -> client -------------------------------------------------------------------

    @Override
    public void beforeStart(ClientCallStreamObserver<ClientMessage> requestStream) {
        this.requests = requestStream;
    }

    @Override
    public void onNext(ServerMessage message) {
        lastActivityNanos = System.nanoTime();
        if (outcome.isDone() || localFailure.get() != null) {
            return;
        }
        try {
            switch (message.getKindCase()) {
                case ACCEPTED -> {
                    start = SessionStart.of(message.getAccepted());
                    listener.onAccepted(start);
                }
                case TILE_REQUEST -> onTileRequest(message.getTileRequest());
                case PROGRESS -> {
                    Progress p = message.getProgress();
                    listener.onProgress(new ProgressUpdate(p.getTilesDone(), p.getTilesTotal(), p.getCells(), p.getStage()));
                }
                case DETECTIONS -> onDetections(message.getDetections());
                case SUMMARY -> {
                    summary = message.getSummary();
                    halfClose();
                }
                case KIND_NOT_SET -> LOG.log(System.Logger.Level.DEBUG, "Ignoring a server message of a newer kind");
            }
        } catch (CopException e) {
            fail(e);
        } catch (RuntimeException e) {
            fail(new CopException(Kind.INTERNAL, "The extension failed while handling the server's messages: " + e, e));
        }
    }

    @Override
    public void onError(Throwable error) {
        CopException local = localFailure.get();
        if (local != null) {
            finish(null, local);
        } else if (cancelRequested) {
            finish(null, cancelled());
        } else {
            finish(null, ErrorMessages.translate(error, settings, ErrorMessages.Phase.SESSION));
        }
    }

    @Override
    public void onCompleted() {
        CopException local = localFailure.get();
        if (local != null) {
            finish(null, local);
        } else if (cancelRequested) {
            finish(null, cancelled());
        } else if (summary == null) {
            finish(null, new CopException(Kind.INTERNAL, "The server at " + settings.address()
                    + " ended the session without a summary (protocol error); nothing was added. Check the server log."));
        } else {
            halfClose();
            SessionStart s = start != null ? start : new SessionStart("", 0, 0, 0, 0, List.of());
            List<CellDetection> all;
            synchronized (detections) {
                all = List.copyOf(detections);
            }
            finish(new SegmentationResult(s, all, SessionSummary.of(summary, job.classes()), job.classes(), transfer,
                    Duration.ofNanos(System.nanoTime() - startNanos), repaired.get(), dropped.get()), null);
        }
    }

    private void onTileRequest(TileRequest r) throws CopException {
        if (!(job.pixelSource() instanceof PixelSource.ClientPixels offered) || tiles == null) {
            throw new CopException(Kind.INTERNAL, "The server asked for pixels although it was told to read the file"
                    + " itself (protocol error). Check that the server and the extension versions match.");
        }
        PixelEncoding encoding = r.getEncoding();
        if (encoding == PixelEncoding.PIXEL_ENCODING_UNSPECIFIED) {
            encoding = offered.encodings().isEmpty() ? PixelEncoding.PNG : offered.encodings().get(0);
        }
        if (!(offered.encodings().isEmpty() ? encoding == PixelEncoding.PNG : offered.encodings().contains(encoding))) {
            throw new CopException(Kind.INTERNAL, "The server asked for tiles as " + encoding + ", which the extension did"
                    + " not offer (it offered " + offered.encodings() + "): protocol error.");
        }
        int maxSide = info.getMaxTileSide() > 0 ? Math.min(info.getMaxTileSide(), HARD_MAX_TILE_SIDE) : HARD_MAX_TILE_SIDE;
        if (r.getOutWidth() > maxSide || r.getOutHeight() > maxSide) {
            throw new CopException(Kind.TOO_LARGE, String.format(Locale.ROOT,
                    "The server asked for a %d x %d pixel tile; the largest tile allowed is %d pixels a side. "
                    + "Restart the server with a smaller tile size, or use a coarser working resolution.",
                    r.getOutWidth(), r.getOutHeight(), maxSide));
        }
        if (r.getOutWidth() <= 0 || r.getOutHeight() <= 0 || r.getWidth() <= 0 || r.getHeight() <= 0
                || !(r.getDownsample() > 0) || Double.isInfinite(r.getDownsample())) {
            throw new CopException(Kind.INTERNAL, "The server asked for an impossible tile (" + r.getWidth() + " x "
                    + r.getHeight() + " at downsample " + r.getDownsample() + " into " + r.getOutWidth() + " x "
                    + r.getOutHeight() + "): protocol error.");
        }
        TileGeometry plan = TileGeometry.plan(r.getX(), r.getY(), r.getWidth(), r.getHeight(),
                r.getOutWidth(), r.getOutHeight(), job.width(), job.height());
        PixelEncoding enc = encoding;
        tilesInFlight.incrementAndGet();
        try {
            tilePool.execute(() -> serveTile(r, plan, enc));
        } catch (RejectedExecutionException e) {
            tilesInFlight.decrementAndGet(); // the session is ending
        }
    }

    private void serveTile(TileRequest r, TileGeometry plan, PixelEncoding encoding) {
        try {
            if (outcome.isDone() || localFailure.get() != null) {
                return;
            }
            long t0 = System.nanoTime();
            BufferedImage image = TileRenderer.render(plan, tiles, r.getDownsample());
            long t1 = System.nanoTime();
            byte[] data = PixelEncoder.encode(image, encoding);
            long t2 = System.nanoTime();
            ClientMessage message = ClientMessage.newBuilder().setTile(TileData.newBuilder()
                    .setRequestId(r.getRequestId())
                    .setEncoding(encoding)
                    .setWidth(image.getWidth())
                    .setHeight(image.getHeight())
                    .setData(UnsafeByteOperations.unsafeWrap(data))).build();
            long limit = info.getMaxMessageBytes();
            if (limit > 0 && message.getSerializedSize() > limit) {
                fail(new CopException(Kind.TOO_LARGE, String.format(Locale.ROOT,
                        "A %d x %d tile encodes to %d bytes as %s, more than the server's limit of %d bytes per message. %s",
                        image.getWidth(), image.getHeight(), message.getSerializedSize(), encoding, limit,
                        encoding == PixelEncoding.RAW_RGB
                                ? "Offer PNG (Preferences > Chain-of-Prompts), or start the server with a larger limit."
                                : "Use a coarser working resolution, or start the server with a larger message limit.")));
                return;
            }
            if (send(message)) {
                transfer.record(encoding, data.length, (long) image.getWidth() * image.getHeight(), t1 - t0, t2 - t1);
                listener.onTileSent(encoding, data.length, t1 - t0, t2 - t1);
            }
        } catch (IOException | RuntimeException e) {
            fail(new CopException(Kind.TILE_READ_FAILED, String.format(Locale.ROOT,
                    "Could not read the image at level-0 (%d, %d, %d x %d), downsample %.3g: %s",
                    r.getX(), r.getY(), r.getWidth(), r.getHeight(), r.getDownsample(), e.getMessage() == null
                            ? e.toString() : e.getMessage()), e));
        } catch (OutOfMemoryError e) {
            fail(new CopException(Kind.TILE_READ_FAILED, "Not enough memory to read a " + r.getOutWidth() + " x "
                    + r.getOutHeight() + " tile. Give QuPath more memory (Edit > Preferences > General) or use fewer tile threads.", e));
        } finally {
            tilesInFlight.decrementAndGet();
            lastActivityNanos = System.nanoTime();
        }
    }

    private void onDetections(DetectionBatch batch) throws CopException {
        ClassMapping classes = job.classes();
        List<CellDetection> converted = new ArrayList<>(batch.getDetectionsCount());
        for (Detection d : batch.getDetectionsList()) {
            if (!classes.contains(d.getClassIndex())) {
                throw new CopException(Kind.INTERNAL, "The server sent a cell of class index " + d.getClassIndex()
                        + ", but this run has only " + classes.size() + " classes " + classes.names() + " (protocol error).");
            }
            Polygon polygon;
            try {
                polygon = ProtoGeometry.toJts(d.getPolygon(), factory);
            } catch (IllegalArgumentException e) {
                dropped.incrementAndGet();
                continue;
            }
            Polygon valid = ProtoGeometry.repair(polygon);
            if (valid == null) {
                dropped.incrementAndGet();
                continue;
            }
            if (valid != polygon) {
                repaired.incrementAndGet();
            }
            converted.add(new CellDetection(valid, d.getClassIndex(), classes.name(d.getClassIndex()), d.getScore(),
                    d.getMeasurementsMap()));
        }
        synchronized (detections) {
            detections.addAll(converted);
        }
        listener.onDetections(converted);
    }

    // ---- client -> server -------------------------------------------------------------------

    private boolean send(ClientMessage message) {
        synchronized (sendLock) {
            if (halfClosed || outcome.isDone() || requests == null) {
                return false;
            }
            try {
                requests.onNext(message);
                return true;
            } catch (RuntimeException e) {
                // The call was cancelled or closed meanwhile; onError reports why.
                LOG.log(System.Logger.Level.DEBUG, "Could not send to the server: " + e);
                return false;
            }
        }
    }

    private void halfClose() {
        synchronized (sendLock) {
            if (halfClosed || requests == null) {
                return;
            }
            halfClosed = true;
            try {
                requests.onCompleted();
            } catch (RuntimeException e) {
                LOG.log(System.Logger.Level.DEBUG, "Half-close after the end of the call: " + e);
            }
        }
    }

    private void sendCancel() {
        send(ClientMessage.newBuilder().setCancel(Cancel.getDefaultInstance()).build());
    }

    /** Stops the session because of a local problem; the first problem is the one reported. */
    private void fail(CopException e) {
        if (outcome.isDone() || !localFailure.compareAndSet(null, e)) {
            return;
        }
        LOG.log(System.Logger.Level.DEBUG, "Stopping the session: " + e.getMessage());
        sendCancel();
        ClientCallStreamObserver<ClientMessage> r = requests;
        if (r != null) {
            r.cancel(e.getMessage(), e);
        }
        // gRPC always calls onError after cancel; this is a belt for a call that never started.
        scheduler.schedule(() -> finish(null, e), CANCEL_GRACE.toMillis() * 2, TimeUnit.MILLISECONDS);
    }

    @Override
    public void cancel() {
        if (outcome.isDone() || cancelRequested) {
            return;
        }
        cancelRequested = true;
        sendCancel();
        scheduler.schedule(() -> {
            ClientCallStreamObserver<ClientMessage> r = requests;
            if (!outcome.isDone() && r != null) {
                r.cancel("Cancelled by the user", null);
            }
        }, CANCEL_GRACE.toMillis(), TimeUnit.MILLISECONDS);
        scheduler.schedule(() -> finish(null, cancelled()), CANCEL_GRACE.toMillis() * 2, TimeUnit.MILLISECONDS);
    }

    private void checkIdle() {
        if (outcome.isDone() || tilesInFlight.get() > 0) {
            return;
        }
        long idle = System.nanoTime() - lastActivityNanos;
        if (idle > settings.idleTimeout().toNanos()) {
            fail(new CopException(Kind.TIMEOUT, "The server at " + settings.address() + " sent nothing for "
                    + ErrorMessages.seconds(settings.idleTimeout()) + " and the session was stopped; nothing was added."
                    + " The server may be overloaded or stuck (see its log). A slow model on a CPU may need a longer"
                    + " 'Idle timeout' in Preferences > Chain-of-Prompts."));
        }
    }

    private CopException cancelled() {
        return new CopException(Kind.CANCELLED, "Cancelled; nothing was added to the image.");
    }

    private void finish(SegmentationResult result, CopException error) {
        boolean first = result != null ? outcome.complete(result) : outcome.completeExceptionally(error);
        if (!first) {
            return;
        }
        if (watchdog != null) {
            watchdog.cancel(false);
        }
        tilePool.shutdownNow();
    }

    // ---- SegmentationRun --------------------------------------------------------------------

    @Override
    public boolean isDone() {
        return outcome.isDone();
    }

    @Override
    public SegmentationResult await() throws CopException, InterruptedException {
        try {
            return outcome.get();
        } catch (ExecutionException e) {
            throw unwrap(e);
        } catch (InterruptedException e) {
            cancel();
            throw e;
        }
    }

    @Override
    public SegmentationResult await(Duration timeout) throws CopException, InterruptedException {
        try {
            return outcome.get(timeout.toNanos(), TimeUnit.NANOSECONDS);
        } catch (ExecutionException e) {
            throw unwrap(e);
        } catch (TimeoutException e) {
            cancel();
            throw new CopException(Kind.TIMEOUT, "The session did not finish within " + ErrorMessages.seconds(timeout)
                    + " and was cancelled.", e);
        } catch (InterruptedException e) {
            cancel();
            throw e;
        }
    }

    private static CopException unwrap(ExecutionException e) {
        return e.getCause() instanceof CopException c ? c
                : new CopException(Kind.INTERNAL, "Unexpected error: " + e.getCause(), e.getCause());
    }
}
