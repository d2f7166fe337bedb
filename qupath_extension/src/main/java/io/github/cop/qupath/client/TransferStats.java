package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.PixelEncoding;

import java.util.EnumMap;
import java.util.Map;

/**
 * What the client spent on pixels during a session: tiles, bytes and time per encoding.
 * Thread-safe, because tiles are read and encoded on several threads.
 */
public final class TransferStats {

    /**
     * Totals for one encoding.
     *
     * @param tiles       tiles sent
     * @param bytes       pixel bytes sent
     * @param pixels      pixels sent
     * @param readNanos   time reading tiles from the image
     * @param encodeNanos time encoding them
     */
    public record PerEncoding(long tiles, long bytes, long pixels, long readNanos, long encodeNanos) {
        /** @return mean bytes per tile */
        public double bytesPerTile() {
            return tiles == 0 ? 0 : bytes / (double) tiles;
        }

        /** @return mean bytes per pixel (3 for RAW_RGB) */
        public double bytesPerPixel() {
            return pixels == 0 ? 0 : bytes / (double) pixels;
        }
    }

    private final Map<PixelEncoding, long[]> totals = new EnumMap<>(PixelEncoding.class);

    synchronized void record(PixelEncoding encoding, int bytes, long pixels, long readNanos, long encodeNanos) {
        long[] t = totals.computeIfAbsent(encoding, e -> new long[5]);
        t[0]++;
        t[1] += bytes;
        t[2] += pixels;
        t[3] += readNanos;
        t[4] += encodeNanos;
    }

    /** @return a snapshot per encoding used */
    public synchronized Map<PixelEncoding, PerEncoding> byEncoding() {
        Map<PixelEncoding, PerEncoding> out = new EnumMap<>(PixelEncoding.class);
        totals.forEach((e, t) -> out.put(e, new PerEncoding(t[0], t[1], t[2], t[3], t[4])));
        return out;
    }

    /** @return tiles sent in any encoding */
    public synchronized long tiles() {
        return totals.values().stream().mapToLong(t -> t[0]).sum();
    }

    /** @return pixel bytes sent in any encoding */
    public synchronized long bytes() {
        return totals.values().stream().mapToLong(t -> t[1]).sum();
    }

    @Override
    public synchronized String toString() {
        StringBuilder sb = new StringBuilder();
        byEncoding().forEach((e, p) -> sb.append(String.format(java.util.Locale.ROOT,
                "%s: %d tiles, %.0f bytes/tile, %.2f bytes/pixel, read %.2f s, encode %.2f s; ",
                e, p.tiles(), p.bytesPerTile(), p.bytesPerPixel(), p.readNanos() / 1e9, p.encodeNanos() / 1e9)));
        return sb.length() == 0 ? "no tiles sent" : sb.substring(0, sb.length() - 2);
    }
}
