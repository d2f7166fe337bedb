package io.github.cop.qupath.extension;

import io.github.cop.qupath.client.CellDetection;
import io.github.cop.qupath.client.ConnectionSettings;
import io.github.cop.qupath.client.CopClient;
import io.github.cop.qupath.client.CopException;
import io.github.cop.qupath.client.PixelSource;
import io.github.cop.qupath.client.PromptPoint;
import io.github.cop.qupath.client.RegionAssigner;
import io.github.cop.qupath.client.SegmentationJob;
import io.github.cop.qupath.client.SegmentationOptions;
import io.github.cop.qupath.client.SegmentationResult;
import io.github.cop.qupath.client.SegmentationRun;
import io.github.cop.qupath.client.ServerAddress;
import io.github.cop.qupath.client.ServerConnector;
import io.github.cop.qupath.client.SessionListener;
import org.locationtech.jts.geom.Geometry;
import qupath.lib.geom.Point2;
import qupath.lib.images.ImageData;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.measurements.MeasurementList;
import qupath.lib.measurements.MeasurementListFactory;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathObjects;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.plugins.workflow.DefaultScriptableWorkflowStep;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.GeometryTools;
import qupath.lib.roi.interfaces.ROI;

import java.awt.image.BufferedImage;
import java.net.URI;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.function.Consumer;

/**
 * Chain-of-Prompts cell detection on one QuPath image: the one code path behind the menu
 * command, the recorded workflow step and Groovy scripts ("Run for project").
 *
 * <pre>{@code
 * // In a QuPath script (Automate > Script editor), for the current image:
 * io.github.cop.qupath.extension.CopDetect.builder()
 *     .server("127.0.0.1:50051")
 *     .regions("ALL_ANNOTATIONS")
 *     .workingMpp(0.5)
 *     .build()
 *     .run(getCurrentImageData())
 * }</pre>
 *
 * <p>The rules that protect the user's work live here: the user's annotations and points are
 * only ever read; the only objects removed are detections carrying {@link #SCORE_MEASUREMENT}
 * that are children of the regions of this run (the previous run's cells there); detections
 * are added as children of the region they fall in (the root object for the whole image).
 */
public final class CopDetect {

    /** The measurement every CoP detection carries (its score); a later run finds its predecessors by it. */
    public static final String SCORE_MEASUREMENT = "CoP score";

    /** Which regions a run covers. */
    public enum Regions {
        /** The selected area annotations (the menu command's default). */
        SELECTED,
        /** Every area annotation of the image (what "Run for project" usually wants). */
        ALL_ANNOTATIONS,
        /** The whole image; detections become children of the root object. */
        WHOLE_IMAGE
    }

    /** The shared connection policy; a server it started lives until QuPath exits. */
    static final ServerConnector CONNECTOR = new ServerConnector();

    static {
        // Registered here, not in CopExtension.installExtension: scripts run from QuPath's command line
        // (headless) use this class without the GUI ever installing the extension.
        Runtime.getRuntime().addShutdownHook(new Thread(CONNECTOR::close, "cop-stop-local-server"));
    }

    private final ConnectionSettings connection;
    private final Optional<String> startCommand;
    private final Duration startupTimeout;
    private final CopPreferences.PixelMode pixelMode;
    private final SegmentationOptions options;
    private final Regions regions;
    private final boolean replacePrevious;

    private CopDetect(Builder b) {
        this.connection = b.connection;
        this.startCommand = b.startCommand;
        this.startupTimeout = b.startupTimeout;
        this.pixelMode = b.pixelMode;
        this.options = b.options;
        this.regions = b.regions;
        this.replacePrevious = b.replacePrevious;
    }

    /** @return a builder holding the current preferences */
    public static Builder builder() {
        return new Builder();
    }

