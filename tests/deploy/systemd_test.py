#!/usr/bin/env python3
"""The shipped systemd units, checked and run as far as this machine allows (PID 1 is not systemd).

1. `systemd-analyze verify` on deploy/systemd/xcpipe-coordinator.service and two instances of
   xcpipe-worker@.service, with ExecStart pointed at the built binaries (verify needs an existing
   absolute executable): any output at all fails the test (unknown keys are only warnings).
2. The units' own ExecStart lines, expanded the way systemd does (specifiers %i %H, Environment=,
   then the EnvironmentFile= files written from the shipped *.env.example with test values;
   ${VAR} is one word, $VAR splits) start a real coordinator and two CPU workers, each with
   NOTIFY_SOCKET pointing at a datagram socket this test listens on and WATCHDOG_USEC set:
   every worker sends READY=1 after its stage has loaded, the coordinator READY=1 once serving,
   and each sends WATCHDOG=1 repeatedly.
3. A prompt is answered. SIGTERM to one worker mid-request: it leaves with exit 0 and STOPPING=1,
   the request still completes (the coordinator re-plans on the other worker and replays it).
Also: a coordinator whose expected workers never register exits 5 and names the missing ones.
4. SIGTERM to the coordinator mid-request (the graceful drain): a new request is refused as
   unavailable, the admitted one completes, the coordinator exits 0 and the worker exits 0.
Not run here: User=, hardening and restart policy (no systemd as PID 1); deploy/README.md says so.
Usage: systemd_test.py BIN_DIR
"""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
HOST = socket.gethostname()


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def staged_unit(src: Path, bin_dir: Path, etc: Path, out: Path):
    text = src.read_text().replace("/usr/local/bin/", f"{bin_dir}/").replace("/etc/xcpipe/", f"{etc}/")
    out.write_text(text)
    return out


def parse_service(path: Path):
    """[Service] key/value pairs in order (repeated keys kept)."""
    section, items = None, []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            items.append((key.strip(), value.strip()))
    return items


def specifiers(text, instance):
    return text.replace("%%", "\0").replace("%i", instance).replace("%H", HOST).replace("\0", "%")


def read_env_file(path: Path):
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    return env


def exec_start(unit: Path, instance: str):
    """argv and environment of the unit's ExecStart, expanded as systemd.exec(5) says."""
    env, cmd = {}, None
    for key, value in parse_service(unit):
        value = specifiers(value, instance)
        if key == "Environment":
            k, _, v = value.partition("=")
            env[k] = v
        elif key == "EnvironmentFile":
            optional = value.startswith("-")
            path = Path(value.lstrip("-"))
            if path.exists():
                env.update(read_env_file(path))
            elif not optional:
                fail(f"{unit.name}: EnvironmentFile {path} missing")
        elif key == "ExecStart":
            cmd = value
    argv = []
    for word in shlex.split(cmd):
        whole = re.fullmatch(r"\$\{(\w+)\}", word)
        split = re.fullmatch(r"\$(\w+)", word)
        if whole:
            argv.append(env.get(whole.group(1), ""))
        elif split:
            argv.extend(env.get(split.group(1), "").split())
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return argv, env


