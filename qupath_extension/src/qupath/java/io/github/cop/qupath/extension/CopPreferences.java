package io.github.cop.qupath.extension;

import io.github.cop.qupath.client.ConnectionSettings;
import io.github.cop.qupath.client.SegmentationOptions;
import io.github.cop.qupath.client.ServerAddress;
import javafx.beans.property.BooleanProperty;
import javafx.beans.property.DoubleProperty;
import javafx.beans.property.IntegerProperty;
import javafx.beans.property.ObjectProperty;
import javafx.beans.property.Property;
import javafx.beans.property.StringProperty;
import org.controlsfx.control.PropertySheet;
import qupath.fx.prefs.controlsfx.PropertyItemBuilder;
import qupath.lib.gui.prefs.PathPrefs;

import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.Optional;

/**
 * The extension's persistent preferences, shown under "Chain-of-Prompts" in QuPath's
 * preferences. Every key starts with {@code cop.} because QuPath keeps all extensions'
 * preferences in one namespace (and some extensions use generic keys).
 */
public final class CopPreferences {

    /** How the server gets pixels. */
    public enum PixelMode {
        /** QuPath reads tiles and sends them: works for every image and for remote servers. */
        SEND_PIXELS("Send pixels from QuPath"),
        /** The server reads the image file itself: needs a shared file system and --slide-root. */
        SERVER_READS_FILE("Server reads the file");

        private final String label;

        PixelMode(String label) {
            this.label = label;
        }

        @Override
        public String toString() {
            return label;
        }
    }

    /** HSG gating, as offered in the preferences. */
    public enum Gating {
        DEFAULT, PRODUCT, CANDIDATE
    }

    static final String CATEGORY = "Chain-of-Prompts";

    static final StringProperty SERVER_ADDRESS = PathPrefs.createPersistentPreference("cop.serverAddress", "127.0.0.1:50051");
    static final StringProperty TOKEN = PathPrefs.createPersistentPreference("cop.token", "");
    static final BooleanProperty USE_TLS = PathPrefs.createPersistentPreference("cop.useTls", false);
    static final StringProperty TLS_CERTIFICATE = PathPrefs.createPersistentPreference("cop.tlsCertificate", "");
    static final ObjectProperty<PixelMode> PIXEL_MODE =
            PathPrefs.createPersistentPreference("cop.pixelMode", PixelMode.SEND_PIXELS, PixelMode.class);
    static final DoubleProperty WORKING_MPP = PathPrefs.createPersistentPreference("cop.workingMpp", 0.0);
    static final DoubleProperty DOWNSAMPLE = PathPrefs.createPersistentPreference("cop.downsample", 0.0);
    static final ObjectProperty<Gating> GATING =
            PathPrefs.createPersistentPreference("cop.gating", Gating.DEFAULT, Gating.class);
    static final IntegerProperty MAX_ITERATIONS = PathPrefs.createPersistentPreference("cop.maxIterations", 0);
    static final BooleanProperty CHAIN = PathPrefs.createPersistentPreference("cop.chain", false);
    static final StringProperty LOCAL_SERVER_COMMAND = PathPrefs.createPersistentPreference("cop.localServerCommand", "");
    static final IntegerProperty STARTUP_SECONDS = PathPrefs.createPersistentPreference("cop.localServerStartupSeconds", 120);
    static final IntegerProperty IDLE_TIMEOUT_SECONDS = PathPrefs.createPersistentPreference("cop.idleTimeoutSeconds", 300);

    // Object views of the numeric properties, for the property sheet; kept here so they live as long as the originals.
    private static final Property<Double> WORKING_MPP_OBJECT = WORKING_MPP.asObject();
    private static final Property<Double> DOWNSAMPLE_OBJECT = DOWNSAMPLE.asObject();
    private static final Property<Integer> MAX_ITERATIONS_OBJECT = MAX_ITERATIONS.asObject();
    private static final Property<Integer> STARTUP_OBJECT = STARTUP_SECONDS.asObject();
    private static final Property<Integer> IDLE_OBJECT = IDLE_TIMEOUT_SECONDS.asObject();

    private CopPreferences() {
    }

