#!/usr/bin/env bash
# spk-bench end to end on the tiny synthetic preset: the 3 scenarios x batch 1,4 x layouts
# 1, pp2, tp2 (18 runs, local spk-worker ranks over TCP) finish; the JSON parses and holds 18
# successful runs with positive output tok/s, TTFT and TPOT and the parameters asked for; the SVG
# chart is well-formed XML with one line per layout in each of the 3 panels. Also the CLI: bad
# options are usage errors (exit 2); a MoE preset (gpt-oss-tiny: sinks, window, MoE) runs one rank
# and pp2.
# Usage: spk_bench.sh BUILD_DIR SOURCE_DIR
set -u
B=${1:?build dir}
BENCH="$B/examples/spk-bench"
[ -x "$BENCH" ] || { echo "SKIP: $BENCH not built"; exit 77; }
[ -x "$B/examples/spk-worker" ] || { echo "SKIP: spk-worker not built"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 not installed"; exit 77; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export SPK_CACHE="$TMP/cache" # the synthetic file is written here, not in the user's cache
fail=0
check() { # description, then a command that must succeed
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}

# ---- usage errors: exit 2 with a message naming the option ----
usage_case() { # expected-substring args...
    local want=$1
    shift
    "$BENCH" "$@" >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    [ $rc -eq 2 ] && grep -q -- "$want" "$TMP/err" ||
        { echo "  rc=$rc for '$*':"; cat "$TMP/err"; return 1; }
}
check "--batch 0 is a usage error" usage_case "--batch" --preset tiny --batch 0
check "--batch with a non-number" usage_case "'x'" --preset tiny --batch 1,x
check "unknown layout" usage_case "--layouts" --preset tiny --layouts pp2,ring3
check "unknown scenario" usage_case "unknown scenario" --preset tiny --scenarios balanced,chat
check "--scale 0" usage_case "--scale" --preset tiny --scale 0
check "unknown option" usage_case "unknown option" --preset tiny --fast 1
check "missing value" usage_case "needs a value" --preset tiny --threads
check "--model with --preset" usage_case "not both" --model x.gguf --preset tiny
check "unknown preset" usage_case "unknown synthetic preset" --preset tiny-9000
moe_runs() {
    "$BENCH" --preset gpt-oss-tiny --scale 0.03 --batch 1 --layouts 1,pp2 --scenarios balanced --threads 2 \
        >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err"; return 1; }
    cat "$TMP/out"
    [ "$(grep -cE '^balanced +31 +31 +1 +(1|pp2) +[0-9.]+ ' "$TMP/out")" -eq 2 ] && [ -s "$SPK_CACHE/synth/gpt-oss-tiny-0.gguf" ]
}
check "the gpt-oss-tiny MoE preset runs (one rank and pp2)" moe_runs

# ---- the tiny grid ----
start=$(date +%s)
"$BENCH" --preset tiny --scale 0.03 --batch 1,4 --layouts 1,pp2,tp2 --threads 2 \
    --json "$TMP/out.json" --chart "$TMP/out.svg" >"$TMP/table" 2>"$TMP/progress"
rc=$?
secs=$(($(date +%s) - start))
cat "$TMP/table"
echo "grid took ${secs}s"
check "the tiny grid exits 0" [ $rc -eq 0 ]
[ $rc -eq 0 ] || cat "$TMP/progress"
check "the preset file was written to \$SPK_CACHE/synth" [ -s "$SPK_CACHE/synth/tiny-0.gguf" ]
check "the table has 18 rows with figures" [ "$(grep -cE '^(balanced|prefill-heavy|decode-heavy) +[0-9]+ +[0-9]+ +[14] +(1|pp2|tp2) +[0-9.]+ ' "$TMP/table")" -eq 18 ]
check "a progress line per finished run on stderr" [ "$(grep -c '^\[run [0-9]*/18\] .*: [0-9.]* output tok/s' "$TMP/progress")" -eq 18 ]

json_ok() {
    python3 - "$TMP/out.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
runs = d["runs"]
assert len(runs) == 18, len(runs)
want = {(s, b, l) for s in ("balanced", "prefill-heavy", "decode-heavy") for b in (1, 4) for l in ("1", "pp2", "tp2")}
got = {(r["scenario"], r["batch"], r["layout"]) for r in runs}
assert got == want, got ^ want
lens = {"balanced": (31, 31), "prefill-heavy": (61, 4), "decode-heavy": (4, 61)}
for r in runs:
    assert r["status"] == "ok", r
    assert r["output_tok_s"] > 0 and r["ttft_ms"] > 0 and r["tpot_ms"] > 0, r
    assert (r["isl"], r["osl"]) == lens[r["scenario"]], r
    assert r["output_tokens"] == r["batch"] * r["osl"], r
    assert (r["pp"], r["tp"], r["world"]) == {"1": (1, 1, 1), "pp2": (2, 1, 2), "tp2": (1, 2, 2)}[r["layout"]], r
    assert r["threads_per_rank"] == (2 if r["layout"] == "1" else 1), r
    # tok/s is output tokens over the wall time of the run
    assert abs(r["output_tok_s"] - r["output_tokens"] / r["wall_s"]) < 1e-3 * r["output_tok_s"], r
p = d["params"]
assert p["scale"] == 0.03 and p["batches"] == [1, 4] and p["layouts"] == ["1", "pp2", "tp2"] and p["threads"] == 2, p
assert d["model"]["preset"] == "tiny" and d["model"]["n_layers"] == 4, d["model"]
m = d["machine"]
assert m["cpu"] and "version=" in m["build_info"] and m["cpus_online"] >= 1, m
assert d["date"].endswith("Z"), d["date"]
EOF
}
check "the JSON parses: 18 runs, positive tok/s, TTFT, TPOT, right lengths and layouts" json_ok

svg_ok() {
    python3 - "$TMP/out.svg" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ns = "{http://www.w3.org/2000/svg}"
assert root.tag == ns + "svg", root.tag
lines = root.findall(".//" + ns + "polyline")
assert len(lines) == 3 * 3, len(lines)        # 3 panels x 3 layouts, 2 points each
for l in lines:
    assert len(l.get("points").split()) == 2, l.get("points")
text = " ".join(t.text or "" for t in root.iter(ns + "text"))
for want in ("balanced", "prefill-heavy", "decode-heavy", "pp2", "tp2", "output tok/s", "batch size"):
    assert want in text, want
EOF
}
check "the SVG is well-formed XML with 3 panels x 3 lines, labels and a legend" svg_ok

# ---- a "real" cluster: a worker started by hand, spk-bench as rank 0 with --coordinator ----
check "--coordinator without --world is a usage error" usage_case "go together" --preset tiny --coordinator 127.0.0.1:1
check "a layout of another size than --world is a usage error" usage_case "does not use 1 rank" \
    --preset tiny --coordinator 127.0.0.1:1 --world 2 --layouts 1,pp2tp2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SPK_CLUSTER_KEY=spk-bench-test-key
"$B/examples/spk-worker" --coordinator "127.0.0.1:$port" --rank 1 --world 2 --threads 1 >"$TMP/worker.log" 2>&1 &
wpid=$!
"$BENCH" --preset tiny --scale 0.02 --batch 2 --scenarios balanced --layouts 1,pp2,tp2,auto --threads 1 \
    --coordinator "127.0.0.1:$port" --world 2 --transport tcp --json "$TMP/remote.json" >"$TMP/rtable" 2>"$TMP/rerr"
rc=$?
cat "$TMP/rtable"
check "the grid over a hand-started worker exits 0" [ $rc -eq 0 ]
[ $rc -eq 0 ] || cat "$TMP/rerr" "$TMP/worker.log"
worker_done() { # the worker served all three multi-rank layouts and left when the driver closed
    for _ in $(seq 50); do kill -0 $wpid 2>/dev/null || break; sleep 0.1; done
    ! kill -0 $wpid 2>/dev/null && wait $wpid
}
check "the worker served every multi-rank layout and exited 0 when spk-bench closed" worker_done
kill $wpid 2>/dev/null
remote_ok() {
    python3 - "$TMP/remote.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["params"]["cluster"] == {"coordinator": d["params"]["cluster"]["coordinator"], "world": 2}, d["params"]
assert d["params"]["transport"] == "tcp", d["params"]
runs = {r["layout"]: r for r in d["runs"]}
assert sorted(runs) == ["1", "auto", "pp2", "tp2"], runs.keys()
for r in runs.values():
    assert r["status"] == "ok" and r["output_tok_s"] > 0 and r["output_tokens"] == 2 * 20, r
assert (runs["pp2"]["pp"], runs["pp2"]["tp"]) == (2, 1) and (runs["tp2"]["pp"], runs["tp2"]["tp"]) == (1, 2)
assert runs["auto"]["pp"] * runs["auto"]["tp"] == 2, runs["auto"]   # the planner's pick, read back
EOF
}
check "the remote grid's JSON: 4 runs ok, the cluster recorded, auto's pick read back" remote_ok

[ $fail -eq 0 ] && echo "PASS" || echo "FAILED"
exit $fail