class NotifyListener:
    """A datagram socket standing in for systemd's notification socket; records every message."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages = []  # (monotonic time, text)
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            with self.lock:
                self.messages.append((time.monotonic(), data.decode()))

    def texts(self):
        with self.lock:
            return [m for _, m in self.messages]

    def count(self, text):
        return sum(1 for m in self.texts() if m == text)

    def wait_for(self, text, timeout_s):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if text in self.texts():
                return True
            time.sleep(0.05)
        return False


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def submit(bin_dir, address, prompt, tokens):
    return subprocess.Popen([str(bin_dir / "xcpipe"), "submit", "--coordinator", address, "--prompt", prompt,
                             "--max-new-tokens", str(tokens), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc, what, timeout_s=60):
    out, err = proc.communicate(timeout=timeout_s)
    if proc.returncode != 0:
        fail(f"{what}: exit {proc.returncode}: {err.strip()} {out.strip()}")
    reply = json.loads(out.strip().splitlines()[-1])
    if reply.get("finish_reason") not in ("length", "stop") or not reply.get("token_ids"):
        fail(f"{what}: {reply}")
    return reply


def main():
    if len(sys.argv) != 2:
        fail("usage: systemd_test.py BIN_DIR")
    bin_dir = Path(sys.argv[1]).resolve()
    for b in ("xcpipe", "xcpipe-coordinator", "xcpipe-worker"):
        if not (bin_dir / b).is_file():
            fail(f"{bin_dir / b} missing")
    procs = []
    with tempfile.TemporaryDirectory(prefix="xcpipe-systemd.") as tmp:
        tmp = Path(tmp)
        etc = tmp / "etc"
        etc.mkdir()
        try:
            run(bin_dir, tmp, etc, procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    print("PASS")


def run(bin_dir, tmp, etc, procs):
    # 1. systemd-analyze verify against the staged units.
    staged = tmp / "units"
    staged.mkdir()
    coordinator_unit = staged_unit(UNITS / "xcpipe-coordinator.service", bin_dir, etc,
                                   staged / "xcpipe-coordinator.service")
    worker_units = [staged_unit(UNITS / "xcpipe-worker@.service", bin_dir, etc, staged / f"xcpipe-worker@{i}.service")
                    for i in (0, 1)]
    verify = subprocess.run(["systemd-analyze", "verify", str(coordinator_unit), *map(str, worker_units)],
                            capture_output=True, text=True)
    if verify.returncode != 0 or verify.stdout.strip() or verify.stderr.strip():
        fail(f"systemd-analyze verify (exit {verify.returncode}):\n{verify.stdout}{verify.stderr}")
    print("systemd-analyze verify: no output for the coordinator unit and worker@0, worker@1")

    # 2. Environment files from the shipped examples, with this test's values.
    model = tmp / "model"
    subprocess.run([str(bin_dir / "xcpipe"), "mkmodel", "--arch", "ixc2-vl", "--preset", "tiny", "--out", str(model)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Worker discovery: a coordinator whose workers never come exits 5 naming the missing ones.
    waited = subprocess.run([str(bin_dir / "xcpipe-coordinator"), "--model", str(model), "--listen",
                             f"tcp://127.0.0.1:{free_port()}", "--expect-worker-ids", "hostA/gpu0,hostB/gpu1",
                             "--worker-wait-s", "1"], capture_output=True, text=True, timeout=30)
    if waited.returncode != 5 or "missing: hostA/gpu0, hostB/gpu1" not in waited.stderr + waited.stdout:
        fail(f"worker wait timeout: exit {waited.returncode}, log:\n{waited.stderr}{waited.stdout}")
    print("no workers within --worker-wait-s: exit 5, the missing ones named")
    port = free_port()
    coordinator_env = read_env_file(UNITS / "coordinator.env.example")
    coordinator_env.update(XCPIPE_MODEL=str(model), XCPIPE_LISTEN=f"tcp://127.0.0.1:{port}", XCPIPE_EXPECT_WORKERS="2",
                           XCPIPE_WORKER_WAIT_S="60", XCPIPE_DRAIN_TIMEOUT_S="30",
                           XCPIPE_COORDINATOR_ARGS=f"--expect-worker-ids {HOST}/gpu0,{HOST}/gpu1")
    # The HTTP API as the example configures it, on a free port with a key file of this test.
    http_port = free_port()
    (etc / "api-keys").write_text("# test key\nxcpipe-systemd-test-key-0123456789\n")
    coordinator_env["XCPIPE_HTTP_ARGS"] = coordinator_env["XCPIPE_HTTP_ARGS"].replace(
        "10.0.0.1:8000", f"127.0.0.1:{http_port}").replace("/etc/xcpipe/api-keys", str(etc / "api-keys"))
    worker_env = read_env_file(UNITS / "worker.env.example")
    worker_env.update(XCPIPE_COORDINATOR=f"tcp://127.0.0.1:{port}", XCPIPE_DATA_HOST="127.0.0.1", XCPIPE_DEVICE="cpu",
                      XCPIPE_WORKER_ARGS="--threads 1 --inject-step-delay-ms 20")
    (etc / "coordinator.env").write_text("".join(f"{k}={v}\n" for k, v in coordinator_env.items()))
    (etc / "worker.env").write_text("".join(f"{k}={v}\n" for k, v in worker_env.items()))
    for i in (0, 1):  # per-GPU override files: any free data port instead of 720N
        (etc / f"worker-{i}.env").write_text("XCPIPE_DATA_PORT=0\n")

    def start(unit, instance, name):
        argv, _ = exec_start(unit, instance)
        listener = NotifyListener(tmp / f"{name}.notify")
        env = dict(os.environ, NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="1000000")
        env.pop("WATCHDOG_PID", None)
        log = open(tmp / f"{name}.log", "w")
        p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        return p, listener

    coordinator, c_notify = start(coordinator_unit, "", "coordinator")
    workers = [start(worker_units[i], str(i), f"worker{i}") for i in (0, 1)]

    def logs():
        return "\n".join(f"--- {n}\n" + (tmp / f"{n}.log").read_text()[-3000:] for n in ("coordinator", "worker0", "worker1"))

    if not c_notify.wait_for("READY=1", 90):
        fail(f"the coordinator sent no READY=1: {c_notify.texts()}\n{logs()}")
    for i, (_, n) in enumerate(workers):
        if not n.wait_for("READY=1", 10):
            fail(f"worker {i} sent no READY=1: {n.texts()}\n{logs()}")
        texts = n.texts()
        # READY=1 comes after the stage loaded, not at start.
        if "STATUS=stage loading" not in texts or texts.index("STATUS=stage loading") > texts.index("READY=1"):
            fail(f"worker {i}: READY=1 before its stage loaded: {texts}")
    status_line = [t for t in c_notify.texts() if t.startswith("STATUS=serving on")]
    if not status_line:
        fail(f"coordinator sent no serving status: {c_notify.texts()}")
    address = status_line[0].split("serving on ", 1)[1]
    print(f"READY=1 from both workers after loading and from the coordinator ({address})")
    # The HTTP API the unit exposes: health without a key, a chat answer with the key file's key.
    import urllib.error
    import urllib.request
    base = f"http://127.0.0.1:{http_port}"
    health = None
    for _ in range(50):  # the API refreshes its view of the coordinator once a second
        try:
            with urllib.request.urlopen(base + "/health", timeout=10) as r:
                health = r.status
                break
        except urllib.error.HTTPError as e:
            health = e.code
            time.sleep(0.2)
    if health != 200:
        fail(f"HTTP /health: {health}\n{logs()}")
    chat = urllib.request.Request(base + "/v1/chat/completions", method="POST",
                                  data=json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}).encode(),
                                  headers={"Authorization": "Bearer xcpipe-systemd-test-key-0123456789",
                                           "Content-Type": "application/json"})
    with urllib.request.urlopen(chat, timeout=60) as r:
        answer = json.load(r)
    if answer["usage"]["completion_tokens"] < 1:
        fail(f"HTTP chat answer: {answer}")
    print(f"HTTP API on {base}: /health 200, a chat completion with the key file's key")
    time.sleep(2.6)  # WATCHDOG_USEC=1 s: a ping every 0.5 s
    for name, n in [("coordinator", c_notify)] + [(f"worker {i}", w[1]) for i, w in enumerate(workers)]:
        if n.count("WATCHDOG=1") < 3:
            fail(f"{name}: WATCHDOG=1 {n.count('WATCHDOG=1')} times in ~2.6 s: {n.texts()}")
    print("WATCHDOG=1 repeatedly from all three: " +
          ", ".join(str(n.count("WATCHDOG=1")) for n in [c_notify] + [w[1] for w in workers]))

    # 3. A prompt; then SIGTERM to worker 1 while a request is decoding.
    reply = finished(submit(bin_dir, address, "Hello from systemd", 6), "first prompt")
    print(f"answered: {reply['text']!r}")
    long = submit(bin_dir, address, "Tell me a long story", 80)  # ~3.2 s: 2 stages x 20 ms a token
    time.sleep(1.2)
    w1, w1_notify = workers[1]
    w1.send_signal(signal.SIGTERM)
    try:
        rc = w1.wait(timeout=10)
    except subprocess.TimeoutExpired:
        fail(f"worker 1 ignored SIGTERM\n{logs()}")
    if rc != 0 or not w1_notify.wait_for("STOPPING=1", 1):
        fail(f"worker 1 on SIGTERM: exit {rc}, notifications {w1_notify.texts()}")
    reply = finished(long, "request in flight across a worker's SIGTERM", 60)
    if "recovering" not in (tmp / "coordinator.log").read_text():
        fail(f"the coordinator did not re-plan after worker 1 left\n{logs()}")
    print(f"worker 1 left on SIGTERM (exit 0, STOPPING=1); the request in flight completed: "
          f"{len(reply['token_ids'])} tokens")

    # 4. SIGTERM to the coordinator mid-request: refuse new work, finish admitted work, exit 0.
    long = submit(bin_dir, address, "Another long story", 150)  # ~3 s on the one worker left
    time.sleep(1.0)
    coordinator.send_signal(signal.SIGTERM)
    if not c_notify.wait_for("STOPPING=1", 5):
        fail(f"coordinator sent no STOPPING=1: {c_notify.texts()}")
    refused = submit(bin_dir, address, "too late", 4)
    out, err = refused.communicate(timeout=30)
    if refused.returncode == 0 or "shutting down" not in (out + err):
        fail(f"a request during the drain was not refused: exit {refused.returncode}: {out} {err}")
    reply = finished(long, "request admitted before the coordinator's SIGTERM", 60)
    try:
        rc = coordinator.wait(timeout=40)
        w0_rc = workers[0][0].wait(timeout=10)
    except subprocess.TimeoutExpired:
        fail(f"coordinator or worker 0 did not exit after the drain\n{logs()}")
    if rc != 0 or w0_rc != 0:
        fail(f"exit codes after the drain: coordinator {rc}, worker 0 {w0_rc}\n{logs()}")
    print(f"coordinator drained on SIGTERM: new request refused, admitted one completed "
          f"({len(reply['token_ids'])} tokens), coordinator and worker exited 0")


if __name__ == "__main__":
    main()
