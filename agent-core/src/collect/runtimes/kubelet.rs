//! The kubelet's log layout, the one log shippers rely on: `/var/log/pods/<namespace>_<pod>_<uid>/`
//! and `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log`. Only the file
//! names are read, never the logs.
use crate::collect::{runtimes::kube_name, workload::Found};

/// A pod's log directory name: `(namespace, pod, uid)`.
pub fn pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    let uid_ok = !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (parts.next().is_none() && kube_name(namespace) && kube_name(pod) && uid_ok).then_some((namespace, pod, uid))
}

/// A container log link's name: `(container id, what it names)`.
pub fn container_log(name: &str) -> Option<(&str, Found)> {
    let stem = name.strip_suffix(".log")?;
    let mut parts = stem.split('_');
    let (pod, namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let (container, id) = rest.rsplit_once('-')?;
    let id_ok = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = parts.next().is_none() && id_ok && kube_name(pod) && kube_name(namespace) && kube_name(container);
    ok.then(|| (id, Found::pod(namespace, pod, container)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ID: &str = "4f3c2b1a09e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2";

    #[test]
    fn pod_directories() {
        assert_eq!(
            pod_dir("shop_web-7d4f9c-x2k_0b5e9a7c-1d2f-4e3a-9b8c-7d6e5f4a3b2c"),
            Some(("shop", "web-7d4f9c-x2k", "0b5e9a7c-1d2f-4e3a-9b8c-7d6e5f4a3b2c"))
        );
        // A static pod: its uid is a hash.
        assert_eq!(
            pod_dir("kube-system_etcd-node1_d41d8cd98f00b204e9800998ecf8427e"),
            Some(("kube-system", "etcd-node1", "d41d8cd98f00b204e9800998ecf8427e"))
        );
        for bad in [
            "",
            "shop",
            "shop_web",
            "shop_web_uid_x",
            "Shop_web_0b5e",
            "shop__0b5e",
            "shop_web_",
        ] {
            assert_eq!(pod_dir(bad), None, "{bad}");
        }
    }

    #[test]
    fn container_logs() {
        let name = format!("web-7d4f9c-x2k_shop_nginx-sidecar-{ID}.log");
        let (id, found) = container_log(&name).unwrap();
        assert_eq!(id, ID);
        assert_eq!(
            found,
            Found::Pod {
                namespace: "shop".into(),
                pod: "web-7d4f9c-x2k".into(),
                container: "nginx-sidecar".into()
            }
        );
        for bad in [
            format!("web_shop_nginx-{ID}"),
            format!("web_shop_nginx-{}.log", &ID[1..]),
            format!("web_shop_-{ID}.log"),
            format!("web_shop_x_nginx-{ID}.log"),
            "web_shop_nginx.log".into(),
        ] {
            assert_eq!(container_log(&bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn names_that_parse_are_kubernetes_names(name in "[a-z0-9_.-]{0,120}(\\.log)?") {
            if let Some((_, Found::Pod { namespace, pod, container })) = container_log(&name) {
                prop_assert!(kube_name(&namespace) && kube_name(&pod) && kube_name(&container));
            }
            if let Some((ns, pod, _)) = pod_dir(&name) {
                prop_assert!(kube_name(ns) && kube_name(pod));
            }
        }
    }
}
