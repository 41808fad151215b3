//! Values: JSON documents, or raw bytes written through the Redis protocol.

use std::borrow::Cow;

use serde::de::IgnoredAny;

/// How a value's bytes are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    /// The bytes are a JSON document (kept byte for byte as written).
    Json = 0,
    /// The bytes are an opaque string written through the Redis protocol that is not
    /// JSON. Over HTTP it reads as a JSON string; over RESP byte for byte.
    Raw = 1,
}

impl Encoding {
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Encoding::Json),
            1 => Some(Encoding::Raw),
            _ => None,
        }
    }
}

/// An owned value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub encoding: Encoding,
    pub bytes: Box<[u8]>,
}

/// A borrowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueRef<'a> {
    pub encoding: Encoding,
    pub bytes: &'a [u8],
}

/// The bytes are not a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid json: {0}")]
pub struct InvalidJson(pub String);

/// Checks that `bytes` hold exactly one JSON document, without building it.
pub fn validate_json(bytes: &[u8]) -> Result<(), InvalidJson> {
    // serde_json does not check the UTF-8 of strings it skips: check it first.
    let text = std::str::from_utf8(bytes).map_err(|e| InvalidJson(format!("not utf-8: {e}")))?;
    serde_json::from_str::<IgnoredAny>(text).map(|_| ()).map_err(|e| InvalidJson(e.to_string()))
}

impl Value {
    /// A JSON document; fails when `bytes` are not JSON.
    pub fn json(bytes: impl Into<Box<[u8]>>) -> Result<Self, InvalidJson> {
        let bytes = bytes.into();
        validate_json(&bytes)?;
        Ok(Value { encoding: Encoding::Json, bytes })
    }

    /// A JSON document built from a parsed value.
    pub fn from_json_value(v: &serde_json::Value) -> Self {
        let bytes = serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec());
        Value { encoding: Encoding::Json, bytes: bytes.into() }
    }

    /// A value written through the Redis protocol: kept as JSON when it is JSON,
    /// otherwise as raw bytes, so that it reads back byte for byte either way.
    pub fn from_resp(bytes: &[u8]) -> Self {
        // Fast path: most non-JSON strings fail on their first byte.
        let encoding =
            if looks_like_json_start(bytes) && validate_json(bytes).is_ok() { Encoding::Json } else { Encoding::Raw };
        Value { encoding, bytes: bytes.into() }
    }

    pub fn as_ref(&self) -> ValueRef<'_> {
        ValueRef { encoding: self.encoding, bytes: &self.bytes }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn looks_like_json_start(bytes: &[u8]) -> bool {
    match bytes.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        Some(b) => matches!(b, b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'),
        None => false,
    }
}

impl<'a> ValueRef<'a> {
    pub fn to_owned(self) -> Value {
        Value { encoding: self.encoding, bytes: self.bytes.into() }
    }

    /// A raw value that is not UTF-8 text (written over the Redis protocol): it has no JSON
    /// form, since a JSON string holds text. Readers hand it out as bytes or refuse.
    pub fn is_binary(self) -> bool {
        self.encoding == Encoding::Raw && std::str::from_utf8(self.bytes).is_err()
    }

    /// The value as JSON text (a raw value becomes a JSON string).
    pub fn to_json_bytes(self) -> Cow<'a, [u8]> {
        match self.encoding {
            Encoding::Json => Cow::Borrowed(self.bytes),
            Encoding::Raw => {
                let s = String::from_utf8_lossy(self.bytes);
                Cow::Owned(serde_json::to_vec(&s).unwrap_or_default())
            }
        }
    }

    /// The value parsed as JSON (a raw value becomes a JSON string).
    pub fn to_json_value(self) -> serde_json::Value {
        match self.encoding {
            Encoding::Json => serde_json::from_slice(self.bytes).unwrap_or(serde_json::Value::Null),
            Encoding::Raw => serde_json::Value::String(String::from_utf8_lossy(self.bytes).into_owned()),
        }
    }
}

/// Applies an RFC 7386 JSON Merge Patch to `target`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value as J;
    match patch {
        J::Object(patch_map) => {
            if !target.is_object() {
                *target = J::Object(serde_json::Map::new());
            }
            if let J::Object(target_map) = target {
                for (name, value) in patch_map {
                    if value.is_null() {
                        target_map.remove(name);
                    } else {
                        merge_patch(target_map.entry(name.clone()).or_insert(J::Null), value);
                    }
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resp_values_that_are_json_are_kept_as_json_byte_for_byte() {
        let v = Value::from_resp(b" {\"a\": 1} ");
        assert_eq!(v.encoding, Encoding::Json);
        assert_eq!(&*v.bytes, b" {\"a\": 1} ");
    }

    #[test]
    fn resp_values_that_are_not_json_read_as_json_strings_over_http() {
        let v = Value::from_resp(b"hello world");
        assert_eq!(v.encoding, Encoding::Raw);
        assert_eq!(&*v.as_ref().to_json_bytes(), b"\"hello world\"");
        let v = Value::from_resp(b"");
        assert_eq!(v.encoding, Encoding::Raw);
        assert_eq!(&*v.as_ref().to_json_bytes(), b"\"\"");
        let v = Value::from_resp(b"{not json");
        assert_eq!(v.encoding, Encoding::Raw);
    }

    #[test]
    fn json_with_invalid_utf8_inside_a_string_is_refused() {
        assert!(Value::json(&b"\"\xff\xfe\""[..]).is_err());
        assert_eq!(Value::from_resp(b"\"\xff\xfe\"").encoding, Encoding::Raw);
    }

    #[test]
    fn invalid_json_is_refused() {
        assert!(Value::json(&b"{\"a\":"[..]).is_err());
        assert!(Value::json(&b"1 2"[..]).is_err());
        assert!(Value::json(&b""[..]).is_err());
        assert!(Value::json(&b"[1,2]"[..]).is_ok());
    }

    // The examples of RFC 7386, appendix A.
    #[test]
    fn merge_patch_follows_the_rfc_7386_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (json!({"a":{"b":"c"}}), json!({"a":{"b":"d","c":null}}), json!({"a":{"b":"d"}})),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (json!({}), json!({"a":{"bb":{"ccc":null}}}), json!({"a":{"bb":{}}})),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }
}
