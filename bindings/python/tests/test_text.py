"""Model info, tokenizer round trips, chat template, logging during a load."""
import os

import pytest

import sparkinfer
from conftest import THREADS


def test_info_describes_the_default_model(model):
    i = model.info
    assert (i.arch, i.n_layers, i.n_embd, i.n_heads, i.n_kv_heads, i.head_dim, i.n_ff, i.n_vocab) == \
        ("llama", 30, 576, 9, 3, 64, 1536, 49152)
    assert i.n_ctx == 512 and i.n_ctx_train >= 512
    assert i.bos_token is not None and i.eos_token is not None
    assert i.n_params > 100_000_000 and 0 < i.weight_bytes < 200_000_000


def test_stats_and_rank_stats_of_one_rank(model):
    s = model.stats()
    assert s.kv_blocks_total > 0 and s.kv_block_size == 16 and 0 <= s.kv_blocks_free <= s.kv_blocks_total
    r = model.rank_stats(0)
    assert (r.rank, r.stage, r.tp_rank, r.layer_begin, r.layer_end) == (0, 0, 0, 0, 30)
    assert r.weight_bytes == model.info.weight_bytes and r.resident_bytes > 0
    assert 0 < r.kv_cache_bytes and r.weight_bytes + r.kv_cache_bytes <= r.owned_bytes
    with pytest.raises(sparkinfer.InvalidArgument):
        model.rank_stats(1)


@pytest.mark.parametrize("text", [
    "Hello world",
    "Emoji 😀👍🏽 and a family 👨‍👩‍👧 in one line",
    "Ünïcödé: naïve café, Ελληνικά, русский, 日本語のテキスト, 한국어, العربية",
    "  leading spaces,\ttabs\nand\r\nnewlines  ",
    "code: def f(x):\n    return x ** 2  # ok",
    "",
])
def test_tokenize_detokenize_round_trip(model, text):
    ids = model.tokenize(text, add_special=False)
    assert all(isinstance(t, int) and 0 <= t < model.info.n_vocab for t in ids)
    assert (len(ids) == 0) == (text == "")
    assert model.detokenize(ids) == text
    assert model.detokenize_bytes(ids) == text.encode("utf-8")


def test_emoji_split_across_tokens_streams_as_whole_characters(model):
    # An emoji is several byte-level tokens; detokenizing a prefix ends inside a character
    # (U+FFFD), while generate()'s streaming detokenizer holds bytes back (tested in test_engine).
    ids = model.tokenize("😀", add_special=False)
    assert len(ids) >= 2
    assert model.detokenize_bytes(ids[:1]) == "😀".encode()[:len(model.detokenize_bytes(ids[:1]))]
    assert "\ufffd" in model.detokenize(ids[:1])


def test_long_text_grows_the_buffers(model):
    text = "word " * 5000 + "😀" * 300
    ids = model.tokenize(text, add_special=False)
    assert len(ids) > 5000
    assert model.detokenize(ids) == text


def test_special_tokens(model):
    t = "<|im_start|>user\nhi<|im_end|>"
    plain = model.tokenize(t, add_special=False, parse_special=False)
    parsed = model.tokenize(t, add_special=False, parse_special=True)
    assert len(parsed) < len(plain)
    assert model.detokenize(parsed) == t
    im_end = model.tokenize("<|im_end|>", add_special=False, parse_special=True)
    assert len(im_end) == 1
    assert model.detokenize(parsed, skip_special=True) == "user\nhi"
    with_bos = model.tokenize("hi", add_special=True)
    without = model.tokenize("hi", add_special=False)
    assert with_bos[-len(without):] == without


def test_token_ids_outside_the_vocabulary_are_refused(model):
    with pytest.raises(sparkinfer.InvalidArgument):
        model.detokenize([model.info.n_vocab + 5])
    with pytest.raises(sparkinfer.InvalidArgument):
        model.detokenize([1 << 40])      # would not fit int32: refused before the call


def test_chat_template_is_chatml(model):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 😀"},
            ("assistant", "Hello!"), {"role": "user", "content": "Bye"}]
    s = model.chat(msgs)
    assert s == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 😀<|im_end|>\n"
                 "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                 "<|im_start|>assistant\n")
    assert model.chat(msgs, add_assistant=False) == s[:-len("<|im_start|>assistant\n")]
    assert model.chat(msgs, enable_thinking=False) == s    # ChatML has no thinking switch
    long = model.chat([{"role": "user", "content": "x" * 20000}])
    assert "x" * 20000 in long
    with pytest.raises(sparkinfer.InvalidArgument):
        model.chat([{"role": "user"}])
    with pytest.raises(sparkinfer.InvalidArgument):
        model.chat([{"role": "user", "content": "a\0b"}])


def test_chat_default_system_prompt_when_none_given(model):
    s = model.chat([{"role": "user", "content": "Hi"}])
    assert s.startswith("<|im_start|>system\n") and s.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_log_callback_sees_the_load_messages(model_path):
    got = []
    sparkinfer.set_log_callback(lambda lvl, msg: got.append((lvl, msg)), sparkinfer.LogLevel.DEBUG)
    try:
        with sparkinfer.Model(path=model_path, n_ctx=64, max_seqs=1, n_threads=THREADS):
            pass
    finally:
        sparkinfer.set_log_callback(None)
    assert got, "loading a model logs at INFO level"
    assert all(isinstance(lvl, sparkinfer.LogLevel) and isinstance(msg, str) for lvl, msg in got)
    assert any("rank 0" in msg for _, msg in got)


def test_chat_enable_thinking_false_on_qwen3(build_dir, tmp_path):
    """Qwen3's real template (tests/data/ref_chat_families.json) on a synthetic qwen3-tiny:
    enable_thinking=False renders what transformers' apply_chat_template(enable_thinking=False)
    does (the reference's "jinja_no_think"), the default what it does with thinking on."""
    import json
    import subprocess
    synth = os.path.join(build_dir or "", "examples", "spk-synth")
    if not build_dir or not os.access(synth, os.X_OK):
        pytest.skip("spk-synth not found next to $SPARKINFER_LIB")
    src = os.environ.get("SPK_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "..")
    ref = json.load(open(os.path.join(src, "tests", "data", "ref_chat_families.json")))
    q3 = [t for t in ref["templates"] if t["family"] == "qwen3"][0]
    (tmp_path / "qwen3.jinja").write_text(q3["template"])
    path = str(tmp_path / "q3.gguf")
    subprocess.run([synth, "--preset", "qwen3-tiny", "--chat-template", str(tmp_path / "qwen3.jinja"), "-o", path],
                   check=True, stdout=subprocess.DEVNULL)
    m = sparkinfer.Model(path=path, n_ctx=64, max_seqs=1, n_threads=1)
    try:
        n = 0
        for c in q3["cases"]:
            msgs = [{"role": r, "content": t} for r, t in c["messages"]]
            add = c["add_assistant"]
            assert m.chat(msgs, add_assistant=add) == c["jinja"]
            assert m.chat(msgs, add_assistant=add, enable_thinking=False) == c["jinja_no_think"]
            n += 1
        assert n >= 2
    finally:
        m.close()