    /**
     * What a run will do on one image, read from its hierarchy before anything is sent.
     *
     * @param job                the request for the server
     * @param regions            region annotation to its geometry; empty for the whole image
     * @param classes            class name on the wire to the user's own {@link PathClass}
     * @param plane              the z-slice and timepoint of the run
     * @param unclassifiedPoints points ignored because they have no class
     * @param otherPlanePoints   points ignored because they lie on another z-slice or timepoint
     * @param previous           detections of an earlier CoP run in these regions (to be replaced)
     */
    public record Plan(SegmentationJob job, Map<PathObject, Geometry> regions, Map<String, PathClass> classes,
                       ImagePlane plane, int unclassifiedPoints, int otherPlanePoints, List<PathObject> previous) {
    }

    /**
     * What a run changed.
     *
     * @param added         detections added
     * @param removed       detections of the previous run removed
     * @param countsByClass detections per class name
     * @param outsideRegions detections that fell in no region (not added)
     * @param warnings      the server's warnings
     * @param result        everything the session returned
     */
    public record Result(int added, int removed, Map<String, Long> countsByClass, int outsideRegions,
                         List<String> warnings, SegmentationResult result) {
        /** One line for a notification that already carries the extension's name. */
        public String summary() {
            return added + " cells " + countsByClass
                    + (removed > 0 ? ", replacing " + removed : "")
                    + (outsideRegions > 0 ? ", " + outsideRegions + " outside the regions not added" : "");
        }

        /** What a script prints. */
        @Override
        public String toString() {
            return "Chain-of-Prompts: " + summary();
        }
    }

    /**
     * Runs on an image without any dialog: for scripts and "Run for project".
     *
     * @param imageData the image (e.g. {@code getCurrentImageData()} in a script)
     * @return what changed
     * @throws CopException         when the run fails; nothing is changed then
     * @throws InterruptedException when interrupted; nothing is changed then
     */
    public Result run(ImageData<BufferedImage> imageData) throws CopException, InterruptedException {
        Plan plan = plan(imageData);
        SegmentationResult result = execute(imageData, plan, SessionListener.NONE, run -> { });
        Result r = apply(imageData, plan, result);
        recordWorkflowStep(imageData);
        return r;
    }

    /**
     * Reads the regions, the classified points and the image's facts.
     *
     * @param imageData the image
     * @return the plan
     * @throws IllegalArgumentException with a message for the user when the run cannot start
     */
    public Plan plan(ImageData<BufferedImage> imageData) {
        if (imageData == null) {
            throw new IllegalArgumentException("Open an image first.");
        }
        ImageServer<BufferedImage> server = imageData.getServer();
        if (!server.isRGB()) {
            throw new IllegalArgumentException("Chain-of-Prompts works on RGB (brightfield) images; this image is not RGB.");
        }
        PathObjectHierarchy hierarchy = imageData.getHierarchy();

        List<PathObject> regionObjects = switch (regions) {
            case SELECTED -> areaAnnotations(hierarchy.getSelectionModel().getSelectedObjects());
            case ALL_ANNOTATIONS -> areaAnnotations(hierarchy.getAnnotationObjects());
            case WHOLE_IMAGE -> List.of();
        };
        if (regions != Regions.WHOLE_IMAGE && regionObjects.isEmpty()) {
            throw new IllegalArgumentException(regions == Regions.SELECTED
                    ? "No area annotation is selected: select the regions to search (or run on the whole image)."
                    : "The image has no area annotation to search in.");
        }
        ImagePlane plane = regionObjects.isEmpty() ? ImagePlane.getDefaultPlane() : regionObjects.get(0).getROI().getImagePlane();
        Map<PathObject, Geometry> regionGeometries = new LinkedHashMap<>();
        for (PathObject r : regionObjects) {
            if (!samePlane(r.getROI(), plane)) {
                throw new IllegalArgumentException("The regions lie on different z-slices or timepoints: select regions on one plane.");
            }
            regionGeometries.put(r, r.getROI().getGeometry());
        }

        List<PromptPoint> clicks = new ArrayList<>();
        Map<String, PathClass> classes = new LinkedHashMap<>();
        int unclassified = 0;
        int otherPlane = 0;
        for (PathObject points : hierarchy.getAllPointAnnotations()) {
            ROI roi = points.getROI();
            PathClass pathClass = points.getPathClass();
            if (pathClass == null || pathClass == PathClass.NULL_CLASS || !pathClass.isValid()) {
                unclassified += roi.getNumPoints();
                continue;
            }
            if (!samePlane(roi, plane)) {
                otherPlane += roi.getNumPoints();
                continue;
            }
            String name = pathClass.toString();
            Integer color = pathClass.getColor();
            classes.putIfAbsent(name, pathClass);
            for (Point2 p : roi.getAllPoints()) {
                clicks.add(new PromptPoint(p.getX(), p.getY(), name, color == null ? 0 : color));
            }
        }

        String imageId = server.getPath() + (plane.getZ() != 0 || plane.getT() != 0
                ? "#z=" + plane.getZ() + ",t=" + plane.getT() : "");
        SegmentationJob.Builder job = SegmentationJob.builder()
                .imageId(imageId)
                .imageSize(server.getWidth(), server.getHeight())
                .pixelSizeMicrons(server.getPixelCalibration().getAveragedPixelSizeMicrons())
                .pixelSource(pixelSource(server, plane))
                .addClicks(clicks)
                .options(options);
        regionGeometries.values().forEach(job::addRegion);

        List<PathObject> parents = regionObjects.isEmpty() ? List.of(hierarchy.getRootObject()) : regionObjects;
        List<PathObject> previous = parents.stream().flatMap(p -> p.getChildObjects().stream())
                .filter(CopDetect::isCopDetection).toList();
        return new Plan(job.build(), regionGeometries, classes, plane, unclassified, otherPlane, previous);
    }

