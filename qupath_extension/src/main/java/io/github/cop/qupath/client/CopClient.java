package io.github.cop.qupath.client;

import io.github.cop.qupath.client.CopException.Kind;
import io.github.cop.qupath.proto.v1.CopGrpc;
import io.github.cop.qupath.proto.v1.GetInfoRequest;
import io.github.cop.qupath.proto.v1.ProtocolVersion;
import io.github.cop.qupath.proto.v1.ServerInfo;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptors;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;

import java.io.IOException;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/**
 * A connection to one Chain-of-Prompts server.
 *
 * <p>Typical use, from a background thread:
 * <pre>{@code
 * try (CopClient client = CopClient.create(ConnectionSettings.forAddress(ServerAddress.parse("127.0.0.1:50051")))) {
 *     client.connect();                                   // GetInfo + protocol check
 *     SegmentationRun run = client.start(job, tileSource, listener);
 *     SegmentationResult result = run.await();            // or run.cancel()
 * }
 * }</pre>
 *
 * <p>The channel is built with {@link NettyChannelBuilder} from grpc-netty-shaded directly:
 * inside QuPath the extension lives in its own class loader, where gRPC's lookup of a channel
 * provider through {@code ManagedChannelProvider} can pick the wrong one or none.
 */
public final class CopClient implements AutoCloseable {

    /** The protocol major version this client speaks ({@code cop.v1.ProtocolVersion.PROTOCOL_MAJOR}). */
    public static final int PROTOCOL_MAJOR = ProtocolVersion.PROTOCOL_MAJOR_VALUE;

    /** Metadata key that carries the token; {@code cop serve --token} checks it on every call. */
    public static final Metadata.Key<String> AUTHORIZATION =
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

    /**
     * Largest message accepted from the server. The server batches detections under its own
     * limit; this only has to be at least that, with room for servers configured above the default.
     */
    static final int MAX_INBOUND_BYTES = 256 * 1024 * 1024;

    private final ConnectionSettings settings;
    private final int protocolMajor;
    private final ManagedChannel channel;
    private final Channel callChannel;
    private final ScheduledExecutorService scheduler;
    private volatile ServerInfo info;

