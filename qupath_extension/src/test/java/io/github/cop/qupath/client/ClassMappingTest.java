package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.CellClass;
import io.github.cop.qupath.proto.v1.SegmentRequest;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Class names go out as indices and come back as the very same names, derived classes included. */
class ClassMappingTest {

    @Test
    @DisplayName("classes are numbered in first-click order; repeated clicks of a class share its index")
    void numbering() {
        ClassMapping.Builder b = ClassMapping.builder();
        assertEquals(0, b.add("Tumor: Positive", 0xFF0000));
        assertEquals(1, b.add("Tumor", 0x00FF00));
        assertEquals(0, b.add("Tumor: Positive", 0x0000FF));
        assertEquals(2, b.add("Stroma: Negative: 2+", 0x123456));
        ClassMapping m = b.build();
        assertEquals(List.of("Tumor: Positive", "Tumor", "Stroma: Negative: 2+"), m.names());
        assertEquals(0xFF0000, m.rgb(0), "the first colour given for a class is kept");
    }

    @Test
    @DisplayName("derived classes survive the round trip through the wire unchanged")
    void derivedClassesRoundTrip() {
        List<String> names = List.of("Tumor: Positive", "Tumor: Negative", "Immune cells: CD3: CD8", "tumor", " Spaced ");
        ClassMapping.Builder b = ClassMapping.builder();
        names.forEach(n -> b.add(n, 0x808080));
        ClassMapping sent = b.build();
        List<CellClass> wire = sent.toProto();
        // through the actual bytes, as the server receives them
        ClassMapping back = ClassMapping.fromProto(parse(wire));
        assertEquals(names, back.names());
        for (int i = 0; i < names.size(); i++) {
            assertEquals(i, back.indexOf(names.get(i)).orElseThrow());
            assertEquals(names.get(i), back.name(i));
        }
        assertFalse(back.indexOf("Tumor:Positive").isPresent(), "no fuzzy matching: QuPath would not match it either");
    }

    private static List<CellClass> parse(List<CellClass> wire) {
        try {
            return SegmentRequest.parseFrom(SegmentRequest.newBuilder().addAllClasses(wire).build().toByteArray())
                    .getClassesList();
        } catch (com.google.protobuf.InvalidProtocolBufferException e) {
            throw new AssertionError(e);
        }
    }

    @Test
    @DisplayName("QuPath's packed ARGB colours go out as 0xRRGGBB")
    void alphaIsDropped() {
        ClassMapping m = ClassMapping.builder().build();
        ClassMapping.Builder b = ClassMapping.builder();
        b.add("Tumor", 0xFFC80000);
        assertEquals(0xC80000, b.build().toProto().get(0).getRgb());
        assertEquals(0, m.size());
    }

    @Test
    void refusesBlankNamesAndBadIndices() {
        assertThrows(IllegalArgumentException.class, () -> ClassMapping.builder().add(" ", 0));
        ClassMapping m = ClassMapping.builder().build();
        assertThrows(IndexOutOfBoundsException.class, () -> m.name(0));
        assertFalse(m.contains(-1));
        assertTrue(ClassMapping.fromProto(List.of(CellClass.newBuilder().setName("A").build())).contains(0));
    }
}
