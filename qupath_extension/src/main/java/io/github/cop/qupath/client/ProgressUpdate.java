package io.github.cop.qupath.client;

/**
 * Where a session stands, as the server reports it after each tile.
 *
 * @param tilesDone  tiles finished
 * @param tilesTotal tiles planned
 * @param cells      cells found so far
 * @param stage      "prototypes", "tiles" or "done"
 */
public record ProgressUpdate(int tilesDone, int tilesTotal, long cells, String stage) {

    /** @return done / total in [0, 1], 0 while the total is unknown */
    public double fraction() {
        return tilesTotal <= 0 ? 0 : Math.min(1.0, tilesDone / (double) tilesTotal);
    }
}
