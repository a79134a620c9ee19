#!/usr/bin/env bash
# The tiny Hugging Face checkpoints of tests/ref/hf_tiny.py (llama F32, qwen3 F32, llama3-rope +
# head_dim-apart BF16 in two shards, qwen3moe F32, gpt-oss F32 and MXFP4) converted by llama.cpp's
# convert_hf_to_gguf.py (F32; BF16 for llama3-hd and gptoss-mxfp4, whose experts stay MXFP4), then test_hf's same_logits_as_converted_gguf: loading the directory and loading
# the converted file give bit-identical logits and the same greedy tokens.
# Needs the llama.cpp sources (make refsrc) and the converter's torch: the virtualenv
# $SPK_CACHE/hfref-venv of tests/ref/hf-reference.sh; skips (77) when either is absent.
# This is the full check where the venv exists. The check `make test` always runs, without torch,
# is test_hf's same_keys_and_tensors_as_converter: the converter's keys (types, value digests) and
# tensors (names, types, shapes, sha256) for these six directories, recorded with the same
# settings in tests/data/ref_hf_twin.json by tests/ref/hf-twin-reference.sh, against what
# spk_gguf_open(dir) builds; the forward pass reads nothing else, so that proves the same logits.
# Usage: hf_twin.sh BUILD_DIR SOURCE_DIR
set -u
B=${1:?build dir}
S=${2:?source dir}
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
PY=$CACHE/hfref-venv/bin/python
SRC=$CACHE/llamacpp/src/llama_cpp_python-0.3.36/vendor/llama.cpp
[ -x "$B/tests/test_hf" ] || { echo "SKIP: $B/tests/test_hf not built"; exit 77; }
[ -f "$CACHE/hfref-venv/.spk-ready" ] || { echo "SKIP: no $CACHE/hfref-venv (torch for the converter: tests/ref/hf-reference.sh makes it)"; exit 77; }
[ -f "$SRC/convert_hf_to_gguf.py" ] || { echo "SKIP: no llama.cpp sources (make refsrc)"; exit 77; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
TWINS="llama-f32 qwen3-f32 llama3-hd qwen3moe-f32 gptoss-f32 gptoss-mxfp4"
python3 "$S/tests/ref/hf_tiny.py" "$TMP" $TWINS >/dev/null || { echo "FAIL: hf_tiny.py"; exit 1; }
for v in $TWINS; do
    t=f32
    case $v in llama3-hd|gptoss-mxfp4) t=bf16 ;; esac
    # the tiny byte-level vocabulary has no pre-tokenizer hash llama.cpp knows: name it (the
    # vocabulary is not what this compares)
    "$PY" -c "
import sys; sys.path.insert(0, '$SRC/gguf-py'); sys.path.insert(0, '$SRC')
import convert_hf_to_gguf as c, conversion.base as cb
cb.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'
sys.argv = ['convert_hf_to_gguf.py', '$TMP/$v', '--outtype', '$t', '--outfile', '$TMP/$v.gguf']
c.main()" >"$TMP/conv-$v.log" 2>&1 || { tail -20 "$TMP/conv-$v.log"; echo "FAIL: converter on $v"; exit 1; }
done
# transformers' own save_pretrained of the same models (F32 and BF16, sharded small so that
# there is an index): test_hf's save_pretrained_dirs_load compares them with hf_tiny.py's
python3 "$S/tests/ref/hf_tiny.py" "$TMP" llama-bf16 >/dev/null || { echo "FAIL: hf_tiny.py"; exit 1; }
"$PY" - "$TMP" >"$TMP/save.log" 2>&1 <<'PY' || { tail -20 "$TMP/save.log"; echo "FAIL: save_pretrained"; exit 1; }
import os, shutil, sys, torch
from transformers import AutoModelForCausalLM
t = sys.argv[1]
for v, dt, out in [('llama-f32', torch.float32, 'llama-f32-saved'), ('qwen3-f32', torch.float32, 'qwen3-f32-saved'),
                   ('llama3-hd', torch.bfloat16, 'llama3-hd-saved'), ('llama-f32', torch.bfloat16, 'llama-bf16-saved'),
                   ('qwen3moe-f32', torch.float32, 'qwen3moe-f32-saved'), ('gptoss-f32', torch.float32, 'gptoss-f32-saved')]:
    m = AutoModelForCausalLM.from_pretrained(os.path.join(t, v), dtype=torch.float32)
    m.to(dt).save_pretrained(os.path.join(t, out), max_shard_size='150KB')
    for f in ('tokenizer.json', 'tokenizer_config.json'):
        shutil.copy(os.path.join(t, v, f), os.path.join(t, out, f))
    print(out, sorted(os.listdir(os.path.join(t, out))))
PY
SPK_HF_TWIN_DIR=$TMP "$B/tests/test_hf" >"$TMP/out" 2>&1
rc=$?
cat "$TMP/out"
[ $rc = 0 ] || { echo "FAIL: test_hf with the converted twins"; exit 1; }
n=$(grep -c "directory vs converted GGUF: max |logit diff| 0, greedy equal" "$TMP/out")
[ "$n" = 6 ] || { echo "FAIL: expected 6 identical twins, got $n"; exit 1; }
n=$(grep -c "save_pretrained.*max |logit diff| 0" "$TMP/out")
[ "$n" = 6 ] || { echo "FAIL: expected 6 save_pretrained directories with identical logits, got $n"; exit 1; }
echo "ok: transformers' save_pretrained directories (F32, BF16, sharded; Qwen3-MoE's num_local_experts) give the same logits"
cat "$TMP/save.log" | grep saved
echo "ok: 6 directories give the logits of their converted GGUF twins"
# end to end through spk_model_load (tokenizer from tokenizer.json vs the converter's
# tokenizer.ggml.*): the same prompt gives the same greedy ids, plain and through the chat template
G=$B/examples/spk-generate
if [ -x "$G" ]; then
    for v in $TWINS; do
        for mode in "" --chat; do
            a=$("$G" --model "$TMP/$v" --prompt "the cat in the hat" $mode --max-tokens 12 --print-ids --ignore-eos --threads 2 2>"$TMP/err") \
                || { cat "$TMP/err"; echo "FAIL: spk-generate on the directory $v $mode"; exit 1; }
            b=$("$G" --model "$TMP/$v.gguf" --prompt "the cat in the hat" $mode --max-tokens 12 --print-ids --ignore-eos --threads 2 2>"$TMP/err") \
                || { cat "$TMP/err"; echo "FAIL: spk-generate on the converted $v $mode"; exit 1; }
            [ -n "$a" ] && [ "$a" = "$b" ] || { echo "FAIL: $v $mode: directory gives '$a', converted GGUF '$b'"; exit 1; }
            echo "ok: $v ${mode:-plain}: spk-generate ids equal ($(echo $a | wc -w) ids)"
        done
    done
fi
