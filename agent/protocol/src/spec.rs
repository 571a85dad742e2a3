//! Reading a bundle's `config.json` with errors that name the field at fault.

use oci_spec::runtime::Spec;

/// A `config.json` that is not a valid OCI runtime spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecLoadError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The JSON does not parse or does not fit the spec; `field` is the path to the problem.
    #[error("config.json: {field}: {message}")]
    Invalid {
        /// The JSON path, e.g. `process.capabilities.bounding[2]`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses `config.json` content.
pub fn parse_spec(bytes: &[u8]) -> Result<Spec, SpecLoadError> {
    // serde would also accept a JSON array for a struct; a spec is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(SpecLoadError::Invalid {
            field: "(top level)".into(),
            message: "not a JSON object".into(),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        SpecLoadError::Invalid {
            field: if field == "." {
                "(top level)".into()
            } else {
                field
            },
            message,
        }
    })
}

/// Reads and parses a bundle's `config.json`.
pub fn load_spec(path: &std::path::Path) -> Result<Spec, SpecLoadError> {
    let bytes = std::fs::read(path).map_err(|source| SpecLoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_spec(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_field_of_an_unknown_capability() {
        let mut v = serde_json::to_value(Spec::default()).unwrap();
        v["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_CHOWN", "CAP_FLY"]);
        let err = parse_spec(v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("process.capabilities.bounding[1]"), "{err}");
        assert!(err.contains("CAP_FLY"), "{err}");
    }

    #[test]
    fn names_the_field_of_a_bad_type() {
        let mut v = serde_json::to_value(Spec::default()).unwrap();
        v["process"]["user"]["uid"] = serde_json::json!("root");
        let err = parse_spec(v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("process.user.uid"), "{err}");
    }

    #[test]
    fn malformed_json_is_an_error() {
        assert!(parse_spec(b"{\"ociVersion\": ").is_err());
        assert!(parse_spec(b"[]").is_err());
        parse_spec(serde_json::to_string(&Spec::default()).unwrap().as_bytes()).unwrap();
    }
}
