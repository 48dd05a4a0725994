// Makes the connects of a plan (JSON on stdin) the way Node applications do (net.connect:
// non-blocking, epoll, SO_ERROR), one at a time, and prints what each one saw, a JSON list:
// "ok", an errno name, or "timeout" (the socket's own timeout).
const net = require('net');

const plan = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const seen = [];

function next(i) {
  if (i === plan.length) {
    console.log(JSON.stringify(seen));
    return;
  }
  const { host, port, timeout } = plan[i];
  const s = net.connect({ host, port });
  let done = false;
  const end = (what) => {
    if (done) return;
    done = true;
    seen.push(what);
    s.destroy();
    setImmediate(() => next(i + 1));
  };
  if (timeout) s.setTimeout(timeout * 1000, () => end('timeout'));
  s.on('connect', () => end('ok'));
  s.on('error', (e) => end(e.code));
}

next(0);
