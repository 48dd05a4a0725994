//! Workloads named as operators know them: processes in real cgroups with the container
//! runtimes' real path shapes, the runtimes' files laid out under a test root exactly as each
//! runtime writes them, the daemon started with `--host-root` there. Refused connects, a cold
//! start, an aborted connection and a listener that exits from each: every family that has
//! `workload` must carry the exact `workload`, `namespace`, `pod` and `container`, and so must
//! `/api/targets`. Missing, partial, huge and malformed files fall back to the id forms.
use std::{
    fs,
    path::{Path, PathBuf},
};

use serde_json::Value;
use testkit::{
    Cgroup, Daemon, closed_port, get,
    metrics::{COLD_START_COUNT, EPISODES, FAILURES, LISTENER_LOST, RESETS_RECEIVED, RESETS_SENT, TARGET_STATE},
    privileged, value, wait_value,
};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

/// A client and server in one process, so everything it does is its cgroup's: `n` refused
/// connects to `port`, one to `refusing` (left refusing), then a listener on `port`, a connect
/// that succeeds (a cold start), aborted with SO_LINGER 0 (a RST sent, one received in
/// ESTABLISHED), and an exit with the listener open (a listener lost, `exited`).
const CLIENT: &str = r#"
import os, socket, struct, sys, time
port, refusing, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def refused(p):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", p))
        raise SystemExit("connected to %d" % p)
    except ConnectionRefusedError:
        pass
    s.close()
for _ in range(n):
    refused(port)
refused(refusing)
time.sleep(1)
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port))
l.listen()
c = socket.create_connection(("127.0.0.1", port))
a, _ = l.accept()
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
time.sleep(0.3)
os._exit(3)
"#;

const UID: &str = "0b5e9a7c-1d2f-4e3a-9b8c-7d6e5f4a3b2c";
const UID2: &str = "6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b";
const UID3: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

/// A 64-hex container id, distinct per `n` and per test run.
fn id(n: u8) -> String {
    format!("{:08x}{n:02x}", std::process::id()).repeat(7)[..64].to_string()
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// The kubelet's log layout for one container: the pod's directory with the container's log,
/// and the link in `/var/log/containers` (to the host's absolute path, as the kubelet makes it).
fn kubelet(root: &Path, namespace: &str, pod: &str, uid: &str, container: &str, id: &str) {
    let pod_dir = format!("var/log/pods/{namespace}_{pod}_{uid}");
    write(root, &format!("{pod_dir}/{container}/0.log"), b"");
    let link = root.join(format!("var/log/containers/{pod}_{namespace}_{container}-{id}.log"));
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(format!("/{pod_dir}/{container}/0.log"), link).unwrap();
}

/// containerd's OCI bundle for a CRI container, the annotations as its CRI plugin writes them.
fn containerd_bundle(namespace: &str, pod: &str, uid: &str, container: &str, sandbox: &str) -> String {
    serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["nginx", "-g", "daemon off;"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "annotations": {
            "io.kubernetes.cri.container-name": container,
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.image-name": "docker.io/library/nginx:1.27",
            "io.kubernetes.cri.sandbox-id": sandbox,
            "io.kubernetes.cri.sandbox-name": pod,
            "io.kubernetes.cri.sandbox-namespace": namespace,
            "io.kubernetes.cri.sandbox-uid": uid
        },
        "linux": {"cgroupsPath": format!("kubepods-burstable-pod{}.slice:cri-containerd:x", uid.replace('-', "_"))}
    })
    .to_string()
}

/// CRI-O's `config.json` for a container, its annotations as CRI-O writes them.
fn crio_bundle(namespace: &str, pod: &str, uid: &str, container: &str) -> String {
    serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {"args": ["/app"]},
        "annotations": {
            "io.container.manager": "cri-o",
            "io.kubernetes.container.name": container,
            "io.kubernetes.cri-o.ContainerType": "container",
            "io.kubernetes.cri-o.Name": format!("k8s_{container}_{pod}_{namespace}_{uid}_0"),
            "io.kubernetes.pod.name": pod,
            "io.kubernetes.pod.namespace": namespace,
            "io.kubernetes.pod.uid": uid
        }
    })
    .to_string()
}

/// Docker's `config.v2.json` of a Compose service's container (the fields names come from,
/// among those Docker writes).
fn docker_config(id: &str, name: &str, labels: Value) -> String {
    serde_json::json!({
        "StreamConfig": {},
        "State": {"Running": true, "Paused": false, "Pid": 4242, "ExitCode": 0},
        "ID": id,
        "Created": "2026-12-02T08:00:00.000000000Z",
        "Path": "nginx",
        "Args": [],
        "Config": {"Hostname": &id[..12], "Image": "nginx:1.27", "Labels": labels},
        "Image": "sha256:1f2e3d",
        "Name": format!("/{name}"),
        "Driver": "overlay2",
        "RestartCount": 0
    })
    .to_string()
}

