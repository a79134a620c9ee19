#!/usr/bin/env bash
# spk-plan's MoE additions (issue 9): --help lists --no-ep, --compare-published and the MoE presets;
# a MoE preset's table shows its parameter counts and the expert-parallel layouts (tp with whole
# experts per rank) ranked with the others, the first row chosen, hidden by --no-ep; a dense
# preset gets none. The
# gpt-oss-120b per-batch comparison has one row per batch 1..128 whose winner, ratio and verdict
# follow from the predicted figures in that row, and every claim line follows from the rows;
# under link-rate all-reduces (TP wins everywhere) the same claims come out DISAGREES, so the
# verdicts are computed, not printed as constants.
# Usage: spk_plan.sh BUILD_DIR SOURCE_DIR
set -u
B=${1:?build dir}
PLAN="$B/examples/spk-plan"
[ -x "$PLAN" ] || { echo "SKIP: $PLAN not built"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 not installed"; exit 77; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0
check() { # description, then a command that must succeed
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}

# ---- --help ----
"$PLAN" --help >"$TMP/help" 2>&1
check "--help exits 0" test $? -eq 0
for w in --no-ep --compare-published --preset gpt-oss-20b gpt-oss-120b qwen3-30b-a3b; do
    check "--help lists $w" grep -q -- "$w" "$TMP/help"
done
"$PLAN" --preset qwen3-30b-a3 >"$TMP/out" 2>"$TMP/err"
rc=$?
check "an unknown preset fails (exit 1) naming the known ones" \
    bash -c "[ $rc -eq 1 ] && grep -q \"unknown shape preset 'qwen3-30b-a3'\" '$TMP/err' && grep -q qwen3-30b-a3b '$TMP/err'"

# ---- MoE tables: EP rows (executable; the best row, EP or not, is chosen) ----
table_ok() { # preset, expect_ep (1/0), extra args...
    local preset=$1 want_ep=$2
    shift 2
    "$PLAN" --preset "$preset" --dgx-spark --batch 1,64 "$@" >"$TMP/t" 2>"$TMP/e" || { cat "$TMP/e"; return 1; }
    python3 - "$TMP/t" "$want_ep" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
want_ep = sys.argv[2] == "1"
assert re.search(r"^parameters: [\d.]+ B total, [\d.]+ B active per token", text, re.M), "no parameters line"
blocks = re.split(r"\n(?=batch \d+, )", text)[1:]
assert len(blocks) == 2, f"{len(blocks)} batch blocks"
for b in blocks:
    rows = [l for l in b.splitlines() if re.match(r"\s+pp\d+ (tp|ep)\d+\s", l)]
    chosen = [l for l in rows if l.endswith("<- chosen")]
    ep = [l for l in rows if re.match(r"\s+pp\d+ ep\d+", l)]
    assert len(chosen) == 1 and chosen[0] == rows[0], f"{len(chosen)} chosen rows, not the first"
    assert "modelled" not in b, "every layout is executable now"
    assert bool(ep) == want_ep, f"EP rows {len(ep)}, wanted {want_ep}"
    # best first: tok/s descending
    tok = [float(l.split()[2]) for l in rows]
    assert tok == sorted(tok, reverse=True), tok
PY
}
for p in gpt-oss-20b gpt-oss-120b qwen3-30b-a3b; do
    check "$p: EP rows ranked with the others, the best one chosen" table_ok "$p" 1
    check "$p --no-ep: no EP rows" table_ok "$p" 0 --no-ep
done
check "llama-3.1-8b (dense): no EP rows" table_ok llama-3.1-8b 0
check "qwen3-30b-a3b: 30.5 B total parameters, 128 experts top-8" \
    bash -c "'$PLAN' --preset qwen3-30b-a3b --batch 1 | grep -q '^parameters: 30.53 B total' &&
             '$PLAN' --preset qwen3-30b-a3b --batch 1 | grep -q '128 experts top-8 x ff 768'"

# ---- --compare-published: rows and claims computed from the predictions ----
compare_ok() { # expect "agrees"/"DISAGREES" for the PP-from-64 claim, then extra args
    local want64=$1
    shift
    "$PLAN" --compare-published "$@" >"$TMP/c" 2>"$TMP/e" || { cat "$TMP/e"; return 1; }
    python3 - "$TMP/c" "$want64" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
want64 = sys.argv[2]
assert "gpt-oss-120b on two Sparks, balanced 1024/1024" in text
rows = {}
for l in text.splitlines():
    m = re.match(r"\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+) \| (PP|TP)\s+([\d.]+)x \| (PP|TP)[^|]*\| (agrees|DISAGREES)$", l)
    if m:
        b = int(m[1])
        pp, tp, ep, win, ratio, study, verdict = float(m[2]), float(m[3]), float(m[4]), m[5], float(m[6]), m[7], m[8]
        assert win == ("PP" if pp > tp else "TP"), l
        assert abs(ratio - max(pp, tp) / min(pp, tp)) < 0.006, l
        assert verdict == ("agrees" if win == study else "DISAGREES"), l
        assert study == ("TP" if b == 1 else "PP"), l   # what BENCHMARKS.md records
        rows[b] = win
assert sorted(rows) == [1, 2, 4, 8, 16, 32, 64, 128], sorted(rows)
assert "PP 2.20x" in [l for l in text.splitlines() if re.match(r"\s*128\s", l)][0]
def claim(name):
    m = re.search(r'^claim "' + re.escape(name) + r'"[^\n]*?(agrees|DISAGREES)', text, re.M)
    assert m, f"no claim line for {name}"
    return m[1]
ok = lambda c: "agrees" if c else "DISAGREES"
assert claim("TP ahead at batch 1") == ok(rows[1] == "TP")
assert claim("PP ahead from batch 64") == ok(rows[64] == "PP" and rows[128] == "PP")
assert claim("TP won only at batch 1") == ok(rows[1] == "TP" and all(w == "PP" for b, w in rows.items() if b > 1))
assert claim("PP 2.20x TP at batch 128") == ok(rows[128] == "PP")
tp = ",".join(str(b) for b in sorted(rows) if rows[b] == "TP")
pp = ",".join(str(b) for b in sorted(rows) if rows[b] == "PP")
assert f"predicted: TP ahead at batch {{{tp}}}, PP ahead at batch {{{pp}}}" in text
assert claim("PP ahead from batch 64") == want64, f"PP-from-64 claim {claim('PP ahead from batch 64')}, wanted {want64}"
# the published figures are the ones BENCHMARKS.md section 1 records
for fig in ["554.69", "~252.00", "310.63", "164.99", "504.88", "441.63", "494.37", "976.77"]:
    assert fig in text, fig
PY
}
check "--compare-published --dgx-spark: rows and claims follow from the predictions; PP from 64 agrees" \
    compare_ok agrees --dgx-spark
check "with link-rate all-reduces the same computation says PP from 64 DISAGREES" \
    compare_ok DISAGREES --dgx-spark --allreduce-gbps 25

exit $fail
