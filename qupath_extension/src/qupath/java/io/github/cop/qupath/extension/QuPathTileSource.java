package io.github.cop.qupath.extension;

import io.github.cop.qupath.client.TileSource;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.regions.ImagePlane;
import qupath.lib.regions.RegionRequest;

import java.awt.image.BufferedImage;
import java.io.IOException;

/**
 * Reads tiles for the server through QuPath's own {@link ImageServer}, so every format QuPath
 * opens (and every remote or transformed server) works. The client core has already clipped the
 * box to the image and will pad and rescale the result; this class only reads.
 */
final class QuPathTileSource implements TileSource {

    private final ImageServer<BufferedImage> server;
    private final ImagePlane plane;

    QuPathTileSource(ImageServer<BufferedImage> server, ImagePlane plane) {
        this.server = server;
        this.plane = plane;
    }

    @Override
    public BufferedImage read(int x, int y, int width, int height, double downsample) throws IOException {
        return server.readRegion(RegionRequest.createInstance(server.getPath(), downsample, x, y, width, height, plane));
    }
}
