#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/: small, meaningful inputs that
start each fuzz target deep in its format. Deterministic: rerun after changing it and commit the
result (`python3 fuzz/gen_seeds.py`). The fuzzers write what they find elsewhere (see
xtask/src/fuzz.rs), so these directories only change through this script."""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- config_toml: the daemon's TOML config ----

write("config_toml", "full.toml", """\
listen = "0.0.0.0:9977"
cold_start_max = "180s"
persistent_after = "3m"
min_attempts = 3
flap_episodes = 3
flap_window = "15m"
forget_after = "1h"
max_series = 10000
log_format = "json"
attach = "tp_btf"
web_config_file = "/etc/refusal-agent/web.yml"
""")
write("config_toml", "minimal.toml", 'cold_start_max = "90s"\n')
write("config_toml", "ipv6.toml", 'listen = "[::1]:9977"\nmin_attempts = 1\nflap_episodes = 2\n')
write("config_toml", "bad_key.toml", 'listn = "0.0.0.0:9977"\n')
write("config_toml", "bad_values.toml", 'cold_start_max = "0s"\nmin_attempts = 0\nattach = "auto"\n')
write("config_toml", "durations.txt", "1h30m\n250ms\n99999999999999999999h\n3 m\n")

# ---- cgroup_workload: cgroup v2 paths and /proc/self/mountinfo ----

CID = "4f1b2c3d" * 8
UID = "0f3a5b7c-1d2e-4f60-8a9b-0c1d2e3f4a5b"
write("cgroup_workload", "docker.txt", f"/system.slice/docker-{CID}.scope")
write("cgroup_workload", "kubepods.txt",
      f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
      f"cri-containerd-{CID}.scope")
write("cgroup_workload", "kubepods_cgroupfs.txt", f"/kubepods/besteffort/pod{UID}/{CID}")
write("cgroup_workload", "pod_only.txt", f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice")
write("cgroup_workload", "service.txt", "/system.slice/nginx.service")
write("cgroup_workload", "session.txt", "/user.slice/user-1000.slice/session-2.scope")
write("cgroup_workload", "root.txt", "/")
write("cgroup_workload", "mountinfo.txt", """\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
""")

# ---- runtime_files: the runtimes' files that name workloads, and kubelet log names ----

write("runtime_files", "containerd_config.json",
      '{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-name":"nginx",'
      '"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-name":"web-7d4f9c-x2k",'
      '"io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-uid":"' + UID + '"}}\n'
      f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n")
write("runtime_files", "crio_config.json",
      '{"annotations":{"io.kubernetes.container.name":"app","io.kubernetes.cri-o.ContainerType":"container",'
      '"io.kubernetes.pod.name":"api-5c8d-q7w","io.kubernetes.pod.namespace":"payments"}}\n'
      f"/kubepods/burstable/pod{UID}/{CID}\n")
write("runtime_files", "docker_config.v2.json",
      '{"ID":"' + CID + '","Name":"/shop-web-1","Config":{"Labels":{"com.docker.compose.project":"shop",'
      '"com.docker.compose.service":"web"}}}\n'
      f"/system.slice/docker-{CID}.scope\n")
write("runtime_files", "podman_containers.json",
      '[{"id":"' + CID + '","names":["db"],"image":"5e6f","layer":"9c0d","metadata":"{}",'
      '"created":"2026-12-02T08:00:00Z"}]\n'
      f"/machine.slice/libpod-{CID}.scope\n")
write("runtime_files", "kubelet_logs.txt",
      f"web-7d4f9c-x2k_shop_nginx-{CID}.log\nshop_web-7d4f9c-x2k_{UID}\n"
      f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope\n")

# ---- btf_parse: hand-built BTF, shaped like the kernel's for what the loader looks up ----

INT, PTR, ARRAY, STRUCT, UNION, ENUM, TYPEDEF, VOLATILE, FUNC, FUNC_PROTO = 1, 2, 3, 4, 5, 6, 8, 9, 12, 13


class Btf:
    def __init__(self):
        self.types = b""
        self.strings = b""
        self.count = 0

    def str(self, s):
        if not s:
            return 0
        off = len(self.strings) + 1  # after the empty name that build() prepends
        self.strings += s.encode() + b"\0"
        return off

    def ty(self, name, kind, size_or_type, records=(), extra=b"", kind_flag=False, vlen=None):
        info = (kind << 24) | (len(records) if vlen is None else vlen) | (0x80000000 if kind_flag else 0)
        self.types += struct.pack("<III", self.str(name), info, size_or_type) + extra
        for rname, words in records:
            self.types += struct.pack("<I", self.str(rname)) + struct.pack(f"<{len(words)}I", *words)
        self.count += 1
        return self.count

    def build(self):
        strings = b"\0" + self.strings
        header = struct.pack("<IIIIII", 0x0001EB9F, 24, 0, len(self.types), len(self.types), len(strings))
        return header + self.types + strings


def kernel_like_btf():
    b = Btf()
    i32 = b.ty("int", INT, 4, extra=struct.pack("<I", (1 << 24) | 32))
    u32 = b.ty("unsigned int", INT, 4, extra=struct.pack("<I", 32))
    u16 = b.ty("unsigned short", INT, 2, extra=struct.pack("<I", 16))
    u8 = b.ty("unsigned char", INT, 1, extra=struct.pack("<I", 8))
    be32 = b.ty("__be32", TYPEDEF, b.ty("__u32", TYPEDEF, u32))
    be16 = b.ty("__be16", TYPEDEF, b.ty("__u16", TYPEDEF, u16))
    u8t = b.ty("__u8", TYPEDEF, u8)
    s6 = b.ty("", ARRAY, 0, extra=struct.pack("<III", u8t, u32, 16))
    in6 = b.ty("in6_addr", STRUCT, 16, [("s6_addr", [s6, 0])])
    addrs = b.ty("", STRUCT, 8, [("skc_daddr", [be32, 0]), ("skc_rcv_saddr", [be32, 32])])
    addr_u = b.ty("", UNION, 8, [("", [addrs, 0])])
    ports = b.ty("", STRUCT, 4, [("skc_dport", [be16, 0]), ("skc_num", [u16, 16])])
    port_u = b.ty("", UNION, 4, [("", [ports, 0])])
    vu8 = b.ty("", VOLATILE, u8)
    common = b.ty("sock_common", STRUCT, 136, [
        ("", [addr_u, 0]), ("", [port_u, 96]), ("skc_family", [u16, 128]),
        ("skc_state", [vu8, 144]), ("skc_v6_daddr", [in6, 448]),
    ])
    sock = b.ty("sock", STRUCT, 760, [
        ("__sk_common", [common, 0]), ("sk_protocol", [u16, 516 * 8]), ("sk_err", [i32, 588 * 8]),
    ])
    reasons = ["NOT_SPECIFIED", "NO_SOCKET", "TCP_INVALID_ACK_SEQUENCE", "TCP_RFC7323_PAWS",
               "TCP_TOO_OLD_ACK", "TCP_ACK_UNSENT_DATA", "TCP_FLAGS", "TCP_OLD_ACK", "TCP_ABORT_ON_DATA",
               "TCP_TIMEWAIT_SOCKET", "INVALID_SYN", "TCP_ABORT_ON_CLOSE", "TCP_ABORT_ON_LINGER",
               "TCP_ABORT_ON_MEMORY", "TCP_STATE", "TCP_KEEPALIVE_TIMEOUT", "TCP_DISCONNECT_WITH_DATA"]
    b.ty("sk_rst_reason", ENUM, 4, [(f"SK_RST_REASON_{r}", [v]) for v, r in enumerate(reasons)])
    void_ptr = b.ty("", PTR, 0)
    sock_ptr = b.ty("", PTR, sock)
    proto = b.ty("", FUNC_PROTO, 0, [("", [void_ptr]), ("sk", [sock_ptr]), ("oldstate", [i32]),
                                      ("newstate", [i32])])
    b.ty("btf_trace_inet_sock_set_state", TYPEDEF, b.ty("", PTR, proto))
    reset = b.ty("", FUNC_PROTO, 0, [("", [void_ptr]), ("sk", [sock_ptr]), ("skb", [void_ptr]),
                                      ("reason", [u32])])
    b.ty("btf_trace_tcp_send_reset", TYPEDEF, b.ty("", PTR, reset))
    connect = b.ty("", FUNC_PROTO, i32, [("sk", [sock_ptr]), ("uaddr", [void_ptr]), ("addr_len", [i32])])
    b.ty("tcp_v4_connect", FUNC, connect, vlen=1)
    b.ty("tcp_v6_connect", FUNC, connect, vlen=1)
    return b.build()


def minimal_btf():
    b = Btf()
    b.ty("int", INT, 4, extra=struct.pack("<I", (1 << 24) | 32))
    return b.build()


write("btf_parse", "kernel_like.btf", kernel_like_btf())
write("btf_parse", "minimal.btf", minimal_btf())
# A header that claims more than there is.
write("btf_parse", "truncated.btf", minimal_btf()[:30])

# ---- sock_diag_parse: NETLINK_SOCK_DIAG dump datagrams ----

NLMSG_ERROR, NLMSG_DONE, SOCK_DIAG_BY_FAMILY, NLM_F_MULTI = 2, 3, 20, 2
AF_INET, AF_INET6, TCP_LISTEN, TCP_ESTABLISHED = 2, 10, 10, 1


def nlmsg(ty, payload, seq=1):
    msg = struct.pack("<IHHII", 16 + len(payload), ty, NLM_F_MULTI, seq, 0) + payload
    return msg + b"\0" * (-len(msg) % 4)


def diag(family, state, addr, port, ifindex=0):
    src = addr + b"\0" * (16 - len(addr))
    sockid = struct.pack(">HH", port, 0) + src + b"\0" * 16 + struct.pack("<III", ifindex, 0, 0)
    return struct.pack("<BBBB", family, state, 0, 0) + sockid + struct.pack("<IIIII", 0, 0, 0, 0, 12345)


def ipv6(text):
    import ipaddress
    return ipaddress.IPv6Address(text).packed


write("sock_diag_parse", "dump.bin", b"".join([
    nlmsg(SOCK_DIAG_BY_FAMILY, diag(AF_INET, TCP_LISTEN, bytes([127, 0, 0, 1]), 9977)),
    nlmsg(SOCK_DIAG_BY_FAMILY, diag(AF_INET, TCP_LISTEN, bytes([0, 0, 0, 0]), 22)),
    nlmsg(SOCK_DIAG_BY_FAMILY, diag(AF_INET6, TCP_LISTEN, ipv6("::"), 8080)),
    nlmsg(SOCK_DIAG_BY_FAMILY, diag(AF_INET6, TCP_LISTEN, ipv6("::ffff:10.0.0.7"), 5432)),
    nlmsg(SOCK_DIAG_BY_FAMILY, diag(AF_INET6, TCP_LISTEN, ipv6("fe80::1"), 53, ifindex=2)),
    nlmsg(SOCK_DIAG_BY_FAMILY, diag(AF_INET, TCP_ESTABLISHED, bytes([10, 0, 0, 1]), 443)),
    nlmsg(NLMSG_DONE, struct.pack("<i", 0)),
]))
write("sock_diag_parse", "partial.bin",
      nlmsg(SOCK_DIAG_BY_FAMILY, diag(AF_INET, TCP_LISTEN, bytes([192, 0, 2, 1]), 80)))
write("sock_diag_parse", "eperm.bin", nlmsg(NLMSG_ERROR, struct.pack("<i", -1) + b"\0" * 16))
write("sock_diag_parse", "done.bin", nlmsg(NLMSG_DONE, struct.pack("<i", 0)))

# ---- web_config: exporter-toolkit YAML, and Authorization header values ----

HASH = "$2y$12$L6Bc/AlTQHyd9liGgGEZyOFLPHNgyxeEPfgYfBCVxJ7JIlwxyVU3u"
write("web_config", "tls.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
write("web_config", "mtls.yml", """\
tls_server_config:
  cert_file: /etc/refusal-agent/tls/server.crt
  key_file: /etc/refusal-agent/tls/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: clients.crt
  min_version: TLS13
  max_version: TLS13
