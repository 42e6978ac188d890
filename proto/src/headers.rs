//! Rules for message headers (the `headers` map of `Publish`): at most [`MAX_HEADERS`]
//! entries; keys 1 to [`MAX_KEY_LEN`] bytes of printable ASCII other than space and `:`
//! (like HTTP field names); values at most [`MAX_VALUE_LEN`] bytes of UTF-8 without
//! control characters other than tab.

use std::collections::BTreeMap;

/// Most headers one message may carry.
pub const MAX_HEADERS: usize = 64;
/// Longest header key, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Longest header value, in bytes.
pub const MAX_VALUE_LEN: usize = 8 * 1024;

/// Checks a header map; the error says which header breaks which rule.
pub fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), String> {
    if headers.len() > MAX_HEADERS {
        return Err(format!(
            "{} headers; the limit is {MAX_HEADERS}",
            headers.len()
        ));
    }
    for (k, v) in headers {
        if k.is_empty() || k.len() > MAX_KEY_LEN {
            return Err(format!("header key {k:?} must be 1 to {MAX_KEY_LEN} bytes"));
        }
        if let Some(c) = k.chars().find(|c| !c.is_ascii_graphic() || *c == ':') {
            return Err(format!(
                "header key {k:?} contains {c:?}; use printable ASCII without ':' or spaces"
            ));
        }
        if v.len() > MAX_VALUE_LEN {
            return Err(format!(
                "header {k:?}: value of {} bytes; the limit is {MAX_VALUE_LEN}",
                v.len()
            ));
        }
        if let Some(c) = v.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(format!(
                "header {k:?}: value contains the control character {c:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(k: &str, v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_string(), v.to_string())])
    }

    #[test]
    fn rules() {
        assert!(validate_headers(&one("content-type", "application/json; charset=utf-8")).is_ok());
        assert!(validate_headers(&one("x", "tab\tok")).is_ok());
        for (k, v) in [
            ("", "v"),
            ("a b", "v"),
            ("a:b", "v"),
            ("ключ", "v"),
            ("k", "new\nline"),
        ] {
            assert!(validate_headers(&one(k, v)).is_err(), "{k:?}={v:?}");
        }
        assert!(validate_headers(&one(&"k".repeat(129), "v")).is_err());
        assert!(validate_headers(&one("k", &"v".repeat(8193))).is_err());
        let many: BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_headers(&many).is_err());
    }
}
