package io.github.cop.qupath.client;

import java.time.Duration;
import java.util.List;

/**
 * The outcome of a completed session.
 *
 * @param start            what the server accepted to do
 * @param detections       every cell, in the order received
 * @param summary          the server's closing report
 * @param classes          the classes of the run (to map indices to names)
 * @param transfer         pixels sent by the client (empty in server-path mode)
 * @param wallTime         from opening the stream to the summary
 * @param repairedPolygons polygons the server sent invalid and the client repaired
 * @param droppedPolygons  polygons with no area left after repair, dropped
 */
public record SegmentationResult(SessionStart start, List<CellDetection> detections, SessionSummary summary,
                                 ClassMapping classes, TransferStats transfer, Duration wallTime,
                                 int repairedPolygons, int droppedPolygons) {

    /** The list is copied: a result is a value. */
    public SegmentationResult {
        detections = List.copyOf(detections);
    }

    /**
     * @param className a class of the run
     * @return how many detections the client received for it
     */
    public long count(String className) {
        return detections.stream().filter(d -> d.className().equals(className)).count();
    }
}