    /** Adds every preference to QuPath's preference pane, in the order a user sets them up. */
    static void addTo(PropertySheet sheet) {
        sheet.getItems().addAll(
                item(SERVER_ADDRESS, String.class, "Server address",
                        "host:port of 'cop serve' (e.g. 127.0.0.1:50051, or gpu-box:50051)"),
                item(TOKEN, String.class, "Token", "The value given to 'cop serve --token' (empty: none)"),
                item(USE_TLS, Boolean.class, "TLS", "Connect with TLS (the server was started with --tls-cert)"),
                item(TLS_CERTIFICATE, String.class, "TLS certificate",
                        "PEM file of the server's certificate or its CA, for self-signed servers (empty: system trust store)"),
                choice(PIXEL_MODE, PixelMode.class, "Pixels", "'Send pixels from QuPath' works for every image and"
                        + " remote servers; 'Server reads the file' needs the same file system and cop serve --slide-root"),
                item(WORKING_MPP_OBJECT, Double.class, "Working resolution (um/px)",
                        "Microns per pixel the model works at (0: the model's default)"),
                item(DOWNSAMPLE_OBJECT, Double.class, "Working downsample",
                        "Explicit downsample from full resolution; wins over the working resolution (0: not used)"),
                choice(GATING, Gating.class, "Gating", "HSG gating variant (DEFAULT: the server's, product gating)"),
                item(MAX_ITERATIONS_OBJECT, Integer.class, "Max iterations", "FPR safety bound per class (0: default)"),
                item(CHAIN, Boolean.class, "Chain across tiles", "Seed each tile from cells found in its neighbours"),
                item(LOCAL_SERVER_COMMAND, String.class, "Local server command",
                        "Started when nothing answers at a local address, e.g. /path/to/.venv/bin/cop serve --host {host}"
                        + " --port {port} (empty: never start one)"),
                item(STARTUP_OBJECT, Integer.class, "Local server startup (s)", "How long a started server may take to answer"),
                item(IDLE_OBJECT, Integer.class, "Idle timeout (s)",
                        "Longest silence from the server during a run before it is stopped"));
    }

    private static <T> PropertySheet.Item item(Property<T> p, Class<T> cls, String name, String description) {
        return new PropertyItemBuilder<>(p, cls).name(name).category(CATEGORY).description(description).build();
    }

    private static <T extends Enum<T>> PropertySheet.Item choice(Property<T> p, Class<T> cls, String name, String description) {
        return new PropertyItemBuilder<>(p, cls).propertyType(PropertyItemBuilder.PropertyType.CHOICE)
                .choices(Arrays.asList(cls.getEnumConstants())).name(name).category(CATEGORY).description(description).build();
    }

    /** @return the connection the preferences describe (throws IllegalArgumentException on a bad address) */
    static ConnectionSettings connection() {
        String cert = TLS_CERTIFICATE.get();
        return ConnectionSettings.forAddress(ServerAddress.parse(SERVER_ADDRESS.get()))
                .withToken(TOKEN.get())
                .withTls(USE_TLS.get(), cert == null || cert.isBlank() ? null : Path.of(cert.strip()))
                .withIdleTimeout(Duration.ofSeconds(Math.max(10, IDLE_TIMEOUT_SECONDS.get())));
    }

    /** @return the model options the preferences describe */
    static SegmentationOptions options() {
        return SegmentationOptions.defaults()
                .withWorkingMpp(WORKING_MPP.get())
                .withDownsample(DOWNSAMPLE.get())
                .withGating(SegmentationOptions.GatingMode.valueOf(GATING.get().name()))
                .withMaxIterations(MAX_ITERATIONS.get())
                .withChain(CHAIN.get());
    }

    /** @return the local server command, if one is set */
    static Optional<String> localServerCommand() {
        return Optional.ofNullable(LOCAL_SERVER_COMMAND.get()).map(String::strip).filter(s -> !s.isEmpty());
    }

    /** @return how long a started local server may take */
    static Duration startupTimeout() {
        return Duration.ofSeconds(Math.max(5, STARTUP_SECONDS.get()));
    }
}
