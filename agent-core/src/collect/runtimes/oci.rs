//! A CRI runtime's OCI bundle `config.json`: the pod and container names it annotates, as
//! containerd (`io.kubernetes.cri.*`) and CRI-O (`io.kubernetes.pod.*`,
//! `io.kubernetes.container.name`) write them. The rest of the spec is skipped unread.
use std::collections::HashMap;

use serde::Deserialize;

use crate::collect::{runtimes::kube_name, workload::Found};

#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

/// (namespace, pod, container, container type) annotation keys of each runtime.
const KEYS: [[&str; 4]; 2] = [
    [
        "io.kubernetes.cri.sandbox-namespace",
        "io.kubernetes.cri.sandbox-name",
        "io.kubernetes.cri.container-name",
        "io.kubernetes.cri.container-type",
    ],
    [
        "io.kubernetes.pod.namespace",
        "io.kubernetes.pod.name",
        "io.kubernetes.container.name",
        "io.kubernetes.cri-o.ContainerType",
    ],
];

/// The pod a bundle belongs to; `Nothing` for a bundle without Kubernetes annotations. A
/// sandbox (the pod's pause container) has no container name.
pub fn names(json: &[u8]) -> Result<Found, serde_json::Error> {
    let spec: Spec = serde_json::from_slice(json)?;
    let a = spec.annotations.unwrap_or_default();
    for [ns, pod, container, kind] in KEYS {
        let (Some(ns), Some(pod)) = (a.get(ns), a.get(pod)) else {
            continue;
        };
        let container = match a.get(container) {
            _ if a.get(kind).is_some_and(|k| k == "sandbox") => "",
            Some(c) if kube_name(c) => c,
            _ => "",
        };
        if kube_name(ns) && kube_name(pod) {
            return Ok(Found::pod(ns, pod, container));
        }
    }
    Ok(Found::Nothing)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pod(container: &str) -> Found {
        Found::pod("shop", "web-7d4f9c-x2k", container)
    }

    #[test]
    fn containerd_bundles() {
        let json = br#"{"ociVersion":"1.1.0","process":{"args":["nginx"]},"annotations":{
            "io.kubernetes.cri.container-name":"nginx","io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.image-name":"docker.io/library/nginx:1.27",
            "io.kubernetes.cri.sandbox-id":"4f3c2b1a09e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2",
            "io.kubernetes.cri.sandbox-name":"web-7d4f9c-x2k","io.kubernetes.cri.sandbox-namespace":"shop",
            "io.kubernetes.cri.sandbox-uid":"0b5e9a7c-1d2f-4e3a-9b8c-7d6e5f4a3b2c"},"linux":{}}"#;
        assert_eq!(names(json).unwrap(), pod("nginx"));
        let sandbox = br#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox",
            "io.kubernetes.cri.sandbox-name":"web-7d4f9c-x2k","io.kubernetes.cri.sandbox-namespace":"shop"}}"#;
        assert_eq!(names(sandbox).unwrap(), pod(""));
    }

    #[test]
    fn crio_bundles() {
        let json = br#"{"ociVersion":"1.0.2-dev","annotations":{"io.kubernetes.container.name":"nginx",
            "io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.pod.name":"web-7d4f9c-x2k",
            "io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.uid":"0b5e9a7c-1d2f-4e3a-9b8c-7d6e5f4a3b2c"}}"#;
        assert_eq!(names(json).unwrap(), pod("nginx"));
        let sandbox = br#"{"annotations":{"io.kubernetes.container.name":"POD",
            "io.kubernetes.cri-o.ContainerType":"sandbox","io.kubernetes.pod.name":"web-7d4f9c-x2k",
            "io.kubernetes.pod.namespace":"shop"}}"#;
        assert_eq!(names(sandbox).unwrap(), pod(""));
    }

    #[test]
    fn bundles_without_pods_and_broken_ones() {
        assert_eq!(names(br#"{"ociVersion":"1.0.2"}"#).unwrap(), Found::Nothing);
        assert_eq!(names(br#"{"annotations":null}"#).unwrap(), Found::Nothing);
        // Not a Kubernetes name: not trusted as a label value.
        let bad = br#"{"annotations":{"io.kubernetes.pod.name":"a b","io.kubernetes.pod.namespace":"shop"}}"#;
        assert_eq!(names(bad).unwrap(), Found::Nothing);
        assert!(names(b"{\"annotations\":{\"io.kubernetes.pod.name\":").is_err());
        assert!(names(b"").is_err());
        assert!(names(br#"{"annotations":{"x":1}}"#).is_err());
    }

    proptest! {
        #[test]
        fn names_found_are_kubernetes_names(
            ns in "\\PC{0,12}", pod in "[a-z0-9.-]{0,12}", container in "\\PC{0,12}", crio in any::<bool>()
        ) {
            let keys = KEYS[usize::from(crio)];
            let json = serde_json::json!({"annotations": {keys[0]: ns, keys[1]: pod, keys[2]: container}});
            match names(json.to_string().as_bytes()).unwrap() {
                Found::Pod { namespace, pod: p, container: c } => {
                    prop_assert!(kube_name(&namespace) && kube_name(&p));
                    prop_assert!(c.is_empty() || kube_name(&c));
                    prop_assert_eq!((namespace, p), (ns, pod));
                }
                Found::Nothing => prop_assert!(!kube_name(&ns) || !kube_name(&pod)),
                Found::Container(_) => prop_assert!(false, "a bundle names pods only"),
            }
        }
    }
}
