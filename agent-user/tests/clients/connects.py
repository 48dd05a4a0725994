"""Makes the connects of a plan (JSON on stdin) the way Python applications do, and prints what
each one saw, a JSON list: "ok", an errno name, or "timeout" (the client's own)."""
import errno
import json
import socket
import sys

seen = []
for call in json.load(sys.stdin):
    host, port, timeout, syncnt = call["host"], call["port"], call["timeout"], call["syncnt"]
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    if syncnt:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syncnt)
    # settimeout: a non-blocking connect, poll, then SO_ERROR; None: a blocking connect.
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        seen.append("ok")
    except OSError as e:
        # socket.timeout is TimeoutError, which the kernel's ETIMEDOUT raises too: only the
        # client's own timeout has no errno.
        seen.append(errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "timeout")
    finally:
        s.close()
print(json.dumps(seen))