    /**
     * Connects (starting the local server if configured) and runs the session.
     *
     * @param imageData the image
     * @param plan      from {@link #plan}
     * @param listener  progress and detections
     * @param started   receives the running session, e.g. to wire a Cancel button to it
     * @return the session's result
     * @throws CopException         when the run fails
     * @throws InterruptedException when interrupted
     */
    public SegmentationResult execute(ImageData<BufferedImage> imageData, Plan plan, SessionListener listener,
                                      Consumer<SegmentationRun> started) throws CopException, InterruptedException {
        try (CopClient client = CONNECTOR.connect(connection, startCommand, startupTimeout)) {
            SegmentationRun run = client.start(plan.job(), new QuPathTileSource(imageData.getServer(), plan.plane()), listener);
            started.accept(run);
            return run.await();
        }
    }

    /**
     * Adds the detections to the hierarchy, replacing the previous run's detections in the same
     * regions (found again now, in case the user edited the image meanwhile).
     *
     * @param imageData the image
     * @param plan      the plan the run used
     * @param result    the session's result
     * @return what changed
     */
    public Result apply(ImageData<BufferedImage> imageData, Plan plan, SegmentationResult result) {
        PathObjectHierarchy hierarchy = imageData.getHierarchy();
        Map<PathObject, List<CellDetection>> byParent = new LinkedHashMap<>();
        int outside = 0;
        if (plan.regions().isEmpty()) {
            byParent.put(hierarchy.getRootObject(), result.detections());
        } else {
            RegionAssigner.Assignment<PathObject> a = new RegionAssigner<>(plan.regions()).assign(result.detections());
            byParent.putAll(a.byRegion());
            outside = a.unassigned().size();
        }
        List<PathObject> stale = new ArrayList<>();
        int added = 0;
        Map<PathObject, List<PathObject>> toAdd = new LinkedHashMap<>();
        for (Map.Entry<PathObject, List<CellDetection>> e : byParent.entrySet()) {
            PathObject parent = e.getKey();
            if (parent != hierarchy.getRootObject() && !isInHierarchy(parent, hierarchy)) {
                outside += e.getValue().size(); // the region was deleted during the run
                continue;
            }
            if (replacePrevious) {
                parent.getChildObjects().stream().filter(CopDetect::isCopDetection).forEach(stale::add);
            }
            List<PathObject> objects = new ArrayList<>(e.getValue().size());
            for (CellDetection d : e.getValue()) {
                objects.add(toDetection(d, plan));
            }
            toAdd.put(parent, objects);
            added += objects.size();
        }
        if (!stale.isEmpty()) {
            hierarchy.removeObjects(stale, true);
        }
        toAdd.forEach(PathObject::addChildObjects);
        hierarchy.fireHierarchyChangedEvent(this);

        Map<String, Long> counts = new LinkedHashMap<>();
        for (String name : result.classes().names()) {
            counts.put(name, result.count(name));
        }
        List<String> warnings = new ArrayList<>(result.start().warnings());
        warnings.addAll(result.summary().warnings());
        return new Result(added, stale.size(), counts, outside, warnings, result);
    }

