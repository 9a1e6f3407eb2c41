#!/usr/bin/env python3
"""Replica timings of container services (root): cold start (start requested -> first passing
health check, from shoal_cold_start_seconds), `shoal scale` -> the new replica serving,
kill -9 of a replica -> out of the balancer, and the first request at zero replicas
(held while a replica starts), in host and isolated networking, medians of 5 rounds.

    benches/replicas.py "$(benches/shoal-path)"     # prints JSON and a markdown table

Uses loopback ports 18500-18554 and 19900-19954 and 10.216.0.0/24 inside its own veths.
"""
import json, os, shutil, signal, subprocess, sys, tempfile, threading, time, urllib.request, statistics
SHOAL = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else subprocess.run(
    [os.path.join(os.path.dirname(os.path.abspath(__file__)), "shoal-path")],
    capture_output=True, text=True, check=True).stdout.strip()
WORK = tempfile.mkdtemp(prefix="shoal-replica-bench-")
def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()
def status(admin):
    return json.loads(get(f"http://{admin}/api/v1/services/web")[1])
def run(network, scale, port, admin, state):
    cfg = f"""admin: {{ listen: "{admin}" }}
runtime: {{ state_dir: {state}, subnet: 10.216.0.0/24 }}
listeners:
  - {{ name: web, bind: "127.0.0.1:{port}", service: web }}
services:
  web:
    container:
      host: true
      network: {network}
      command: [/shoal, demo-backend]
      mounts: [{{ type: bind, source: {SHOAL}, target: /shoal, readonly: true }}]
      stop_timeout: 2s
    health: {{ http: {{ path: /healthz }}, interval: 1s, timeout: 500ms, unhealthy_threshold: 2 }}
    scale: {scale}
"""
    os.makedirs(state, exist_ok=True)
    open(f"{state}.yaml","w").write(cfg)
    p = subprocess.Popen([SHOAL, "up", "-c", f"{state}.yaml"], stderr=open(f"{state}.log","w"))
    for _ in range(500):
        try:
            if get(f"http://{admin}/readyz")[0] == 200: break
        except Exception: time.sleep(0.01)
    return p
def stop(p):
    p.send_signal(signal.SIGTERM); p.wait(30)
def metric(admin, name, labels=""):
    text = get(f"http://{admin}/metrics")[1]
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            return float(line.split()[-1])
def reaction(network, i):
    """A step from idle to 20 concurrent 300 ms requests (target 5 per replica: 4 replicas):
    seconds from the step until all 4 are ready."""
    admin, port = f"127.0.0.1:{19970+i}", 18570+i
    p = run(network, "{ min: 1, initial: 1, max: 4, target: 5, utilization: 1.0 }", port, admin, f"{WORK}/r-{network}-{i}")
    while status(admin)["replicas"]["ready"] != 1: time.sleep(0.005)
    stop_load = threading.Event()
    def client():
        while not stop_load.is_set():
            try: get(f"http://127.0.0.1:{port}/sleep?ms=300")
            except Exception: pass
    threads = [threading.Thread(target=client) for _ in range(20)]
    t = time.monotonic()
    for th in threads: th.start()
    while status(admin)["replicas"]["ready"] != 4: time.sleep(0.005)
    took = time.monotonic() - t
    stop_load.set()
    for th in threads: th.join()
    stop(p)
    return took

res = {}
for network in ["host", "isolated"]:
    cold, scale_t, eject_t, zero_t, react_t = [], [], [], [], []
    for i in range(5):
        admin, port = f"127.0.0.1:{19900+i}", 18500+i
        p = run(network, "{ min: 1, initial: 1, max: 4 }", port, admin, f"{WORK}/s-{network}-{i}")
        while status(admin)["replicas"]["ready"] != 1: time.sleep(0.005)
        cold.append(metric(admin, "shoal_cold_start_seconds_sum") / metric(admin, "shoal_cold_start_seconds_count"))
        t = time.monotonic()
        subprocess.run([SHOAL, "scale", "web", "2", "--admin", f"http://{admin}"], check=True, capture_output=True)
        while status(admin)["replicas"]["ready"] != 2: time.sleep(0.002)
        scale_t.append(time.monotonic() - t)
        ps = json.loads(subprocess.run([SHOAL, "ps", "--json", "-c", f"{WORK}/s-{network}-{i}.yaml"], capture_output=True, text=True).stdout)
        victim = ps["containers"][0]
        t = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        while True:
            eps = status(admin)["endpoints"]
            row = [e for e in eps if e["id"] == victim["id"]]
            if not row or row[0]["state"] != "ready": break
            time.sleep(0.001)
        eject_t.append(time.monotonic() - t)
        stop(p)
        # scale from zero: first request total time
        admin, port = f"127.0.0.1:{19950+i}", 18550+i
        p = run(network, "{ min: 0, initial: 0, max: 4 }", port, admin, f"{WORK}/z-{network}-{i}")
        t = time.monotonic()
        code, body = get(f"http://127.0.0.1:{port}/")
        zero_t.append(time.monotonic() - t)
        assert code == 200, body
        stop(p)
        react_t.append(reaction(network, i))
    med = lambda xs: round(statistics.median(xs) * 1000, 1)
    res[network] = {"cold_start_ms": med(cold), "scale_to_serving_ms": med(scale_t), "death_to_ejection_ms": med(eject_t), "first_request_at_zero_ms": med(zero_t), "step_to_all_ready_ms": med(react_t), "rounds": 5}
shutil.rmtree(WORK, ignore_errors=True)
print(json.dumps(res, indent=1))
print()
print("| networking | cold start | `shoal scale` → serving | kill -9 → ejected | first request at zero | step load → 4 replicas ready |")
print("|---|---:|---:|---:|---:|---:|")
for network, r in res.items():
    print(f"| {network} | {r['cold_start_ms']} ms | {r['scale_to_serving_ms']} ms | {r['death_to_ejection_ms']} ms | {r['first_request_at_zero_ms']} ms | {r['step_to_all_ready_ms']} ms |")
