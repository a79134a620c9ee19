#!/usr/bin/env python3
"""gen-reference.py: write golden reference data from llama.cpp for the default model.

llama.cpp is an *independent* reference here (built outside the repo by tests/ref/build-llamacpp.sh,
from the llama-cpp-python==0.3.36 sdist); nothing of it is copied into this project. This script runs
under that script's throwaway virtualenv, whose `llama_cpp` package loads the llama.cpp library built
there, on the default model (scripts/fetch-model.sh), and writes three small JSON files:

  tests/data/ref_tokens.json    [{"text", "ids", "ids_special"}, ...] for ~45 strings. "ids" is
                                llama_tokenize(add_special=False, parse_special=False), "ids_special"
                                is the same with parse_special=True (they differ only where the text
                                contains special-token text such as <|im_start|>). No BOS is added.
  tests/data/ref_logprobs.json  4 sequences of 48 tokens (tokenized by llama.cpp). For every position
                                i: the top-10 [token, logprob] of the distribution after tokens[0..i]
                                (log-softmax of llama.cpp's logits, computed in float64, rounded to 5
                                decimals) and "next_lp", the logprob of tokens[i+1] (null at the last
                                position). "greedy" holds 16 tokens of greedy (argmax) continuation.
  tests/data/ref_chat.json      the model's chat template (GGUF tokenizer.chat_template) rendered for
                                two conversations, both by Jinja2 exactly as llama-cpp-python / HF
                                transformers do ("jinja") and by llama.cpp's built-in C renderer
                                llama_chat_apply_template ("builtin"), plus the rendered prompt's ids.

Everything is deterministic: a single decode per sequence, fixed threads (--threads, default 2),
greedy argmax, no sampling. The logits of a Q4_x model depend slightly on the kernels (llama.cpp
quantises activations to Q8 for its dot products), so compare against these logprobs with a
tolerance (a few 1e-2), and compare top-1 tokens exactly only where the margin is clear.

Rerun (from the repo root):  tests/ref/make-reference.sh
   which is: PY=$(tests/ref/build-llamacpp.sh | sed -n 's/^LLAMACPP_VENV_PYTHON=//p')
             "$PY" tests/ref/gen-reference.py --model "$(scripts/fetch-model.sh | tail -n1)"
"""

import argparse
import ctypes
import hashlib
import json
import os
import sys

import numpy as np

import llama_cpp

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
N_POS = 48       # tokens per logprob sequence
TOP_K = 10       # entries in each position's top list
N_GREEDY = 16    # greedy continuation tokens per sequence

TOKEN_STRINGS = [
    # plain English
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    # leading / trailing spaces and whitespace runs
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "a   b",
    "   ",
    "tab\tseparated\tvalues",
    "\t\tindented with tabs",
    "line one\nline two",
    "\n\n\n",
    "paragraph one.\n\nparagraph two.\n",
    "hello   \n   world",
    "\r\nwindows line\r\n",
    "a\u00a0b\u2003c\u3000d",
    # digits
    "12345678",
    "3.14159",
    "1,000,000",
    "The year 2024 had 366 days.",
    "x  =  42",
    "x\u00b2 + y\u00b2 = z\u00b2; \u00bd \u2248 0.5; \u2211\u221e",
    # contractions
    "don't I'll we've",
    "She's here, they're gone, I'm done, he'd say.",
    "DON'T SHOUT, I'LL GO",
    # punctuation
    "Hello!!! What?! (yes) [no] {maybe} <tag> @user #hash $5 %20 ^_^ ~tilde~ `code`",
    "...---...  ;:'\"",
    # code
    "def add(a, b):\n    return a + b\n",
    "int main(void) {\n\tprintf(\"%d\\n\", x->y[0]);\n}",
    "https://example.com/path?query=1&x=y#frag",
    # unicode
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "\u00dcn\u00efc\u00f6d\u00e9 \u00c0\u00c9\u00ce\u00d5\u00dc stra\u00dfe",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c\u3001\u30ab\u30bf\u30ab\u30ca",
    "\uc548\ub155\ud558\uc138\uc694",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041a\u0430\u043a \u0434\u0435\u043b\u0430?",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5",
    # emoji: variation selector, ZWJ sequences, flags (regional indicators)
    "I \u2764\ufe0f emoji \U0001f600\U0001f389",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family, \U0001f3f3\ufe0f\u200d\U0001f308 flag",
    "\U0001f1eb\U0001f1f7\U0001f1e9\U0001f1ea\U0001f1ef\U0001f1f5",
    # special-token text
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    # empty
    "",
]

