package io.github.cop.qupath.extension;

import io.github.cop.qupath.client.CopException;
import io.github.cop.qupath.client.ProgressUpdate;
import io.github.cop.qupath.client.SegmentationResult;
import io.github.cop.qupath.client.SegmentationRun;
import io.github.cop.qupath.client.SessionListener;
import javafx.application.Platform;
import qupath.fx.dialogs.Dialogs;
import qupath.fx.utils.FXUtils;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.gui.TaskRunnerFX;
import qupath.lib.images.ImageData;
import qupath.lib.objects.PathObject;
import qupath.lib.plugins.SimpleProgressMonitor;

import java.awt.image.BufferedImage;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Extensions &gt; Chain-of-Prompts &gt; Detect cells in selected annotations.
 *
 * <p>The questions are asked on the JavaFX thread before anything runs (whole image? replace
 * the previous cells?), so that answering "no" leaves the image untouched; the run itself is on
 * a background thread under QuPath's own progress dialog, whose Cancel cancels the server session.
 */
final class DetectCommand {

    static final String TITLE = "Chain-of-Prompts";

    /** Progress steps of the dialog: permille of the tiles, since the tile count is known only once the server accepts. */
    private static final int STEPS = 1000;

    private final QuPathGUI qupath;

    DetectCommand(QuPathGUI qupath) {
        this.qupath = qupath;
    }

    /** Runs on the JavaFX thread (menu action). */
    void run() {
        ImageData<BufferedImage> imageData = qupath.getImageData();
        if (imageData == null) {
            Dialogs.showErrorMessage(TITLE, "Open an image first.");
            return;
        }
        var hierarchy = imageData.getHierarchy();
        List<PathObject> selected = hierarchy.getSelectionModel().getSelectedObjects().stream()
                .filter(o -> o.isAnnotation() && o.hasROI() && o.getROI().isArea()).toList();
        CopDetect.Regions regions;
        if (selected.isEmpty()) {
            if (!Dialogs.showYesNoDialog(TITLE, "No annotation is selected.\nDetect cells in the whole image?")) {
                return;
            }
            regions = CopDetect.Regions.WHOLE_IMAGE;
        } else {
            long allAreas = hierarchy.getAnnotationObjects().stream().filter(o -> o.hasROI() && o.getROI().isArea()).count();
            // Recorded as "all annotations" when that is what was selected, so "Run for project" repeats it faithfully.
            regions = selected.size() == allAreas ? CopDetect.Regions.ALL_ANNOTATIONS : CopDetect.Regions.SELECTED;
        }

        CopDetect detect;
        CopDetect.Plan plan;
        try {
            detect = CopDetect.builder().regions(regions).build();
            plan = detect.plan(imageData);
        } catch (IllegalArgumentException e) {
            Dialogs.showErrorMessage(TITLE, e.getMessage());
            return;
        }
        if (plan.unclassifiedPoints() > 0) {
            Dialogs.showWarningNotification(TITLE, plan.unclassifiedPoints() + " unclassified point(s) ignored: give a"
                    + " point a class (right-click > Set classification) to use it as a click.");
        }
        if (plan.otherPlanePoints() > 0) {
            Dialogs.showWarningNotification(TITLE, plan.otherPlanePoints() + " point(s) on other z-slices or timepoints ignored.");
        }
        if (!plan.previous().isEmpty() && !Dialogs.showConfirmDialog(TITLE, "Replace the " + plan.previous().size()
                + " cells found by a previous Chain-of-Prompts run in "
                + (regions == CopDetect.Regions.WHOLE_IMAGE ? "the image" : "these regions")
                + "?\nYour annotations and points are not changed.")) {
            return;
        }
        qupath.getThreadPoolManager().getSingleThreadExecutor(this).submit(() -> runInBackground(imageData, detect, plan));
    }

    private void runInBackground(ImageData<BufferedImage> imageData, CopDetect detect, CopDetect.Plan plan) {
        SimpleProgressMonitor monitor = new TaskRunnerFX(qupath).makeProgressMonitor();
        // The first argument is the dialog's header for the whole run (QuPath never replaces it); the label below it
        // carries the stage: connecting first, then the tiles.
        monitor.startMonitoring("Chain-of-Prompts: detecting cells", STEPS, true);
        monitor.updateProgress(0, "Connecting to the server...", null);
        AtomicReference<SegmentationRun> running = new AtomicReference<>();
        Thread worker = Thread.currentThread();
        AtomicBoolean interruptSent = new AtomicBoolean();
        ScheduledExecutorService poll = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "cop-cancel-poll");
            t.setDaemon(true);
            return t;
        });
        // The monitor only records that Cancel was pressed; this turns it into a cancelled session
        // (or an interrupted connection attempt, while a local server is still starting).
        poll.scheduleWithFixedDelay(() -> {
            if (monitor.cancelled()) {
                SegmentationRun run = running.get();
                if (run != null) {
                    run.cancel();
                } else if (interruptSent.compareAndSet(false, true)) {
                    // Once: the flag stays set until the connection attempt reacts to it, and a repeated interrupt
                    // would hit the worker again while it reports the outcome.
                    worker.interrupt();
                }
            }
        }, 200, 200, TimeUnit.MILLISECONDS);
        int[] shown = {0};
        SessionListener listener = new SessionListener() {
            @Override
            public void onProgress(ProgressUpdate p) {
                int target = Math.min(STEPS - 1, (int) Math.round(p.fraction() * STEPS));
                int step;
                synchronized (shown) {
                    step = Math.max(0, target - shown[0]);
                    shown[0] += step;
                }
                monitor.updateProgress(step, String.format(Locale.ROOT, "Tiles %d / %d, %,d cells",
                        p.tilesDone(), p.tilesTotal(), p.cells()), null);
            }
        };
        try {
            SegmentationResult result = detect.execute(imageData, plan, listener, running::set);
            if (monitor.cancelled()) {
                // Cancel was pressed while the last results arrived: honour it, as QuPath's own task runner does.
                throw new CopException(CopException.Kind.CANCELLED, "Cancelled; nothing was added to the image.");
            }
            CopDetect.Result changed = detect.apply(imageData, plan, result);
            FXUtils.runOnApplicationThread(() -> {
                detect.recordWorkflowStep(imageData);
                Dialogs.showInfoNotification(TITLE, changed.summary());
                if (!changed.warnings().isEmpty()) {
                    Dialogs.showWarningNotification(TITLE, String.join("\n", changed.warnings()));
                }
            });
        } catch (CopException e) {
            // Not FXUtils.runOnApplicationThread: it waits for the FX thread, and an interrupt from Cancel (gRPC
            // restores the flag when it turns one into an error) made that wait log "Interrupted while waiting result".
            if (e.kind() == CopException.Kind.CANCELLED || monitor.cancelled()) {
                Platform.runLater(() -> Dialogs.showInfoNotification(TITLE, "Cancelled; nothing was added to the image."));
            } else {
                Platform.runLater(() -> Dialogs.showErrorMessage(TITLE, e.getMessage()));
            }
        } catch (InterruptedException e) {
            Platform.runLater(() -> Dialogs.showInfoNotification(TITLE, "Cancelled; nothing was added to the image."));
        } catch (RuntimeException e) {
            Platform.runLater(() -> Dialogs.showErrorMessage(TITLE, "Chain-of-Prompts failed: " + e));
        } finally {
            poll.shutdownNow();
            Thread.interrupted(); // clear a late interrupt from the poller
            monitor.pluginCompleted("");
        }
    }
}
