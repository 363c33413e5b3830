package ingest_platform.spark;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;

import org.apache.spark.sql.api.java.UDF1;

/**
 * The top-level keys of a JSON object that a table does not know (docs/DESIGN.md §4), or null when it has none.
 *
 * One forward scan of the text, no tree and no per-value objects: only the keys are read (a key string is made
 * for the set lookup), nested objects, arrays, strings and scalars are skipped. It replaces Spark's
 * {@code array_except(json_object_keys(text), known)}, a second full Jackson parse per record plus a hash set per
 * record. Text that is not a JSON object (or is cut short) gives null: such a record is a bad one, which the
 * decoding already reports; names are quoted with {@code "} or {@code '} (Spark's JSON reader allows both).
 * Built and loaded by ingest_platform/engines/spark/jvm_functions.py.
 */
public final class UnknownKeys implements UDF1<String, List<String>> {
    private static final long serialVersionUID = 1L;

    private final HashSet<String> known;

    public UnknownKeys(String[] names) {
        this.known = new HashSet<>(Arrays.asList(names));
    }

    @Override
    public List<String> call(String json) {
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
            String key = scan.string();
            if (key == null) {
                return null;
            }
            if (!known.contains(key)) {
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

    /** A cursor over the text; every method leaves it after what it read, false/null when the text ends. */
    private static final class Scan {
        private final String text;
        private final int end;
        private int at;

        Scan(String text) {
            this.text = text;
            this.end = text.length();
        }

        void space() {
            while (at < end) {
                char c = text.charAt(at);
                if (c != ' ' && c != '\n' && c != '\r' && c != '\t') {
                    return;
                }
                at++;
            }
        }

        boolean take(char expected) {
            if (at < end && text.charAt(at) == expected) {
                at++;
                return true;
            }
            return false;
        }

        /** A quoted string's value (escapes decoded), or null when there is none here. */
        String string() {
            if (at >= end) {
                return null;
            }
            char quote = text.charAt(at);
            if (quote != '"' && quote != '\'') {
                return null;
            }
            int start = ++at;
            while (at < end) {
                char c = text.charAt(at);
                if (c == quote) {
                    return text.substring(start, at++);
                }
                if (c == '\\') {
                    return escaped(start, quote);
                }
                at++;
            }
            return null;
        }

        private String escaped(int start, char quote) {
            StringBuilder out = new StringBuilder(text.substring(start, at));
            while (at < end) {
                char c = text.charAt(at++);
                if (c == quote) {
                    return out.toString();
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                if (at >= end) {
                    return null;
                }
                char e = text.charAt(at++);
                switch (e) {
                    case 'n': out.append('\n'); break;
                    case 't': out.append('\t'); break;
                    case 'r': out.append('\r'); break;
                    case 'b': out.append('\b'); break;
                    case 'f': out.append('\f'); break;
                    case 'u':
                        if (at + 4 > end) {
                            return null;
                        }
                        try {
                            out.append((char) Integer.parseInt(text.substring(at, at + 4), 16));
                        } catch (NumberFormatException bad) {
                            return null;
                        }
                        at += 4;
                        break;
                    default: out.append(e);  // \" \\ \/ \'
                }
            }
            return null;
        }

        /** Skip one value of any kind; false when the text ends inside it. */
        boolean value() {
            space();
            if (at >= end) {
                return false;
            }
            char c = text.charAt(at);
            if (c == '"' || c == '\'') {
                return skipString(c);
            }
            if (c == '{' || c == '[') {
                return skipNested();
            }
            while (at < end) {  // number, true, false, null (or a bare word Spark's reader may allow)
                c = text.charAt(at);
                if (c == ',' || c == '}' || c == ']' || c == ' ' || c == '\n' || c == '\r' || c == '\t') {
                    return true;
                }
                at++;
            }
            return true;
        }

        private boolean skipString(char quote) {
            at++;
            while (at < end) {
                char c = text.charAt(at++);
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
                char c = text.charAt(at);
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
