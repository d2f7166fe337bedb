package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.CellClass;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.OptionalInt;

/**
 * The classes of one run, in the order the server numbers them.
 *
 * <p>The wire carries a class as an index into {@code SegmentRequest.classes}; the user thinks
 * of it as a QuPath class name, derived classes included ("Tumor: Positive"). This mapping is
 * the single place where the two meet, so that a name goes out and comes back unchanged:
 * names are kept exactly as given (no trimming of the inner ": ", no case folding), which is
 * what lets the QuPath layer find the very same {@code PathClass} again.
 */
public final class ClassMapping {

    private final List<String> names;
    private final List<Integer> colors;
    private final Map<String, Integer> indexByName;

    private ClassMapping(List<String> names, List<Integer> colors) {
        this.names = List.copyOf(names);
        this.colors = List.copyOf(colors);
        Map<String, Integer> index = new LinkedHashMap<>();
        for (int i = 0; i < names.size(); i++) {
            index.putIfAbsent(names.get(i), i);
        }
        this.indexByName = Collections.unmodifiableMap(index);
    }

    /** @return a builder that numbers classes in the order they are first added */
    public static Builder builder() {
        return new Builder();
    }

    /**
     * Rebuilds a mapping from the classes of a request, e.g. to read back what was sent.
     *
     * @param classes the request's classes, in wire order
     * @return the mapping
     */
    public static ClassMapping fromProto(List<CellClass> classes) {
        Builder b = builder();
        for (CellClass c : classes) {
            b.add(c.getName(), c.getRgb());
        }
        return b.build();
    }

    /** @return the number of classes */
    public int size() {
        return names.size();
    }

    /** @param index a wire index @return the class name, exactly as added */
    public String name(int index) {
        checkIndex(index);
        return names.get(index);
    }

    /** @param index a wire index @return the colour as 0xRRGGBB */
    public int rgb(int index) {
        checkIndex(index);
        return colors.get(index);
    }

    /** @param name a class name @return its wire index, or empty when the run has no such class */
    public OptionalInt indexOf(String name) {
        Integer i = indexByName.get(name);
        return i == null ? OptionalInt.empty() : OptionalInt.of(i);
    }

    /** @param index a wire index @return whether it names a class of this run */
    public boolean contains(int index) {
        return index >= 0 && index < names.size();
    }

    /** @return the names in wire order */
    public List<String> names() {
        return names;
    }

    /** @return the classes as the request carries them */
    public List<CellClass> toProto() {
        List<CellClass> out = new ArrayList<>(names.size());
        for (int i = 0; i < names.size(); i++) {
            out.add(CellClass.newBuilder().setName(names.get(i)).setRgb(colors.get(i)).build());
        }
        return out;
    }

    private void checkIndex(int index) {
        if (!contains(index)) {
            throw new IndexOutOfBoundsException("Class index " + index + " is not one of the " + names.size()
                    + " classes of this run " + names);
        }
    }

    @Override
    public String toString() {
        return "ClassMapping" + names;
    }

    /** Numbers classes in first-seen order; the colour of a class is the first one given for it. */
    public static final class Builder {
        private final List<String> names = new ArrayList<>();
        private final List<Integer> colors = new ArrayList<>();
        private final Map<String, Integer> seen = new LinkedHashMap<>();

        private Builder() {
        }

        /**
         * @param name the class name (not blank)
         * @param rgb  its colour, 0xRRGGBB (any alpha byte is dropped)
         * @return the class's index
         */
        public int add(String name, int rgb) {
            Objects.requireNonNull(name, "name");
            if (name.isBlank()) {
                throw new IllegalArgumentException("A class name must not be blank");
            }
            Integer existing = seen.get(name);
            if (existing != null) {
                return existing;
            }
            int index = names.size();
            names.add(name);
            colors.add(rgb & 0xFFFFFF);
            seen.put(name, index);
            return index;
        }

        /** @return the mapping */
        public ClassMapping build() {
            return new ClassMapping(names, colors);
        }
    }
}
