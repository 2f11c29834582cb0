#!/usr/bin/env python3
"""keyward's scale benchmark: what a store of N keys costs (see bench/README.md, "Scale").

For each store (SQLite, PostgreSQL) and each N, on loopback, against the release binary:

- creation: N keys through `POST /v1/keys` (wrk, 2 threads, 16 connections), keys/s;
- memory: the server's resident set before and after every key was verified once (the verify
  cache then holds min(N, its capacity) keys), per cached key;
- verify under wrk for DURATION: keys drawn by a Zipf law (s = 1) with the cache warm, and
  uniformly right after a restart (cold cache); p50/p99 and the cache hit ratio the server
  counted (keyward_cache_hits_total / misses) during the run;
- listings: `GET /v1/keys?limit=100`, the first page and a page half-way through (its cursor
  found by walking with limit=1000), median of 15 calls each;
- usage: the server's usage flush (keyward_store_operation_duration_seconds for add_usage) after
  the warm-up verified every key, and `GET /v1/usage` (first page of 1000 rows), median of 15.

Usage: bench/scale.sh [N ...]   (default: 10000 100000); STORES="sqlite postgres" by default;
DURATION=10s; FLUSH_SECONDS=5. Prints a Markdown table. Every load loop is bounded in count and time.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import http.client
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT_DIR = os.path.dirname(os.path.dirname(HERE))
KEYWARD = os.path.join(ROOT_DIR, "target/release/keyward")
PORT = int(os.environ.get("BASE_PORT", "18300"))
DURATION = os.environ.get("DURATION", "10s")
# The server's --last-used-flush-seconds (its default, 5): usage and last-used writes run that
# often in the background during every phase.
FLUSH_SECONDS = os.environ.get("FLUSH_SECONDS", "5")
PG_ADMIN = os.environ.get("KEYWARD_SCALE_POSTGRES_ADMIN", "postgres://postgres@127.0.0.1:5432/postgres")
PG_DB = "keyward_scale"
PG_URL = os.environ.get("KEYWARD_SCALE_POSTGRES", f"postgres://postgres@127.0.0.1:5432/{PG_DB}")
THREADS = 2


def psql(sql):
    subprocess.run(["psql", PG_ADMIN, "-q", "-c", sql], check=True, stdout=subprocess.DEVNULL)


class Server:
    def __init__(self, store, work):
        self.store, self.work = store, work
        self.proc = None
        self.root = None

    def start(self):
        args = [KEYWARD, "serve", "--listen", f"127.0.0.1:{PORT}", "--data-dir",
                os.path.join(self.work, "data"), "--last-used-flush-seconds", FLUSH_SECONDS,
                "--unknown-keys-per-minute", "1000000"]
        if self.store == "postgres":
            args += ["--store", PG_URL]
        out = open(os.path.join(self.work, "server.out"), "a")
        env = dict(os.environ, KEYWARD_LOG="warn")
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        for _ in range(200):
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("scale: the server did not start")
        text = open(os.path.join(self.work, "server.out")).read()
        found = re.findall(r"kwroot_[A-Za-z0-9]+", text)
        if found and self.root is None:
            self.root = found[0]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def rss_bytes(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise SystemExit("scale: no VmRSS")

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
        headers = {"Authorization": f"Bearer {self.root}"} if self.root else {}
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body

    def timed_get(self, path, times=15):
        samples = []
        for _ in range(times):
            started = time.perf_counter()
            status, body = self.get(path)
            samples.append(time.perf_counter() - started)
            assert status == 200, (path, status, body[:200])
        return statistics.median(samples) * 1000

    def metric(self, name, labels=""):
        status, body = self.get("/metrics")
        assert status == 200
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and labels in line and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def wrk(script, env, duration):
    args = ["wrk", f"-t{THREADS}", "-c16", f"-d{duration}", "-s", script, "--latency",
            f"http://127.0.0.1:{PORT}/v1/keys/verify"]
    out = subprocess.run(args, env=dict(os.environ, **env), check=True, capture_output=True, text=True).stdout
    seconds = float(re.search(r"requests in ([\d.]+)s", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert non2xx is None, out

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"seconds": seconds, "requests": requests, "p50": pct(50), "p99": pct(99)}


def wrk_until(script, env, done, limit_s):
    """Runs wrk until `done()` holds (checked every 50 ms, at most `limit_s`), then interrupts
    it; returns the seconds it took. wrk's threads stop themselves when their share is done, but
    wrk itself waits out its duration."""
    args = ["wrk", f"-t{THREADS}", "-c16", f"-d{limit_s}s", "-s", script, f"http://127.0.0.1:{PORT}/v1/keys"
            + ("/verify" if "verify" in script else "")]
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not done() and proc.poll() is None and time.perf_counter() - started < limit_s:
        time.sleep(0.05)
    took = time.perf_counter() - started
    proc.send_signal(2)
    out = proc.communicate(timeout=30)[0]
    assert done(), "scale: wrk ended before its work was done:\n" + out
    assert "Non-2xx" not in out, out
    return took


def lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def keys_file(work):
    path = os.path.join(work, "keys")
    with open(path, "w") as out:
        for i in range(THREADS):
            with open(os.path.join(work, f"created.{i}")) as f:
                out.write(f.read())
    return path


def hit_ratio_during(server, run):
    hits0 = server.metric("keyward_cache_hits_total", 'cache="secrets"')
    miss0 = server.metric("keyward_cache_misses_total", 'cache="secrets"')
    result = run()
    hits = server.metric("keyward_cache_hits_total", 'cache="secrets"') - hits0
    misses = server.metric("keyward_cache_misses_total", 'cache="secrets"') - miss0
    result["hit_ratio"] = hits / (hits + misses) if hits + misses else float("nan")
    return result


def measure(store, n):
    work = tempfile.mkdtemp(prefix=f"keyward-scale-{store}-{n}-")
    if store == "postgres":
        psql(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        psql(f"CREATE DATABASE {PG_DB}")
    server = Server(store, work)
    server.start()
    row = {"store": store, "n": n}
    env = {"KEYWARD_SCALE_ROOT": server.root, "KEYWARD_SCALE_SHARE": str(n // THREADS),
           "KEYWARD_SCALE_OUT": os.path.join(work, "created")}
    share = n // THREADS
    created = [os.path.join(work, f"created.{i}") for i in range(THREADS)]
    took = wrk_until(os.path.join(HERE, "create.lua"), env,
                     lambda: all(lines(p) >= share for p in created), 3600)
    row["create_per_s"] = share * THREADS / took
    keys = keys_file(work)
    assert lines(keys) == share * THREADS, "scale: not as many keys as asked were created"

    verify_env = {"KEYWARD_SCALE_ROOT": server.root, "KEYWARD_SCALE_KEYS": keys,
                  "KEYWARD_SCALE_THREADS": str(THREADS)}
    before = server.rss_bytes()
    marks = [os.path.join(work, f"done.{i}") for i in range(THREADS)]
    wrk_until(os.path.join(HERE, "verify.lua"),
              dict(verify_env, KEYWARD_SCALE_MODE="all", KEYWARD_SCALE_DONE=os.path.join(work, "done")),
              lambda: all(os.path.exists(p) for p in marks), 3600)
    after = server.rss_bytes()
    cached = min(n, 100_000)
    row["rss_before_mib"] = before / 2**20
    row["rss_after_mib"] = after / 2**20
    row["bytes_per_cached_key"] = (after - before) / cached

    # The usage counted by the warm-up reaches the store on the next flush.
    flush0 = server.metric("keyward_store_operation_duration_seconds_sum", 'op="add_usage"')
    count0 = server.metric("keyward_store_operation_duration_seconds_count", 'op="add_usage"')
    for _ in range(int(FLUSH_SECONDS) * 40):
        time.sleep(0.05)
        if server.metric("keyward_store_operation_duration_seconds_count", 'op="add_usage"') > count0:
            break
    flush1 = server.metric("keyward_store_operation_duration_seconds_sum", 'op="add_usage"')
    count1 = server.metric("keyward_store_operation_duration_seconds_count", 'op="add_usage"')
    row["usage_flush_ms"] = (flush1 - flush0) / max(count1 - count0, 1) * 1000

    warm = hit_ratio_during(server, lambda: wrk(os.path.join(HERE, "verify.lua"),
                                                dict(verify_env, KEYWARD_SCALE_MODE="zipf"), DURATION))
    row["zipf"] = warm

    first = server.timed_get("/v1/keys?limit=100")
    cursor, walked = None, 0
    while walked < n // 2:
        query = "/v1/keys?limit=1000" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        status, body = server.get(query)
        assert status == 200, body[:200]
        page = json.loads(body)
        walked += len(page["keys"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    deep = server.timed_get(f"/v1/keys?limit=100&cursor={urllib.parse.quote(cursor)}") if cursor else float("nan")
    row["list_first_ms"], row["list_deep_ms"] = first, deep
    row["usage_ms"] = server.timed_get("/v1/usage")

    server.stop()
    server.start()
    cold = hit_ratio_during(server, lambda: wrk(os.path.join(HERE, "verify.lua"),
                                                dict(verify_env, KEYWARD_SCALE_MODE="uniform"), DURATION))
    row["cold"] = cold
    server.stop()
    if store == "postgres":
        psql(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
    subprocess.run(["rm", "-rf", work], check=True)
    return row


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    stores = os.environ.get("STORES", "sqlite postgres").split()
    rows = []
    for store in stores:
        for n in sizes:
            row = measure(store, n)
            print(json.dumps(row), flush=True)
            rows.append(row)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\nkeyward scale benchmark: {time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} CPUs ({cpu}), "
          f"wrk -t{THREADS} -c16 -d{DURATION}, loopback\n")
    print("| store | keys | create (keys/s) | RSS before → after warm-up (MiB) | bytes per cached key "
          "| verify Zipf p50 / p99 (ms), hit ratio, req/s | verify cold p50 / p99 (ms), hit ratio, req/s "
          "| list first / deep page (ms) | usage flush (ms) | GET /v1/usage (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        z, c = r["zipf"], r["cold"]
        print(f"| {r['store']} | {r['n']:,} | {r['create_per_s']:,.0f} | {r['rss_before_mib']:.0f} → {r['rss_after_mib']:.0f} "
              f"| {r['bytes_per_cached_key']:,.0f} | {z['p50']:.2f} / {z['p99']:.2f}, {z['hit_ratio']:.3f}, {z['requests'] / z['seconds']:,.0f} "
              f"| {c['p50']:.2f} / {c['p99']:.2f}, {c['hit_ratio']:.3f}, {c['requests'] / c['seconds']:,.0f} "
              f"| {r['list_first_ms']:.1f} / {r['list_deep_ms']:.1f} | {r['usage_flush_ms']:.1f} | {r['usage_ms']:.1f} |")


if __name__ == "__main__":
    main()
