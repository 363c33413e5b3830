package ingest_platform.spark;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.apache.spark.sql.api.java.UDF1;

/**
 * The top-level keys of a JSON object that a table does not know (docs/DESIGN.md §4), or null when it has none.
 *
 * One forward scan of the UTF-8 bytes, no tree, no per-value objects and no allocation for a known key (its
 * bytes are looked up in a hash table of the known names' bytes); nested objects, arrays, strings and scalars
 * are skipped. It replaces Spark's {@code array_except(json_object_keys(text), known)}, a second full Jackson
 * parse per record plus a hash set per record. Scanning bytes is exact for UTF-8: every byte of a multi-byte
 * character is above 0x7F, so none is taken for a quote, brace or comma. Text that is not a JSON object (or is
 * cut short) gives null: such a record is a bad one, which the decoding already reports. Names are quoted with
 * {@code "} or {@code '} (Spark's JSON reader allows both). Built and loaded by
 * ingest_platform/engines/spark/jvm_functions.py.
 */
public final class UnknownKeys implements UDF1<byte[], List<String>> {
    private static final long serialVersionUID = 2L;

    /** Open addressing: slot -> index into {@link #names} + 1 (0 = empty); the size is a power of two. */
    private final int[] slots;
    private final byte[][] names;

    public UnknownKeys(String[] known) {
        names = new byte[known.length][];
        int size = Integer.highestOneBit(Math.max(4, known.length * 4) - 1) << 1;
        slots = new int[size];
        for (int i = 0; i < known.length; i++) {
            names[i] = known[i].getBytes(StandardCharsets.UTF_8);
            int slot = hash(names[i], 0, names[i].length) & (size - 1);
            while (slots[slot] != 0) {
                slot = (slot + 1) & (size - 1);
            }
            slots[slot] = i + 1;
        }
    }

    private static int hash(byte[] bytes, int from, int to) {
        int h = 1;
        for (int i = from; i < to; i++) {
            h = 31 * h + bytes[i];
        }
        return h ^ (h >>> 16);
    }

    private boolean isKnown(byte[] bytes, int from, int to) {
        int mask = slots.length - 1;
        for (int slot = hash(bytes, from, to) & mask; slots[slot] != 0; slot = (slot + 1) & mask) {
            byte[] name = names[slots[slot] - 1];
            if (Arrays.equals(name, 0, name.length, bytes, from, to)) {
                return true;
            }
        }
        return false;
    }

    @Override
    public List<String> call(byte[] json) {
        if (json == null) {
            return null;
        }
        Scan scan = new Scan(json);
        scan.space();
        if (!scan.take('{')) {
            return null;
        }
        List<String> unknown = null;
        scan.space();
        if (scan.take('}')) {
            return null;
        }
        while (true) {
            scan.space();
            if (!scan.key()) {
                return null;
            }
            boolean known = scan.decoded == null
                    ? isKnown(json, scan.from, scan.to)
                    : isKnown(scan.decoded, 0, scan.decoded.length);
            if (!known) {
                String key = scan.decoded == null
                        ? new String(json, scan.from, scan.to - scan.from, StandardCharsets.UTF_8)
                        : new String(scan.decoded, StandardCharsets.UTF_8);
                if (unknown == null) {
                    unknown = new ArrayList<>(2);
                }
                if (!unknown.contains(key)) {
                    unknown.add(key);
                }
            }
            scan.space();
            if (!scan.take(':') || !scan.value()) {
                return null;
            }
            scan.space();
            if (scan.take(',')) {
                continue;
            }
            return scan.take('}') ? unknown : null;
        }
    }

    /** A cursor over the bytes; every method leaves it after what it read, false when the text ends. */
    private static final class Scan {
        private final byte[] text;
        private final int end;
        private int at;
        /** The last key: bytes [from, to) of the text, or {@link #decoded} when it had escapes. */
        int from;
        int to;
        byte[] decoded;

        Scan(byte[] text) {
            this.text = text;
            this.end = text.length;
        }

        void space() {
            while (at < end) {
                byte c = text[at];
                if (c != ' ' && c != '\n' && c != '\r' && c != '\t') {
                    return;
                }
                at++;
            }
        }

        boolean take(char expected) {
            if (at < end && text[at] == expected) {
                at++;
                return true;
            }
            return false;
        }

        /** A quoted name here: its bytes in [from, to), or decoded when it has escapes. */
        boolean key() {
            if (at >= end || (text[at] != '"' && text[at] != '\'')) {
                return false;
            }
            byte quote = text[at];
            from = ++at;
            decoded = null;
            while (at < end) {
                byte c = text[at];
                if (c == quote) {
                    to = at++;
                    return true;
                }
                if (c == '\\') {
                    return escaped(quote);
                }
                at++;
            }
            return false;
        }

        private boolean escaped(byte quote) {
            StringBuilder out = new StringBuilder(new String(text, from, at - from, StandardCharsets.UTF_8));
            int run = at;  // start of the bytes not yet copied (between escapes)
            while (at < end) {
                byte c = text[at];
                if (c == quote) {
                    out.append(new String(text, run, at - run, StandardCharsets.UTF_8));
                    at++;
                    decoded = out.toString().getBytes(StandardCharsets.UTF_8);
                    return true;
                }
                if (c != '\\') {
                    at++;
                    continue;
                }
                out.append(new String(text, run, at - run, StandardCharsets.UTF_8));
                if (at + 1 >= end) {
                    return false;
                }
                byte e = text[at + 1];
                at += 2;
                switch (e) {
                    case 'n': out.append('\n'); break;
                    case 't': out.append('\t'); break;
                    case 'r': out.append('\r'); break;
                    case 'b': out.append('\b'); break;
                    case 'f': out.append('\f'); break;
                    case 'u':
                        if (at + 4 > end) {
                            return false;
                        }
                        try {
                            out.append((char) Integer.parseInt(new String(text, at, 4, StandardCharsets.US_ASCII), 16));
                        } catch (NumberFormatException bad) {
                            return false;
                        }
                        at += 4;
                        break;
                    default: out.append((char) e);  // \" \\ \/ \'
                }
                run = at;
            }
            return false;
        }

        /** Skip one value of any kind; false when the text ends inside it. */
        boolean value() {
            space();
            if (at >= end) {
                return false;
            }
            byte c = text[at];
            if (c == '"' || c == '\'') {
                return skipString(c);
            }
            if (c == '{' || c == '[') {
                return skipNested();
            }
            while (at < end) {  // number, true, false, null (or a bare word Spark's reader may allow)
                c = text[at];
                if (c == ',' || c == '}' || c == ']' || c == ' ' || c == '\n' || c == '\r' || c == '\t') {
                    return true;
                }
                at++;
            }
            return true;
        }

        private boolean skipString(byte quote) {
            at++;
            while (at < end) {
                byte c = text[at++];
                if (c == '\\') {
                    at++;
                } else if (c == quote) {
                    return true;
                }
            }
            return false;
        }

        private boolean skipNested() {
            int depth = 0;
            while (at < end) {
                byte c = text[at];
                if (c == '"' || c == '\'') {
                    if (!skipString(c)) {
                        return false;
                    }
                    continue;
                }
                at++;
                if (c == '{' || c == '[') {
                    depth++;
                } else if (c == '}' || c == ']') {
                    if (--depth == 0) {
                        return true;
                    }
                }
            }
            return false;
        }
    }
}
