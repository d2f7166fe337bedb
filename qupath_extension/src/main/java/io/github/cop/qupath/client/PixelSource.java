package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.PixelEncoding;

import java.util.List;
import java.util.Objects;

/**
 * Where the server gets pixels from.
 *
 * <p>{@link ClientPixels} works for every image QuPath can open (any format, remote servers,
 * projects on another machine): the server asks for tiles and the client reads them through a
 * {@link TileSource}. {@link ServerFile} avoids the transfer when the server shares the file
 * system and was started with a {@code --slide-root} that contains the file.
 */
public sealed interface PixelSource {

    /**
     * The client sends pixels.
     *
     * @param encodings encodings the client can send, preferred first (PNG, RAW_RGB)
     */
    record ClientPixels(List<PixelEncoding> encodings) implements PixelSource {
        /** Keeps only real encodings; an empty list means PNG, as on the wire. */
        public ClientPixels {
            encodings = List.copyOf(Objects.requireNonNull(encodings, "encodings"));
            for (PixelEncoding e : encodings) {
                if (e == PixelEncoding.PIXEL_ENCODING_UNSPECIFIED || e == PixelEncoding.UNRECOGNIZED) {
                    throw new IllegalArgumentException("Not a pixel encoding the client can send: " + e);
                }
            }
        }
    }

    /**
     * The server reads the file itself.
     *
     * @param path the path as the server sees it (under one of its --slide-root folders)
     */
    record ServerFile(String path) implements PixelSource {
        /** A blank path can only be a mistake. */
        public ServerFile {
            Objects.requireNonNull(path, "path");
            if (path.isBlank()) {
                throw new IllegalArgumentException("The server-side image path is empty");
            }
        }
    }

    /** @param encodings preferred first @return client-pixel mode */
    static PixelSource clientPixels(PixelEncoding... encodings) {
        return new ClientPixels(List.of(encodings));
    }

    /**
     * Client-pixel mode with the encodings in the order that is fastest for where the server is:
     * on this machine RAW_RGB first (there is no network to save, and PNG costs encoding time on
     * both sides), elsewhere PNG first (about half the bytes on H&amp;E). The server answers with
     * the first encoding it supports, and both are always offered.
     *
     * @param address where the server listens
     * @return client-pixel mode
     */
    static PixelSource clientPixelsFor(ServerAddress address) {
        return address.isLoopback() ? clientPixels(PixelEncoding.RAW_RGB, PixelEncoding.PNG)
                : clientPixels(PixelEncoding.PNG, PixelEncoding.RAW_RGB);
    }

    /** @param path the path as the server sees it @return server-path mode */
    static PixelSource serverFile(String path) {
        return new ServerFile(path);
    }
}