    /** Adds this run to the image's command history, so that it can be turned into a script. */
    public void recordWorkflowStep(ImageData<BufferedImage> imageData) {
        imageData.getHistoryWorkflow().addStep(new DefaultScriptableWorkflowStep("Chain-of-Prompts: detect cells", toScript()));
    }

    /**
     * The Groovy that repeats this run on the current image. The token and certificate are not
     * written (scripts get shared): the script reads them from the preferences.
     *
     * @return the script
     */
    public String toScript() {
        return "io.github.cop.qupath.extension.CopDetect.builder()"
                + "\n    .server(" + groovyString(connection.address().toString()) + ")"
                + "\n    .tls(" + connection.useTls() + ")"
                + "\n    .pixels(" + groovyString(pixelMode.name()) + ")"
                + "\n    .workingMpp(" + number(options.workingMpp()) + ")"
                + "\n    .downsample(" + number(options.downsample()) + ")"
                + "\n    .gating(" + groovyString(options.gating().name()) + ")"
                + "\n    .maxIterations(" + options.maxIterations() + ")"
                + "\n    .chain(" + options.chain() + ")"
                + "\n    .regions(" + groovyString(regions.name()) + ")"
                + "\n    .replacePrevious(" + replacePrevious + ")"
                + "\n    .build()"
                + "\n    .run(getCurrentImageData())";
    }

    /** @param o any object @return whether it is a detection made by Chain-of-Prompts */
    public static boolean isCopDetection(PathObject o) {
        return o.isDetection() && o.getMeasurementList().containsKey(SCORE_MEASUREMENT);
    }

    private PathObject toDetection(CellDetection d, Plan plan) {
        ROI roi = GeometryTools.geometryToROI(d.polygon(), plan.plane());
        PathClass pathClass = plan.classes().get(d.className());
        if (pathClass == null) { // cannot happen: the server only uses the run's classes
            pathClass = PathClass.fromString(d.className(), plan.job().classes().rgb(d.classIndex()));
        }
        MeasurementList measurements = MeasurementListFactory.createMeasurementList(d.measurements().size() + 1,
                MeasurementList.MeasurementListType.DOUBLE);
        d.measurements().forEach(measurements::put);
        measurements.put(SCORE_MEASUREMENT, d.score());
        measurements.close();
        return PathObjects.createDetectionObject(roi, pathClass, measurements);
    }

    private PixelSource pixelSource(ImageServer<BufferedImage> server, ImagePlane plane) {
        if (pixelMode == CopPreferences.PixelMode.SEND_PIXELS) {
            return PixelSource.clientPixelsFor(connection.address());
        }
        if (plane.getZ() != 0 || plane.getT() != 0) {
            throw new IllegalArgumentException("The server reads only the first z-slice and timepoint of a file: choose"
                    + " 'Send pixels from QuPath' in Preferences > Chain-of-Prompts for this plane.");
        }
        Collection<URI> uris = server.getURIs();
        for (URI uri : uris) {
            if ("file".equalsIgnoreCase(uri.getScheme())) {
                return PixelSource.serverFile(Path.of(uri).toString());
            }
        }
        throw new IllegalArgumentException("This image is not a local file (" + uris + "), so the server cannot read it:"
                + " choose 'Send pixels from QuPath' in Preferences > Chain-of-Prompts.");
    }

    private static List<PathObject> areaAnnotations(Collection<PathObject> objects) {
        return objects.stream().filter(o -> o.isAnnotation() && o.hasROI() && o.getROI().isArea()).toList();
    }

    private static boolean samePlane(ROI roi, ImagePlane plane) {
        return roi.getZ() == plane.getZ() && roi.getT() == plane.getT();
    }

