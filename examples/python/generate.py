#!/usr/bin/env python3
"""Stream a completion from a GGUF model with the sparkinfer Python bindings.

    SPARKINFER_LIB=build/libsparkinfer.so.0 PYTHONPATH=bindings/python \\
        python3 examples/python/generate.py --chat --prompt "Give me three tips for sleeping well."

With --pp N (N > 1) the script starts N-1 local spk-worker processes on loopback with a fresh
random cluster key and runs a pipeline-parallel cluster on this machine; the workers leave when
the driver closes the cluster (and are killed if the script dies first).
"""
import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time

import sparkinfer

DEFAULT_MODEL = os.path.join(os.environ.get("SPK_CACHE", os.path.expanduser("~/.cache/sparkinfer")),
                             "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def find_worker(explicit):
    cands = [explicit, os.environ.get("SPK_WORKER")]
    lib = os.environ.get("SPARKINFER_LIB")
    if lib:
        cands.append(os.path.join(os.path.dirname(os.path.abspath(lib)), "examples", "spk-worker"))
    cands.append(shutil.which("spk-worker"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    sys.exit("generate.py: --pp needs spk-worker: pass --worker PATH or set SPK_WORKER")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.environ.get("SPK_TEST_MODEL") or DEFAULT_MODEL, help="GGUF file")
    ap.add_argument("--prompt", default="The three most useful things to know about Python are")
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    ap.add_argument("--system", default=None, help="system message (with --chat)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="compute threads per rank (0: all CPUs)")
    ap.add_argument("--pp", type=int, default=1, help="pipeline stages, one local process each")
    ap.add_argument("--worker", default=None, help="spk-worker executable (for --pp)")
    a = ap.parse_args()
    if a.pp < 1 or a.max_tokens < 1:
        ap.error("--pp and --max-tokens must be at least 1")

    workers = []
    try:
        if a.pp > 1:
            exe = find_worker(a.worker)
            port, key = free_port(), secrets.token_hex(32)
            env = dict(os.environ, SPK_CLUSTER_KEY=key)
            threads = str(a.threads or max(1, (os.cpu_count() or 1) // a.pp))
            for r in range(1, a.pp):
                workers.append(subprocess.Popen([exe, "--coordinator", "127.0.0.1:%d" % port, "--rank", str(r),
                                                 "--world", str(a.pp), "--threads", threads], env=env))
            cluster = sparkinfer.Cluster(rank=0, world_size=a.pp, coordinator="127.0.0.1:%d" % port,
                                         cluster_key=key, n_threads=int(threads))
        else:
            cluster = sparkinfer.Cluster(n_threads=a.threads or None)
        with cluster, sparkinfer.Model(cluster, a.model, pp=a.pp) as model:
            prompt = a.prompt
            if a.chat:
                msgs = ([{"role": "system", "content": a.system}] if a.system else []) + \
                       [{"role": "user", "content": a.prompt}]
                prompt = model.chat(msgs)
            else:
                sys.stdout.write(prompt)
            t0 = time.monotonic()
            t_first = None
            gen = model.generate(prompt, max_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k,
                                 top_p=a.top_p, seed=a.seed)
            with gen:
                for piece in gen:
                    if t_first is None:
                        t_first = time.monotonic()
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            t1 = time.monotonic()
            sys.stdout.write("\n")
            n = len(gen.tokens)
            rate = (n - 1) / (t1 - t_first) if n > 1 and t_first and t1 > t_first else float("nan")
            print("[%d tokens, finish %s; first token %.0f ms, then %.1f tok/s; %s, pp %d]"
                  % (n, gen.finish.name.lower(), ((t_first or t1) - t0) * 1000, rate, model.info.name, a.pp),
                  file=sys.stderr)
    except sparkinfer.SparkinferError as e:
        sys.exit("generate.py: %s" % e)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        for w in workers:
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()


if __name__ == "__main__":
    main()
