"""Serving throughput: `iceburg-mlx serve` (one base, four side-by-side adapters, batched decoding)
against one `mlx_lm.server` per role, on SmolLM2, in one run.

    nice python benchmarks/serve.py [--model smollm2-135m-instruct] [--n 1,4,16] [--max-tokens 64]

For each N, waves of N concurrent chat requests (roles round-robin, greedy, prompts from
data/<role>/train.jsonl) go to our server and to the four mlx-lm servers (a request for role r goes
to r's server). Reported per system and N: generated tokens / wall time of the waves (aggregate
tok/s, prefill included), decode tok/s (tokens after the first, over the window from a wave's first
first token to its last token), p50/p95 request latency, and each server process's peak RSS (VmHWM). "single base" is our
server with no adapters: after one request (one base model in a server process), and after a wave of
the largest N (the same load, so the same KV caches).

Set-up: adapters come from the registry (--adapters-dir, default adapters/) when all four roles
are there (the shipped role recipes train r16/r16/r32/r64), else random ones are made (r8 on q/k/v/o/gate/up/down, lora_b ~ N(0, 0.02)); mlx-lm needs a Hugging Face
directory, exported once with `iceburg-mlx fuse --dequantize` (float32, the form our loader
computes in). `--mlx-lm-setup ours` (default) starts mlx-lm's servers with our Linux set-up
(OpenBLAS preload, malloc settings) so both sides use the same BLAS; `stock` runs
`python -m mlx_lm.server` as installed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from peers import require  # noqa: E402  (benchmarks/peers.py)

ROLES = ("surveyor", "dissident", "synthesist", "oracle")
HERE = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {url}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def chat(url: str, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed greedy chat request: start, first-token and end times, completion tokens."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                       "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, chunks, usage = None, 0, None
    with urllib.request.urlopen(req, timeout=900) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            obj = json.loads(line[5:])
            usage = obj.get("usage") or usage
            if any((c.get("delta") or {}).get("content") for c in obj.get("choices") or []):
                chunks += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    tokens = int(usage["completion_tokens"]) if usage else chunks
    return {"start": t0, "first": first or end, "end": end, "tokens": tokens}


def run_waves(target, prompts: dict[str, list[str]], n: int, waves: int, max_tokens: int) -> dict:
    """`target(role) -> (url, model)`; `waves` rounds of `n` concurrent requests.

    tok_s: completion tokens / wall time (prefill included). decode_tok_s: tokens after each
    request's first, over each wave's window from its first first-token to its last token.
    """
    reqs, decode_time = [], 0.0
    t0 = time.perf_counter()
    k = 0
    for _ in range(waves):
        results: list = [None] * n

        def one(i, role, prompt, out=results):
            url, model = target(role)
            out[i] = chat(url, model, prompt, max_tokens)

        threads = []
        for i in range(n):
            role = ROLES[k % len(ROLES)]
            prompt = prompts[role][(k // len(ROLES)) % len(prompts[role])]
            threads.append(threading.Thread(target=one, args=(i, role, prompt)))
            k += 1
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        decode_time += max(r["end"] for r in results) - min(r["first"] for r in results)
        reqs += results
    wall = time.perf_counter() - t0
    lat = [r["end"] - r["start"] for r in reqs]
    ttft = [r["first"] - r["start"] for r in reqs]
    toks = sum(r["tokens"] for r in reqs)
    q = statistics.quantiles(lat, n=20, method="inclusive") if len(lat) > 1 else [lat[0]] * 19
    return {"n": n, "requests": len(lat), "tokens": toks, "wall_s": wall, "tok_s": toks / wall,
            "decode_tok_s": sum(r["tokens"] - 1 for r in reqs) / max(decode_time, 1e-9),
            "p50_s": statistics.median(lat), "p95_s": q[18], "ttft_p50_s": statistics.median(ttft)}


def load_prompts(data: Path) -> dict[str, list[str]]:
    sys.path.insert(0, str(HERE))
    from iceburg_mlx.serve.router import user_turns

    out = {}
    for role in ROLES:
        f = data / role / "train.jsonl"
        turns = [t for t in (user_turns(f) if f.is_file() else []) if len(t) < 400][:8]
        out[role] = turns or [f"As the {role}, explain why the sky is blue."]
    return out


def ensure_adapters(model: str | None, adapters_dir: Path | None, work: Path) -> Path:
    from iceburg_mlx.adapters import registry

    if adapters_dir is not None and all(r in registry.roles(adapters_dir) for r in ROLES):
        return adapters_dir
    root = work / "adapters"
    if all(r in registry.roles(root) for r in ROLES):
        return root
    import mlx.core as mx

    from iceburg_mlx.models import load_model
    from iceburg_mlx.adapters.layers import adapter_layers, apply_lora
    from iceburg_mlx.adapters.files import save_adapters

    for i, role in enumerate(ROLES):
        m = load_model(model)
        mx.random.seed(100 + i)
        apply_lora(m.model, {"rank": 8, "alpha": 16.0, "layers": -1, "target_modules": (
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")})
        for _, layer in adapter_layers(m.model):
            layer.lora_b = 0.02 * mx.random.normal(layer.lora_b.shape)
        registry.publish(save_adapters(m.model, work / f"src-{role}"), role, root, move=True)
        del m
    return root


def main() -> None:
    require("mlx_lm")  # before any work: a missing peer is named at once
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapters-dir", type=Path, default=HERE / "adapters",
                    help="Registry to take the four role adapters from (default: the project's; "
                         "random r8 adapters are made when a role is missing).")
    ap.add_argument("--work", type=Path, default=Path("/tmp/iceburg-serve-bench"))
    ap.add_argument("--n", default="1,4,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--mlx-lm-setup", choices=("ours", "stock"), default="ours")
    ap.add_argument("--skip-mlx-lm", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)

    import iceburg_mlx  # noqa: F401  (set-up before mlx.core)
    from iceburg_mlx import _platform

    adir = ensure_adapters(args.model, args.adapters_dir, args.work)
    hf = args.work / "hf"
    if not args.skip_mlx_lm and not (hf / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "iceburg_mlx.cli", "fuse", "--model", args.model, "--out", str(hf),
                        "--dequantize"], check=True, stdout=subprocess.DEVNULL)
    prompts = load_prompts(HERE / "data")
    env = {**os.environ, **(_platform.malloc_env() or {}), "TOKENIZERS_PARALLELISM": "false"}
    results: dict = {"max_tokens": args.max_tokens, "ours": [], "mlx_lm": []}

    def ours_server(adapters_dir: Path, roles: list[str] | None) -> tuple[subprocess.Popen, str]:
        port = free_port()
        cmd = [sys.executable, "-m", "iceburg_mlx.cli", "serve", "--model", args.model, "--adapters-dir",
               str(adapters_dir), "--port", str(port), "--no-router", "--max-batch", "32"]
        if roles:
            cmd += ["--adapters", ",".join(roles)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        wait_up(url, proc)
        return proc, url

    # our server: one base + four adapters
    proc, url = ours_server(adir, list(ROLES))
    try:
        run_waves(lambda r: (url, f"iceburg-{r}"), prompts, 4, 1, 8)   # warm-up
        for n in ns:
            res = run_waves(lambda r: (url, f"iceburg-{r}"), prompts, n, max(1, 16 // n), args.max_tokens)
            results["ours"].append(res)
            print(f"ours      N={n:2d}: {_line(res)}", flush=True)
        results["ours_peak_mib"] = peak_rss_mib(proc.pid)
    finally:
        stop(proc)
    # the same server with no adapters: the memory of a single base after one request, and under
    # the same load as the last N (its KV caches are what any server needs for N requests at once)
    empty = args.work / "no-adapters"
    empty.mkdir(exist_ok=True)
    proc, url = ours_server(empty, None)
    try:
        with urllib.request.urlopen(url + "/v1/models") as r:
            base_id = json.loads(r.read())["data"][0]["id"]
        run_waves(lambda r: (url, base_id), prompts, 1, 1, args.max_tokens)
        results["single_base_mib"] = peak_rss_mib(proc.pid)
        run_waves(lambda r: (url, base_id), prompts, ns[-1], 1, args.max_tokens)
        results["single_base_loaded_mib"] = peak_rss_mib(proc.pid)
    finally:
        stop(proc)

    if not args.skip_mlx_lm:
        from iceburg_mlx.adapters import registry

        procs, urls = {}, {}
        if args.mlx_lm_setup == "ours":
            launcher = [sys.executable, "-c", "import sys, iceburg_mlx; from mlx_lm.server import main; "
                        "sys.argv[0] = 'mlx_lm.server'; main()"]
            mlx_env = env
        else:
            launcher = [sys.executable, "-m", "mlx_lm.server"]
            mlx_env = {**os.environ, "ICEBURG_MLX_NO_TUNE": "1"}
        try:
            for role in ROLES:
                port = free_port()
                procs[role] = subprocess.Popen(
                    [*launcher, "--model", str(hf), "--adapter-path", str(registry.get(role, adir).path),
                     "--port", str(port), "--host", "127.0.0.1", "--log-level", "WARNING"],
                    env=mlx_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                urls[role] = f"http://127.0.0.1:{port}"
                wait_up(urls[role], procs[role])
            run_waves(lambda r: (urls[r], "default_model"), prompts, 4, 1, 8)   # warm-up
            for n in ns:
                res = run_waves(lambda r: (urls[r], "default_model"), prompts, n, max(1, 16 // n), args.max_tokens)
                results["mlx_lm"].append(res)
                print(f"mlx-lm x4 N={n:2d}: {_line(res)}", flush=True)
            results["mlx_lm_peak_mib"] = {r: peak_rss_mib(p.pid) for r, p in procs.items()}
        finally:
            for p in procs.values():
                stop(p)
    report(results, args.mlx_lm_setup)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _line(r: dict) -> str:
    return (f"decode {r['decode_tok_s']:6.1f} tok/s, overall {r['tok_s']:6.1f} tok/s, latency p50 {r['p50_s']:.2f}s "
            f"p95 {r['p95_s']:.2f}s, first token p50 {r['ttft_p50_s']:.2f}s ({r['tokens']} tokens)")


def report(res: dict, setup: str) -> None:
    print(f"\nmax_tokens {res['max_tokens']}, greedy, roles round-robin; mlx-lm set-up: {setup}")
    print(f"{'N':>3} | {'ours decode':>11} {'overall':>7} {'p50 s':>6} {'p95 s':>6} | "
          f"{'mlx-lm decode':>13} {'overall':>7} {'p50 s':>6} {'p95 s':>6} | decode ratio")
    theirs = {r["n"]: r for r in res["mlx_lm"]}
    for o in res["ours"]:
        t = theirs.get(o["n"])
        tail = (f"{t['decode_tok_s']:13.1f} {t['tok_s']:7.1f} {t['p50_s']:6.2f} {t['p95_s']:6.2f} | "
                f"{o['decode_tok_s'] / t['decode_tok_s']:.2f}x" if t else "-")
        print(f"{o['n']:>3} | {o['decode_tok_s']:11.1f} {o['tok_s']:7.1f} {o['p50_s']:6.2f} {o['p95_s']:6.2f} | {tail}")
    base, loaded, n = res["single_base_mib"], res["single_base_loaded_mib"], res["ours"][-1]["n"]
    print(f"peak RSS: ours (4 adapters, after N={n}) {res['ours_peak_mib']:.0f} MiB = "
          f"{res['ours_peak_mib'] / loaded:.2f}x a single base under the same load ({loaded:.0f} MiB), "
          f"{res['ours_peak_mib'] / base:.2f}x a single base after one request ({base:.0f} MiB)")
    if res.get("mlx_lm_peak_mib"):
        each = res["mlx_lm_peak_mib"]
        print(f"          mlx-lm: {' + '.join(f'{v:.0f}' for v in each.values())} = {sum(each.values()):.0f} MiB "
              f"for four servers")


if __name__ == "__main__":
    main()
