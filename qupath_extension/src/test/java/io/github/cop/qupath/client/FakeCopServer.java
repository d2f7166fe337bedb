package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.ClientMessage;
import io.github.cop.qupath.proto.v1.CopGrpc;
import io.github.cop.qupath.proto.v1.GetInfoRequest;
import io.github.cop.qupath.proto.v1.ServerInfo;
import io.github.cop.qupath.proto.v1.ServerMessage;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.time.Duration;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * A scriptable Chain-of-Prompts server inside the test JVM, on a real loopback socket, for the
 * cases a real server cannot be made to produce on demand (a protocol it does not speak, a tile
 * larger than its limit, thousands of detection batches, silence, a crash mid-session).
 * Each test gives a {@link Script} that plays the server's side of one Segment call.
 */
final class FakeCopServer implements AutoCloseable {

    /** The server side of one Segment call. */
    @FunctionalInterface
    interface Script {
        void play(Call call) throws Exception;
    }

    /** One Segment call as the script sees it: messages in, messages out. */
    static final class Call {
        final BlockingQueue<ClientMessage> received = new LinkedBlockingQueue<>();
        final CountDownLatch clientDone = new CountDownLatch(1);
        volatile boolean cancelledByClient;
        private final ServerCallStreamObserver<ServerMessage> out;

        Call(ServerCallStreamObserver<ServerMessage> out) {
            this.out = out;
            out.setOnCancelHandler(() -> {
                cancelledByClient = true;
                clientDone.countDown();
            });
        }

        /** @return the next client message, failing the test when none comes in time */
        ClientMessage next() throws InterruptedException {
            ClientMessage m = received.poll(10, TimeUnit.SECONDS);
            if (m == null) {
                throw new AssertionError("The client sent nothing within 10 s");
            }
            return m;
        }

        void send(ServerMessage m) {
            synchronized (out) {
                out.onNext(m);
            }
        }

        void complete() {
            synchronized (out) {
                out.onCompleted();
            }
        }

        void fail(Status status) {
            synchronized (out) {
                out.onError(status.asRuntimeException());
            }
        }

        boolean isCancelled() {
            return out.isCancelled();
        }
    }

    static ServerInfo info(int protocolMajor) {
        return ServerInfo.newBuilder()
                .setServerVersion("fake-1.0")
                .setProtocolMajor(protocolMajor)
                .setLoadedModel("fake")
                .setNativeTile(512)
                .setDevice("cpu")
                .setMaxMessageBytes(16 * 1024 * 1024)
                .setMaxTileSide(2048)
                .setServerPathAllowed(false)
                .build();
    }

    private final Server server;
    private final int port;
    private volatile ServerInfo info;
    private volatile Script script = call -> call.fail(Status.UNIMPLEMENTED.withDescription("no script"));
    final BlockingQueue<Call> calls = new LinkedBlockingQueue<>();

    FakeCopServer(ServerInfo info, String requiredToken) throws IOException {
        this.info = info;
        CopGrpc.CopImplBase service = new CopGrpc.CopImplBase() {
            @Override
            public void getInfo(GetInfoRequest request, StreamObserver<ServerInfo> responseObserver) {
                responseObserver.onNext(FakeCopServer.this.info);
                responseObserver.onCompleted();
            }

            @Override
            public StreamObserver<ClientMessage> segment(StreamObserver<ServerMessage> responseObserver) {
                Call call = new Call((ServerCallStreamObserver<ServerMessage>) responseObserver);
                calls.add(call);
                Script s = script;
                Thread t = new Thread(() -> {
                    try {
                        s.play(call);
                    } catch (Exception e) {
                        if (!call.isCancelled()) {
                            call.fail(Status.INTERNAL.withDescription("fake server script failed: " + e));
                        }
                    }
                }, "fake-cop-script");
                t.setDaemon(true);
                t.start();
                return new StreamObserver<>() {
                    @Override
                    public void onNext(ClientMessage value) {
                        call.received.add(value);
                    }

                    @Override
                    public void onError(Throwable t) {
                        call.clientDone.countDown();
                    }

                    @Override
                    public void onCompleted() {
                        call.clientDone.countDown();
                    }
                };
            }
        };
        NettyServerBuilder b = NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0));
        if (requiredToken != null) {
            b.addService(ServerInterceptors.intercept(service, new TokenCheck(requiredToken)));
        } else {
            b.addService(service);
        }
        this.server = b.build().start();
        this.port = server.getPort();
    }

    FakeCopServer() throws IOException {
        this(info(CopClient.PROTOCOL_MAJOR), null);
    }

    void setScript(Script s) {
        this.script = s;
    }

    void setInfo(ServerInfo i) {
        this.info = i;
    }

    ServerAddress address() {
        return new ServerAddress("127.0.0.1", port);
    }

    ConnectionSettings settings() {
        return ConnectionSettings.forAddress(address()).withInfoTimeout(Duration.ofSeconds(5));
    }

    Call nextCall() throws InterruptedException {
        Call c = calls.poll(10, TimeUnit.SECONDS);
        if (c == null) {
            throw new AssertionError("No Segment call reached the fake server within 10 s");
        }
        return c;
    }

    /** Stops at once, dropping open calls, like a server that crashed. */
    void crash() {
        server.shutdownNow();
    }

    @Override
    public void close() {
        server.shutdownNow();
        try {
            server.awaitTermination(5, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private record TokenCheck(String token) implements ServerInterceptor {
        private static final Metadata.Key<String> AUTH = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

        @Override
        public <Q, A> ServerCall.Listener<Q> interceptCall(ServerCall<Q, A> call, Metadata headers,
                                                           ServerCallHandler<Q, A> next) {
            String given = headers.get(AUTH);
            if (!("Bearer " + token).equals(given)) {
                call.close(Status.UNAUTHENTICATED.withDescription(given == null ? "no token given" : "wrong token"),
                        new Metadata());
                return new ServerCall.Listener<>() {
                };
            }
            return next.startCall(call, headers);
        }
    }
}
