//! JSON helpers shared by the fuzz targets that write a parsed value back out and read it again.

use serde_json::Value;

/// serde_json without `float_roundtrip` may read a float back one ulp off; only values holding no
/// float must come back equal after a round trip.
pub fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}
