#!/usr/bin/env python3
"""http_bench: one stream through the HTTP API against `xcpipe submit` on the same cluster, in
the same run. Starts `xcpipe serve-local --http-listen` on a model (default: makes the `small`
XComposer2-VL preset with xcpipe mkmodel), then alternates, for --runs rounds, one streamed
greedy request through POST /v1/chat/completions and the same prompt through
`xcpipe submit --json`. Reports medians of decode tokens/s (tokens after the first / time after
the first) and time to first token for both, their ratio, and the TTFT the HTTP layer adds.
Writes BUILD/reports/http_bench.json.

  python3 bench/http_bench.py [--build build] [--model DIR] [--workers 2] [--runs 7] [--tokens 64]

Standard library only (http.client); no npm needed.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def start_cluster(bin_dir, model, workers, work):
    out = open(os.path.join(work, "serve.out"), "w+")
    err = open(os.path.join(work, "serve.err"), "w+")
    proc = subprocess.Popen([os.path.join(bin_dir, "xcpipe"), "serve-local", "--model", model, "--workers", str(workers),
                             "--listen", "tcp://127.0.0.1:*", "--http-listen", "127.0.0.1:0"],
                            stdout=out, stderr=err)
    deadline = time.time() + 300
    while time.time() < deadline:
        out.seek(0)
        lines = out.read().splitlines()
        http = [l.split()[1] for l in lines if l.startswith("http ")]
        ready = [l.split()[1] for l in lines if l.startswith("ready ")]
        if http and ready:
            hostport = http[0][len("http://"):-len("/v1")]
            return proc, hostport, ready[0]
        if proc.poll() is not None:
            err.seek(0)
            sys.exit("serve-local exited: " + err.read()[-2000:])
        time.sleep(0.2)
    proc.kill()
    sys.exit("serve-local did not come up in 300 s")


def wait_serving(hostport):
    for _ in range(600):
        try:
            c = http.client.HTTPConnection(hostport, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("the HTTP API never reported serving")


def http_stream(hostport, prompt, tokens):
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection(hostport, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        sys.exit("HTTP %d: %s" % (r.status, r.read()[:500]))
    first = last = None
    usage = None
    text = ""
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk["choices"]:
            if ch["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                text += ch["delta"]["content"]
    n = usage["completion_tokens"]
    return {"ttft_ms": (first - t0) * 1e3, "tokens": n,
            "tokens_per_s": (n - 1) / (last - first) if n > 1 and last > first else 0.0, "text": text}


def submit(bin_dir, coordinator, prompt, tokens):
    out = subprocess.run([os.path.join(bin_dir, "xcpipe"), "submit", "--coordinator", coordinator, "--prompt", prompt,
                          "--max-new-tokens", str(tokens), "--greedy", "--json"], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    return {"ttft_ms": r["ttft_ms"], "tokens": len(r["token_ids"]), "tokens_per_s": r["tokens_per_s"], "text": r["text"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--model", help="model folder (default: mkmodel --preset small in a temporary folder)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt", default="Describe a pipeline of GPUs in a few sentences.")
    args = ap.parse_args()
    bin_dir = os.path.join(args.build, "bin")
    work = tempfile.mkdtemp(prefix="xcpipe-http-bench.")
    proc = None
    try:
        model = args.model
        if not model:
            model = os.path.join(work, "model")
            subprocess.run([os.path.join(bin_dir, "xcpipe"), "mkmodel", "--arch", "ixc2-vl", "--preset", args.preset,
                            "--out", model], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc, hostport, coordinator = start_cluster(bin_dir, model, args.workers, work)
        wait_serving(hostport)
        # One of each first: the shared prompt head is computed, pages are touched.
        http_stream(hostport, args.prompt, args.tokens)
        submit(bin_dir, coordinator, args.prompt, args.tokens)
        rows = {"http": [], "submit": []}
        for _ in range(args.runs):
            rows["http"].append(http_stream(hostport, args.prompt, args.tokens))
            rows["submit"].append(submit(bin_dir, coordinator, args.prompt, args.tokens))
        same = all(h["text"] == s["text"] for h, s in zip(rows["http"], rows["submit"]))
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("ttft_ms", "tokens_per_s", "tokens")}
               for k, v in rows.items()}
        report = {
            "model": model if args.model else "mkmodel ixc2-vl --preset " + args.preset,
            "workers": args.workers, "runs": args.runs, "max_tokens": args.tokens,
            "median": med, "same_text": same,
            "tokens_per_s_ratio_http_vs_submit": med["http"]["tokens_per_s"] / med["submit"]["tokens_per_s"],
            "ttft_added_ms": med["http"]["ttft_ms"] - med["submit"]["ttft_ms"],
            "runs_detail": {k: [{m: r[m] for m in ("ttft_ms", "tokens_per_s", "tokens")} for r in v] for k, v in rows.items()},
        }
        print("%-8s %12s %14s %8s" % ("path", "TTFT ms", "decode tok/s", "tokens"))
        for k in ("submit", "http"):
            print("%-8s %12.1f %14.1f %8d" % (k, med[k]["ttft_ms"], med[k]["tokens_per_s"], med[k]["tokens"]))
        print("HTTP / submit tokens/s: %.3fx (goal >= 0.97x); TTFT added by HTTP: %.1f ms; same text: %s" %
              (report["tokens_per_s_ratio_http_vs_submit"], report["ttft_added_ms"], same))
        os.makedirs(os.path.join(args.build, "reports"), exist_ok=True)
        with open(os.path.join(args.build, "reports", "http_bench.json"), "w") as f:
            json.dump(report, f, indent=2)
        return 0 if same else 6
    finally:
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