LOGPROB_PROMPTS = [
    ("chat",
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
     "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
     "<|im_start|>assistant\nThe capital of France is Paris. It is known for the Eiffel Tower, "
     "the Louvre and its cafes.",
     True),
    ("english",
     "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
     "combined movable metal type, oil-based ink and a wooden press adapted from those used for "
     "wine. Within a few decades, printing shops had spread across Europe, and books became far "
     "cheaper than hand-copied manuscripts.",
     False),
    ("code",
     "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
     "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\n"
     "if __name__ == \"__main__\":\n    for i in range(10):\n        print(i, fibonacci(i))\n",
     False),
    ("numbers",
     "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, "
     "26, 27, 28, 29, 30",
     False),
]

CHAT_CASES = [
    ("with_system", [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "How are you?"},
    ]),
    ("without_system", [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "How are you?"},
    ]),
    ("single_user", [
        {"role": "user", "content": "Hello"},
    ]),
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log_softmax(logits):
    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def r5(x):
    return float(round(float(x), 5))


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False, indent=1))
        f.write("\n")


def builtin_chat(model_ptr, messages, add_ass):
    tmpl = llama_cpp.llama_model_chat_template(model_ptr, None)
    arr = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, m in enumerate(messages):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        arr[i].role, arr[i].content = role, content
    n = llama_cpp.llama_chat_apply_template(tmpl, arr, len(messages), add_ass, None, 0)
    if n < 0:
        return None
    buf = ctypes.create_string_buffer(n + 1)
    n2 = llama_cpp.llama_chat_apply_template(tmpl, arr, len(messages), add_ass, buf, n + 1)
    assert n2 == n
    return buf.raw[:n].decode("utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "..", "data"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    model_sha = sha256_file(args.model)

    llm = llama_cpp.Llama(model_path=args.model, n_ctx=256, n_batch=256, n_ubatch=256,
                          n_threads=args.threads, n_threads_batch=args.threads,
                          n_gpu_layers=0, logits_all=True, seed=0, verbose=False)
    n_vocab = llm.n_vocab()

    def tok(text, special):
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def detok(ids, special):
        return llm.detokenize(ids, special=special).decode("utf-8")

    # ---- tokenizer ----
    tokens_out = []
    for text in TOKEN_STRINGS:
        ids = tok(text, False)
        ids_sp = tok(text, True)
        if detok(ids, False) != text:
            sys.exit(f"round-trip failed (parse_special=false) for {text!r}: {ids}")
        if detok(ids_sp, True) != text:
            sys.exit(f"round-trip failed (parse_special=true) for {text!r}: {ids_sp}")
        if any(not (0 <= t < n_vocab) for t in ids + ids_sp):
            sys.exit(f"token id out of range for {text!r}")
        tokens_out.append({"text": text, "ids": ids, "ids_special": ids_sp})
    write_json(os.path.join(out_dir, "ref_tokens.json"), tokens_out)

    # ---- logprobs ----
    seqs = []
    for name, text, special in LOGPROB_PROMPTS:
        ids = tok(text, special)
        if len(ids) < N_POS:
            sys.exit(f"prompt {name!r} has only {len(ids)} tokens, need {N_POS}")
        ids = ids[:N_POS]
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[:N_POS, :], dtype=np.float64)
        positions = []
        for i in range(N_POS):
            lp = log_softmax(scores[i])
            top = np.argsort(-lp, kind="stable")[:TOP_K]
            positions.append({
                "top": [[int(t), r5(lp[t])] for t in top],
                "next_lp": r5(lp[ids[i + 1]]) if i + 1 < N_POS else None,
            })
        greedy = []
        nxt = int(np.argmax(scores[N_POS - 1]))
        for _ in range(N_GREEDY):
            greedy.append(nxt)
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1, :]))
        seqs.append({"name": name, "parse_special": special, "tokens": ids,
                     "text": detok(ids, True), "positions": positions,
                     "greedy": greedy, "greedy_text": detok(greedy, True)})
    logprobs = {
        "model": os.path.basename(args.model),
        "model_sha256": model_sha,
        "llama_cpp_python_version": LLAMA_CPP_PYTHON_VERSION,
        "n_threads": args.threads,
        "n_vocab": n_vocab,
        "note": "positions[i].top: top-%d [token, logprob] of the next-token distribution after "
                "tokens[0..i]; next_lp: logprob of tokens[i+1]; logprob = log_softmax(logits) in "
                "float64, 5 decimals; greedy: %d argmax tokens after the %d tokens" %
                (TOP_K, N_GREEDY, N_POS),
        "sequences": seqs,
    }
    # one position per line keeps the file small and readable
    path = os.path.join(out_dir, "ref_logprobs.json")
    with open(path, "w", encoding="utf-8") as f:
        head = {k: v for k, v in logprobs.items() if k != "sequences"}
        f.write(json.dumps(head, ensure_ascii=False, indent=1)[:-2] + ",\n \"sequences\": [\n")
        for si, s in enumerate(seqs):
            f.write("  {\n")
            for k in ("name", "parse_special", "text", "tokens", "greedy", "greedy_text"):
                f.write("   %s: %s,\n" % (json.dumps(k), json.dumps(s[k], ensure_ascii=False)))
            f.write("   \"positions\": [\n")
            for pi, p in enumerate(s["positions"]):
                f.write("    " + json.dumps(p, separators=(",", ":")) +
                        ("," if pi + 1 < len(s["positions"]) else "") + "\n")
            f.write("   ]\n  }" + ("," if si + 1 < len(seqs) else "") + "\n")
        f.write(" ]\n}\n")
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(logprobs))

    # ---- chat template ----
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        sys.exit("model has no tokenizer.chat_template")
    bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
    eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
    fmt = llama_cpp.llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=eos,
                                                          bos_token=bos)
    cases = []
    for name, msgs in CHAT_CASES:
        rendered = fmt(messages=msgs).prompt  # add_generation_prompt=True
        builtin = builtin_chat(llm._model.model, msgs, True)
        cases.append({"name": name, "messages": msgs, "add_generation_prompt": True,
                      "jinja": rendered, "jinja_ids_special": tok(rendered, True),
                      "builtin": builtin})
    chat = {
        "model_sha256": model_sha,
        "llama_cpp_python_version": LLAMA_CPP_PYTHON_VERSION,
        "bos_token": bos, "eos_token": eos,
        "note": "jinja: tokenizer.chat_template rendered with Jinja2 (trim_blocks, lstrip_blocks, "
                "bos_token/eos_token set) as llama-cpp-python and HF transformers do; builtin: "
                "llama.cpp's C llama_chat_apply_template with the same template string (it detects "
                "the template family and uses its own renderer). jinja_ids_special: llama.cpp "
                "tokens of the jinja prompt with parse_special=true, add_special=false.",
        "chat_template": template,
        "cases": cases,
    }
    write_json(os.path.join(out_dir, "ref_chat.json"), chat)

    for fn in ("ref_tokens.json", "ref_logprobs.json", "ref_chat.json"):
        p = os.path.join(out_dir, fn)
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")


if __name__ == "__main__":
    main()
