package io.github.cop.qupath.extension;

import qupath.fx.dialogs.Dialogs;
import qupath.fx.dialogs.FileChoosers;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.images.ImageData;
import qupath.lib.io.PathIO;
import qupath.lib.objects.PathObject;

import java.awt.image.BufferedImage;
import java.io.File;
import java.io.IOException;
import java.util.Collection;

/**
 * Extensions &gt; Chain-of-Prompts &gt; Export detections as GeoJSON: every detection of the image,
 * with classes and measurements, as one FeatureCollection written by QuPath's own exporter (so
 * QuPath, and anything that reads QuPath's GeoJSON, reads it back unchanged).
 */
final class ExportCommand {

    private final QuPathGUI qupath;

    ExportCommand(QuPathGUI qupath) {
        this.qupath = qupath;
    }

    /** Runs on the JavaFX thread (menu action). */
    void run() {
        ImageData<BufferedImage> imageData = qupath.getImageData();
        if (imageData == null) {
            Dialogs.showErrorMessage(DetectCommand.TITLE, "Open an image first.");
            return;
        }
        Collection<PathObject> detections = imageData.getHierarchy().getDetectionObjects();
        if (detections.isEmpty()) {
            Dialogs.showWarningNotification(DetectCommand.TITLE, "The image has no detections to export.");
            return;
        }
        // One filter with both extensions: QuPath appends the selected filter's extension to a name that lacks it, so
        // with one filter per extension "cells.geojson.gz" typed under the (default) GeoJSON filter became
        // "cells.geojson.gz.geojson", uncompressed. PathIO compresses when the name ends with .gz.
        File file = FileChoosers.promptToSaveFile("Export detections as GeoJSON", new File("cells.geojson"),
                FileChoosers.createExtensionFilter("GeoJSON (.geojson, or .geojson.gz for gzip)", ".geojson", ".geojson.gz"));
        if (file == null) {
            return;
        }
        try {
            PathIO.exportObjectsAsGeoJSON(file, detections, PathIO.GeoJsonExportOptions.FEATURE_COLLECTION);
            Dialogs.showInfoNotification(DetectCommand.TITLE, "Exported " + detections.size() + " detections to " + file);
        } catch (IOException e) {
            Dialogs.showErrorMessage(DetectCommand.TITLE, "Could not write " + file + ": " + e.getMessage());
        }
    }
}
