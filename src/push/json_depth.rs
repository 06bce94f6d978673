//! How deeply a published `data` value nests, checked in one place for the push API bodies and
//! the client's `publish` op (design.md, "Push API"): a value nested deeper than
//! [`MAX_DATA_DEPTH`] is refused, because receivers' JSON parsers recurse (Python's `json`
//! crashes on 100,000 levels, Go's decoder stops at 10,000) and the server must not relay what
//! its clients cannot read.
//!
//! The check is a loop over the raw bytes with a counter, never a recursion, so no input can
//! exhaust the stack. It runs on text serde_json already accepted as one JSON value (a
//! `RawValue`, skipped by serde_json without recursion either), so it only has to tell the
//! brackets of the structure from those inside strings.

/// The deepest nesting allowed in a published `data`: each array or object is one level, so
/// `[]` and `{}` are 1 and a scalar is 0.
pub const MAX_DATA_DEPTH: usize = 64;

/// The reason given for a `data` nested deeper than [`MAX_DATA_DEPTH`].
pub const DATA_TOO_DEEP: &str = "data is nested deeper than 64 levels";

/// Whether the JSON text `json` nests arrays and objects deeper than `max` levels. Brackets
/// inside strings (escapes included) do not count. Meant for text already known to be valid
/// JSON; on anything else it still returns, in time linear in `json.len()`.
#[must_use]
pub fn nests_deeper_than(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether a published `data` (its raw JSON text) is nested deeper than [`MAX_DATA_DEPTH`].
#[must_use]
pub fn data_too_deep(data: &str) -> bool {
    nests_deeper_than(data.as_bytes(), MAX_DATA_DEPTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize, open: &str, close: &str, inner: &str) -> String {
        format!("{}{inner}{}", open.repeat(levels), close.repeat(levels))
    }

    #[test]
    fn counts_arrays_and_objects_as_one_level_each() {
        assert!(!nests_deeper_than(b"1", 0));
        assert!(!nests_deeper_than(b"\"x\"", 0));
        assert!(nests_deeper_than(b"[]", 0));
        assert!(!nests_deeper_than(b"[]", 1));
        assert!(!nests_deeper_than(b"{}", 1));
        assert!(nests_deeper_than(br#"{"a":[]}"#, 1));
        assert!(!nests_deeper_than(br#"{"a":[]}"#, 2));
        // Siblings do not add up: depth is the deepest path.
        assert!(!nests_deeper_than(br#"[[1],[2],{"a":{}},[[]]]"#, 3));
        assert!(nests_deeper_than(br#"[[1],[2],{"a":{}},[[[]]]]"#, 3));
    }

    #[test]
    fn the_limit_is_64_levels() {
        let at = nested(MAX_DATA_DEPTH, "[", "]", "");
        let over = nested(MAX_DATA_DEPTH + 1, "[", "]", "");
        assert!(!data_too_deep(&at));
        assert!(data_too_deep(&over));
        let objects = nested(MAX_DATA_DEPTH + 1, r#"{"k":"#, "}", "0");
        assert!(data_too_deep(&objects));
        let mixed = nested(MAX_DATA_DEPTH / 2, r#"[{"k":"#, "}]", "null");
        assert!(!data_too_deep(&mixed));
        assert!(data_too_deep(&format!("[{mixed}]")));
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        let text = format!(r#"["{}"]"#, "[{".repeat(1000));
        assert!(!nests_deeper_than(text.as_bytes(), 1));
        // An escaped quote does not end the string; an escaped backslash before one does.
        assert!(!nests_deeper_than(br#"["\"[[[", 1]"#, 1));
        assert!(nests_deeper_than(br#"["\\", [[1]]]"#, 2));
        assert!(!nests_deeper_than(br#"{"\\\"[[": "]]]\\"}"#, 1));
        assert!(!nests_deeper_than(br#"["\u005b\u005b"]"#, 1));
    }

    #[test]
    fn huge_depth_is_a_loop_not_a_recursion() {
        let deep = "[".repeat(1_000_000);
        assert!(data_too_deep(&deep));
        // Unbalanced input still ends.
        assert!(!nests_deeper_than("]".repeat(100).as_bytes(), 0));
    }
}
