//! Podman's containers as containers/storage lists them (`containers.json`,
//! `volatile-containers.json`): an array of records with the container's `id` and `names`.
use serde::Deserialize;

#[derive(Deserialize)]
struct Record {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// `(id, name)` of every container with a name (its first).
pub fn names(json: &[u8]) -> Result<Vec<(String, String)>, serde_json::Error> {
    let records: Vec<Record> = serde_json::from_slice(json)?;
    Ok(records
        .into_iter()
        .filter_map(|r| Some((r.id, r.names.into_iter().find(|n| !n.is_empty())?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_lists() {
        let json = br#"[{"id":"4f3c2b1a","names":["db"],"image":"1f2e","layer":"9a8b",
            "metadata":"{\"image-name\":\"docker.io/library/postgres:16\",\"name\":\"db\"}",
            "created":"2026-12-02T08:00:00.000000000Z","flags":{"MountLabel":""}},
            {"id":"5e6f","names":[]},{"id":"7a8b"}]"#;
        assert_eq!(names(json).unwrap(), [("4f3c2b1a".to_string(), "db".to_string())]);
        assert_eq!(names(b"[]").unwrap(), []);
        assert!(names(b"{}").is_err());
        assert!(names(br#"[{"names":["x"]}]"#).is_err());
    }
}
