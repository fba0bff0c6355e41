//! JSON Schema of the config document, for editors (`# yaml-language-server: $schema=...`).

use crate::Config;

/// The JSON Schema (draft 2020-12) describing a config document.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(Config);
    schema.insert("title".into(), "Sluice config".into());
    schema.to_value()
}
