package io.github.cop.qupath.extension;

import javafx.scene.control.MenuItem;
import qupath.lib.common.Version;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.gui.extensions.QuPathExtension;

/**
 * The QuPath entry point (listed in {@code META-INF/services/qupath.lib.gui.extensions.QuPathExtension}):
 * adds the preferences and the Extensions &gt; Chain-of-Prompts menu. Everything else is in
 * {@link CopDetect} (the run), {@link DetectCommand} and {@link ExportCommand} (the dialogs), and
 * the QuPath-independent client core.
 */
public class CopExtension implements QuPathExtension {

    private boolean installed;

    @Override
    public void installExtension(QuPathGUI qupath) {
        if (installed) {
            return;
        }
        installed = true;
        CopPreferences.addTo(qupath.getPreferencePane().getPropertySheet());

        DetectCommand detect = new DetectCommand(qupath);
        ExportCommand export = new ExportCommand(qupath);
        MenuItem detectItem = new MenuItem("Detect cells in selected annotations");
        detectItem.setOnAction(e -> detect.run());
        MenuItem exportItem = new MenuItem("Export detections as GeoJSON");
        exportItem.setOnAction(e -> export.run());
        qupath.getMenu("Extensions>" + DetectCommand.TITLE, true).getItems().addAll(detectItem, exportItem);
    }

    @Override
    public String getName() {
        return "Chain-of-Prompts";
    }

    @Override
    public String getDescription() {
        return "One click per cell type: detect and classify every cell of the clicked types in the selected"
                + " annotations, with a Chain-of-Prompts server (cop serve).";
    }

    @Override
    public Version getQuPathVersion() {
        return Version.parse("0.6.0");
    }
}