/// containers/storage's `containers.json`, as Podman's storage keeps it.
fn podman_list(id: &str, name: &str) -> String {
    serde_json::json!([{
        "id": id,
        "names": [name],
        "image": "5e6f7a8b",
        "layer": "9c0d1e2f",
        "metadata": serde_json::json!({"image-name": "docker.io/library/postgres:16", "image-id": "5e6f7a8b", "name": name, "created-at": 1764662400}).to_string(),
        "created": "2026-12-02T08:00:00.000000000Z",
        "flags": {"MountLabel": "", "ProcessLabel": ""}
    }])
    .to_string()
}

struct Case {
    /// The cgroup, relative to the cgroup2 mount.
    cgroup: String,
    /// `workload`, `namespace`, `pod`, `container`.
    want: [String; 4],
}

fn case(cgroup: String, want: [&str; 4]) -> Case {
    Case {
        cgroup,
        want: want.map(String::from),
    }
}

fn labels<'a>(want: &'a [String; 4], more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut l: Vec<(&str, &str)> = ["workload", "namespace", "pod", "container"]
        .into_iter()
        .zip(want.iter().map(String::as_str))
        .collect();
    l.extend_from_slice(more);
    l
}

fn slice(uid: &str) -> String {
    format!(
        "refusal-test-kubepods.slice/refusal-test-kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    )
}

/// The test root with each runtime's files, and the cases they name.
fn lay_out(root: &Path) -> (Vec<Case>, Vec<Case>) {
    let (k8s, crio, compose, podman) = (id(1), id(2), id(3), id(4));
    // Kubernetes on containerd: the kubelet's log layout and the bundle.
    kubelet(root, "shop", "web-7d4f9c-x2k", UID, "nginx", &k8s);
    write(
        root,
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{k8s}/config.json"),
        containerd_bundle("shop", "web-7d4f9c-x2k", UID, "nginx", &id(9)).as_bytes(),
    );
    // Kubernetes on CRI-O: only the bundle names the container.
    write(
        root,
        &format!("run/containers/storage/overlay-containers/{crio}/userdata/config.json"),
        crio_bundle("payments", "api-5c8d-q7w", UID2, "app").as_bytes(),
    );
    // Docker Compose.
    let compose_labels = serde_json::json!({
        "com.docker.compose.project": "shop",
        "com.docker.compose.service": "worker",
        "com.docker.compose.container-number": "1",
        "com.docker.compose.oneoff": "False"
    });
    write(
        root,
        &format!("var/lib/docker/containers/{compose}/config.v2.json"),
        docker_config(&compose, "shop-worker-1", compose_labels).as_bytes(),
    );
    // Podman.
    write(
        root,
        "var/lib/containers/storage/overlay-containers/containers.json",
        podman_list(&podman, "db").as_bytes(),
    );
    let named = vec![
        case(
            format!("{}/cri-containerd-{k8s}.scope", slice(UID)),
            ["pod:shop/web-7d4f9c-x2k", "shop", "web-7d4f9c-x2k", "nginx"],
        ),
        case(
            format!("{}/crio-{crio}.scope", slice(UID2)),
            ["pod:payments/api-5c8d-q7w", "payments", "api-5c8d-q7w", "app"],
        ),
        case(
            format!("refusal-test.slice/docker-{compose}.scope"),
            ["container:shop/worker", "", "", ""],
        ),
        case(
            format!("refusal-test-machine.slice/libpod-{podman}.scope"),
            ["container:db", "", "", ""],
        ),
        case(
            "refusal-test.slice/refusal-test-web.service".into(),
            ["service:refusal-test-web.service", "", "", ""],
        ),
    ];

    // What falls back: a Docker config cut short, a containerd bundle over the size cap, a
    // Podman container its storage does not list, a pod whose directory is malformed.
    let (partial, huge, unlisted) = (id(5), id(6), id(7));
    write(
        root,
        &format!("var/lib/docker/containers/{partial}/config.v2.json"),
        &docker_config(&partial, "web", Value::Null).as_bytes()[..40],
    );
    let mut big = containerd_bundle("shop", "big", UID3, "big", &id(9)).into_bytes();
    big.truncate(big.len() - 1);
    big.extend_from_slice(format!(",\"padding\":\"{}\"}}", "x".repeat(2 << 20)).as_bytes());
    write(
        root,
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{huge}/config.json"),
        &big,
    );
    write(root, &format!("var/log/pods/Bad_Name_{UID3}/app/0.log"), b"");
    let fallbacks = vec![
        case(
            format!("refusal-test.slice/docker-{partial}.scope"),
            [&format!("container:{}", &partial[..12]), "", "", ""],
        ),
        case(
            format!("{}/cri-containerd-{huge}.scope", slice(UID3)),
            [&format!("container:{}", &huge[..12]), "", "", ""],
        ),
        case(
            format!("refusal-test-machine.slice/libpod-{unlisted}.scope"),
            [&format!("container:{}", &unlisted[..12]), "", "", ""],
        ),
        case(slice(UID3), [&format!("pod:{UID3}"), "", "", ""]),
    ];
    (named, fallbacks)
}

fn targets(d: &Daemon) -> Vec<Value> {
    let (code, body) = get(d.addr, "/api/targets").expect("GET /api/targets");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["targets"].as_array().unwrap().clone()
}

/// The `/api/targets` entry of `port`, its four names.
fn api_names(d: &Daemon, port: u16) -> [String; 4] {
    let t = targets(d)
        .into_iter()
        .find(|t| t["dst_port"] == port)
        .unwrap_or_else(|| panic!("no target on port {port}"));
    ["workload", "namespace", "pod", "container"].map(|k| t[k].as_str().unwrap_or_default().to_string())
}

#[test]
fn every_family_names_kubernetes_docker_podman_and_systemd_workloads() {
    if !privileged("every_family_names_kubernetes_docker_podman_and_systemd_workloads") {
        return;
    }
    let root = PathBuf::from(format!("/tmp/refusal-workloads-root-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let (named, fallbacks) = lay_out(&root);
    let script = root.join("client.py");
    fs::write(&script, CLIENT).unwrap();
    let d = Daemon::start(BIN, &["--host-root", root.to_str().unwrap()]);

    let mut checked = Vec::new();
    for (i, c) in named.iter().enumerate() {
        let cg = Cgroup::new(&c.cgroup);
        let (port, refusing, n) = (closed_port(), closed_port(), i + 2);
        cg.run(&format!("python3 {} {port} {refusing} {n}", script.display()));
        let (port_s, refusing_s) = (port.to_string(), refusing.to_string());
        let p = port_s.as_str();
        let failures = labels(
            &c.want,
            &[("comm", "python3"), ("dst_port", p), ("errno", "ECONNREFUSED")],
        );
        assert_eq!(wait_value(&d, FAILURES, &failures, n as f64), n as f64, "{}", c.cgroup);
        for (family, more, want) in [
            (RESETS_RECEIVED, vec![("dst_port", p), ("state", "syn_sent")], n),
            // The accepted end gets the abort: its remote port is the client's.
            (RESETS_RECEIVED, vec![("state", "established")], 1),
            (RESETS_SENT, vec![("comm", "python3")], 1),
            (
                TARGET_STATE,
                vec![("dst_port", refusing_s.as_str()), ("state", "refusing")],
                1,
            ),
            (EPISODES, vec![("dst_port", p), ("outcome", "cold_start")], 1),
            (COLD_START_COUNT, vec![("dst_port", p)], 1),
            (LISTENER_LOST, vec![("local_port", p), ("cause", "exited")], 1),
        ] {
            let l = labels(&c.want, &more);
            let got = wait_value(&d, family, &l, want as f64);
            assert_eq!(got, want as f64, "{family} {l:?}\n{}", d.metrics());
        }
        assert_eq!(api_names(&d, refusing), c.want, "{}", c.cgroup);
        assert_eq!(api_names(&d, port), c.want, "{}", c.cgroup);
        checked.push((
            cg,
            failures
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
            n,
        ));
    }
    for c in &fallbacks {
        let cg = Cgroup::new(&c.cgroup);
        let (port, refusing) = (closed_port(), closed_port());
        cg.run(&format!(
            "curl -s http://127.0.0.1:{port}/[1-2] http://127.0.0.1:{refusing}/"
        ));
        let p = port.to_string();
        let l = labels(&c.want, &[("comm", "curl"), ("dst_port", p.as_str())]);
        assert_eq!(wait_value(&d, FAILURES, &l, 2.0), 2.0, "{}", c.cgroup);
        assert_eq!(api_names(&d, refusing), c.want, "{}", c.cgroup);
    }

    // `status` shows them: each named workload's two targets (the cold start and the refusing
    // one), with the container, or `-` outside Kubernetes.
    let out = std::process::Command::new(BIN)
        .args(["status", "--listen", &d.addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    for c in &named {
        let container = if c.want[3].is_empty() { "-" } else { &c.want[3] };
        let row = format!("{:<32} {container:<15} python3 ", c.want[0]);
        assert_eq!(
            table.lines().filter(|l| l.starts_with(&row)).count(),
            2,
            "{row}\n{table}"
        );
    }

    // The containers are gone, their cgroups and files too: they keep their names.
    let metrics_before = d.metrics();
    fs::remove_dir_all(&root).unwrap();
    for (cg, failures, n) in checked {
        drop(cg);
        let l: Vec<(&str, &str)> = failures.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(value(&d.metrics(), FAILURES, &l), n as f64, "{l:?}\n{metrics_before}");
    }
}
