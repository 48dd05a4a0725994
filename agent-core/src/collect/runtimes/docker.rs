//! Docker's record of a container, `/var/lib/docker/containers/<id>/config.v2.json`: its name
//! (`Name`, with Docker's leading `/`), its Compose project and service, and the pod labels
//! cri-dockerd puts on the containers it runs for the kubelet.
use std::collections::HashMap;

use serde::Deserialize;

use crate::collect::{runtimes::kube_name, workload::Found};

#[derive(Deserialize)]
struct ConfigV2 {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: Option<Config>,
}

#[derive(Deserialize)]
struct Config {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// What a container's `config.v2.json` names: a pod (cri-dockerd), `<project>/<service>`
/// (Compose), or the container's name.
pub fn names(json: &[u8]) -> Result<Found, serde_json::Error> {
    let c: ConfigV2 = serde_json::from_slice(json)?;
    let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
    let label = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if let (Some(ns), Some(pod)) = (label("io.kubernetes.pod.namespace"), label("io.kubernetes.pod.name"))
        && kube_name(ns)
        && kube_name(pod)
    {
        // The sandbox is cri-dockerd's `POD` container.
        let container = label("io.kubernetes.container.name").filter(|c| kube_name(c));
        return Ok(Found::pod(ns, pod, container.unwrap_or_default()));
    }
    if let (Some(project), Some(service)) = (label("com.docker.compose.project"), label("com.docker.compose.service")) {
        return Ok(Found::Container(format!("{project}/{service}")));
    }
    let name = c.name.trim_start_matches('/');
    Ok(if name.is_empty() {
        Found::Nothing
    } else {
        Found::Container(name.into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_compose_and_cri_dockerd_containers() {
        let plain = br#"{"StreamConfig":{},"State":{"Running":true,"Pid":4242},"ID":"4f3c2b1a","Name":"/web",
            "Config":{"Hostname":"4f3c2b1a09e8","Image":"nginx","Labels":{"maintainer":"NGINX"}},"Driver":"overlay2"}"#;
        assert_eq!(names(plain).unwrap(), Found::Container("web".into()));
        let compose = br#"{"Name":"/shop-web-1","Config":{"Labels":{"com.docker.compose.project":"shop",
            "com.docker.compose.service":"web","com.docker.compose.container-number":"1"}}}"#;
        assert_eq!(names(compose).unwrap(), Found::Container("shop/web".into()));
        let k8s = br#"{"Name":"/k8s_nginx_web-7d4f9c-x2k_shop_0b5e_0","Config":{"Labels":{
            "io.kubernetes.container.name":"nginx","io.kubernetes.pod.name":"web-7d4f9c-x2k",
            "io.kubernetes.pod.namespace":"shop"}}}"#;
        assert_eq!(
            names(k8s).unwrap(),
            Found::Pod {
                namespace: "shop".into(),
                pod: "web-7d4f9c-x2k".into(),
                container: "nginx".into()
            }
        );
    }

    #[test]
    fn missing_and_broken() {
        assert_eq!(names(br#"{"Config":{"Labels":null}}"#).unwrap(), Found::Nothing);
        assert_eq!(names(br#"{"Name":"/"}"#).unwrap(), Found::Nothing);
        assert!(names(br#"{"Name":"/web","Config":{"#).is_err());
        assert!(names(br#"{"Name":7}"#).is_err());
    }
}