""")
write("web_config", "auth.yml", f"basic_auth_users:\n  prometheus: {HASH}\n  grafana: '{HASH}'\n")
write("web_config", "headers.yml", """\
http_server_config:
  http2: false
  headers:
    Strict-Transport-Security: max-age=31536000
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
""")
write("web_config", "inline.yml", """\
tls_server_config:
  cert: |
    -----BEGIN CERTIFICATE-----
    MIIBfzCCASWgAwIBAgIUQm9ndXMgY2VydGlmaWNhdGUgZm9yIGZ1enppbmcwCgYI
    -----END CERTIFICATE-----
  key: |
    -----BEGIN PRIVATE KEY-----
    MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg
    -----END PRIVATE KEY-----
  client_auth_type: VerifyClientCertIfGiven
  client_ca: "-----BEGIN CERTIFICATE-----\\nAA==\\n-----END CERTIFICATE-----\\n"
""")
write("web_config", "unsupported.yml",
      "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n")
write("web_config", "unknown_key.yml", "tls_server_config:\n  cert_fiel: a\n")
write("web_config", "empty.yml", "")
write("web_config", "authorization.txt", "Basic cHJvbWV0aGV1czpzM2NyZXQ6d2l0aDpjb2xvbnM=")
write("web_config", "authorization_lower.txt", "basic   YWRtaW46")

# ---- tracefs_format: tracefs format files ----

COMMON = """\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
"""
write("tracefs_format", "inet_sock_set_state.txt", f"""\
name: inet_sock_set_state
ID: 2287
format:
{COMMON}
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: "family=%s sport=%hu dport=%hu", REC->family, REC->sport, REC->dport
""")
write("tracefs_format", "tcp_send_reset.txt", f"""\
name: tcp_send_reset
ID: 2280
format:
{COMMON}
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: "skbaddr=%p skaddr=%p reason=%s", REC->skbaddr, REC->skaddr, __print_symbolic(REC->reason, {{ 1, "NO_SOCKET" }})
""")
write("tracefs_format", "sys_enter_connect.txt", f"""\
name: sys_enter_connect
ID: 2230
format:
{COMMON}
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;
""")
write("tracefs_format", "named_field.txt",
      "daddr_v6\0format:\n\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n")

if __name__ == "__main__":
    print("seeds written under", ROOT)