    private static boolean isInHierarchy(PathObject o, PathObjectHierarchy hierarchy) {
        PathObject p = o;
        while (p.getParent() != null) {
            p = p.getParent();
        }
        return p == hierarchy.getRootObject();
    }

    private static String groovyString(String s) {
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'";
    }

    private static String number(double v) {
        return String.format(Locale.ROOT, "%s", v);
    }

    /** Options of a run; starts from the preferences, so a script only names what differs. */
    public static final class Builder {
        private ConnectionSettings connection;
        private Optional<String> startCommand = CopPreferences.localServerCommand();
        private Duration startupTimeout = CopPreferences.startupTimeout();
        private CopPreferences.PixelMode pixelMode = CopPreferences.PIXEL_MODE.get();
        private SegmentationOptions options = CopPreferences.options();
        private Regions regions = Regions.SELECTED;
        private boolean replacePrevious = true;

        private Builder() {
            this.connection = CopPreferences.connection();
        }

        /** @param address host:port of the server @return this */
        public Builder server(String address) {
            ServerAddress a = ServerAddress.parse(address);
            connection = new ConnectionSettings(a, connection.token(), connection.useTls(), connection.trustedCertificate(),
                    connection.infoTimeout(), connection.idleTimeout(), connection.sessionDeadline(), connection.tileThreads());
            return this;
        }

        /** @param token the server's token (default: the preference) @return this */
        public Builder token(String token) {
            connection = connection.withToken(token);
            return this;
        }

        /** @param tls whether to use TLS (the certificate comes from the preference) @return this */
        public Builder tls(boolean tls) {
            connection = connection.withTls(tls, connection.trustedCertificate().orElse(null));
            return this;
        }

        /** @param mode "SEND_PIXELS" or "SERVER_READS_FILE" @return this */
        public Builder pixels(String mode) {
            this.pixelMode = CopPreferences.PixelMode.valueOf(mode.strip().toUpperCase(Locale.ROOT));
            return this;
        }

        /** @param mpp working microns per pixel (0: the model's default) @return this */
        public Builder workingMpp(double mpp) {
            options = options.withWorkingMpp(mpp);
            return this;
        }

        /** @param d working downsample (0: use the working mpp) @return this */
        public Builder downsample(double d) {
            options = options.withDownsample(d);
            return this;
        }

        /** @param gating "DEFAULT", "PRODUCT" or "CANDIDATE" @return this */
        public Builder gating(String gating) {
            options = options.withGating(SegmentationOptions.GatingMode.valueOf(gating.strip().toUpperCase(Locale.ROOT)));
            return this;
        }

        /** @param n FPR safety bound per class (0: default) @return this */
        public Builder maxIterations(int n) {
            options = options.withMaxIterations(n);
            return this;
        }

        /** @param halo tile overlap in working pixels (0: default) @return this */
        public Builder halo(int halo) {
            options = options.withHalo(halo);
            return this;
        }

        /** @param chain seed tiles from neighbours' cells @return this */
        public Builder chain(boolean chain) {
            options = options.withChain(chain);
            return this;
        }

        /** @param which "SELECTED", "ALL_ANNOTATIONS" or "WHOLE_IMAGE" @return this */
        public Builder regions(String which) {
            return regions(Regions.valueOf(which.strip().toUpperCase(Locale.ROOT)));
        }

        /** @param which the regions to search @return this */
        public Builder regions(Regions which) {
            this.regions = which;
            return this;
        }

        /**
         * @param replace true (default): remove an earlier run's detections in the same regions;
         *                false: keep them and add the new ones beside them
         * @return this
         */
        public Builder replacePrevious(boolean replace) {
            this.replacePrevious = replace;
            return this;
        }

        /** @param command local server command template, or null/blank for none @return this */
        public Builder localServerCommand(String command) {
            this.startCommand = Optional.ofNullable(command).map(String::strip).filter(s -> !s.isEmpty());
            return this;
        }

        /** @return the configured run */
        public CopDetect build() {
            return new CopDetect(this);
        }
    }
}
