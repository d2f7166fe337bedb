package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.Accepted;

import java.util.List;

/**
 * What the server decided when it accepted a session: how many tiles, at which downsample.
 *
 * @param sessionId  the server's id for the session (quote it when reading the server log)
 * @param tilesTotal tiles the server plans to process
 * @param downsample working downsample chosen
 * @param tileSide   tile side in working pixels
 * @param halo       tile overlap in working pixels
 * @param warnings   things the user should know (e.g. a click outside every region)
 */
public record SessionStart(String sessionId, int tilesTotal, double downsample, int tileSide, int halo,
                           List<String> warnings) {

    /** Keeps the warnings immutable. */
    public SessionStart {
        warnings = List.copyOf(warnings);
    }

    static SessionStart of(Accepted a) {
        return new SessionStart(a.getSessionId(), a.getTilesTotal(), a.getDownsample(), a.getTileSide(), a.getHalo(),
                a.getWarningsList());
    }
}