    private CopClient(ConnectionSettings settings, int protocolMajor) throws CopException {
        this.settings = settings;
        this.protocolMajor = protocolMajor;
        ChannelCredentials credentials = credentials(settings);
        this.channel = NettyChannelBuilder
                .forAddress(settings.address().host(), settings.address().port(), credentials)
                .maxInboundMessageSize(MAX_INBOUND_BYTES)
                .userAgent("cop-qupath")
                .build();
        Channel c = channel;
        if (settings.token().isPresent()) {
            Metadata headers = new Metadata();
            headers.put(AUTHORIZATION, "Bearer " + settings.token().get());
            c = ClientInterceptors.intercept(channel, MetadataUtils.newAttachHeadersInterceptor(headers));
        }
        this.callChannel = c;
        this.scheduler = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "cop-client-timer");
            t.setDaemon(true);
            return t;
        });
    }

    /**
     * Creates a client; nothing is sent until {@link #connect()} or {@link #start}.
     *
     * @param settings where and how to connect
     * @return the client, to be closed after use
     * @throws CopException when the TLS certificate file cannot be read
     */
    public static CopClient create(ConnectionSettings settings) throws CopException {
        return new CopClient(settings, PROTOCOL_MAJOR);
    }

    /** For tests: a client that claims another protocol version, to see the server refuse it. */
    static CopClient createSpeakingProtocol(ConnectionSettings settings, int protocolMajor) throws CopException {
        return new CopClient(settings, protocolMajor);
    }

    private static ChannelCredentials credentials(ConnectionSettings settings) throws CopException {
        if (!settings.useTls()) {
            return InsecureChannelCredentials.create();
        }
        if (settings.trustedCertificate().isEmpty()) {
            return TlsChannelCredentials.create();
        }
        try {
            return TlsChannelCredentials.newBuilder()
                    .trustManager(settings.trustedCertificate().get().toFile())
                    .build();
        } catch (IOException | RuntimeException e) {
            throw new CopException(Kind.INVALID_REQUEST, "Cannot read the TLS certificate "
                    + settings.trustedCertificate().get() + ": " + e.getMessage()
                    + ". Set 'TLS certificate' in Preferences > Chain-of-Prompts to the server's PEM certificate.", e);
        }
    }

    /** @return the settings this client was created with */
    public ConnectionSettings settings() {
        return settings;
    }

    /**
     * Asks the server what it runs ({@code GetInfo}, with the info deadline) and checks that it
     * speaks this client's protocol major version.
     *
     * @return what the server runs and its limits
     * @throws CopException when it cannot be reached, is not a Chain-of-Prompts server, wants a
     *                      token, or speaks another protocol version; the message says which
     */
    public ServerInfo connect() throws CopException {
        ServerInfo i;
        try {
            i = CopGrpc.newBlockingStub(callChannel)
                    .withDeadlineAfter(settings.infoTimeout().toMillis(), TimeUnit.MILLISECONDS)
                    .getInfo(GetInfoRequest.getDefaultInstance());
        } catch (StatusRuntimeException e) {
            throw ErrorMessages.translate(e, settings, ErrorMessages.Phase.CONNECT);
        }
        if (i.getProtocolMajor() != PROTOCOL_MAJOR) {
            throw ErrorMessages.protocolMismatch(settings, i.getProtocolMajor(), i.getServerVersion(), PROTOCOL_MAJOR);
        }
        info = i;
        return i;
    }

    /**
     * @return what the server said on {@link #connect()}, connecting first if that has not happened
     * @throws CopException as for {@link #connect()}
     */
    public ServerInfo serverInfo() throws CopException {
        ServerInfo i = info;
        return i != null ? i : connect();
    }

    /**
     * Starts a session. Returns as soon as the request is sent; the session runs on gRPC's and
     * the tile threads.
     *
     * @param job      what to segment
     * @param tiles    where to read pixels (client-pixel mode); ignored in server-path mode, may be null there
     * @param listener progress and detections as they arrive; may be null
     * @return the running session
     * @throws CopException when the server cannot be reached or cannot serve this job at all
     */
    public SegmentationRun start(SegmentationJob job, TileSource tiles, SessionListener listener) throws CopException {
        ServerInfo i = serverInfo();
        if (job.pixelSource() instanceof PixelSource.ServerFile && !i.getServerPathAllowed()) {
            throw new CopException(Kind.PERMISSION_DENIED, "The server at " + settings.address()
                    + " does not read image files itself (it was started without --slide-root). Choose 'Send pixels from"
                    + " QuPath' in Preferences > Chain-of-Prompts, or restart the server with --slide-root <folder of the images>.");
        }
        if (job.pixelSource() instanceof PixelSource.ClientPixels && tiles == null) {
            throw new IllegalArgumentException("Client-pixel mode needs a TileSource");
        }
        SegmentSession session = new SegmentSession(job, tiles, listener, settings, i, protocolMajor, scheduler);
        session.start(CopGrpc.newStub(callChannel));
        return session;
    }

    /**
     * Runs a session to its end on the calling thread.
     *
     * @param job      what to segment
     * @param tiles    where to read pixels (client-pixel mode)
     * @param listener progress and detections; may be null
     * @return the result
     * @throws CopException         when the session fails or is cancelled
     * @throws InterruptedException when the calling thread is interrupted (the session is cancelled)
     */
    public SegmentationResult segment(SegmentationJob job, TileSource tiles, SessionListener listener)
            throws CopException, InterruptedException {
        return start(job, tiles, listener).await();
    }

    /** Closes the connection at once; running sessions end with an error. */
    @Override
    public void close() {
        channel.shutdownNow();
        try {
            channel.awaitTermination(5, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } finally {
            scheduler.shutdownNow();
        }
    }
}
