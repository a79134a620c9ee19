/* Tokenizer and chat template unit tests on a tiny hand-built vocabulary (no model file). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/chat.h"
#include "model/gguf.h"
#include "model/tok_internal.h"
#include "model/tokenizer.h"
#include "testutil.h"

/* ---- building a tiny vocabulary ------------------------------------------------------------ */

/* GPT-2's bytes_to_unicode, written out independently of the library. */
static uint32_t b2u(unsigned b)
{
    static uint32_t table[256];
    static int init;
    if (!init) {
        unsigned n = 0;
        for (unsigned c = 0; c < 256; c++) {
            bool direct = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE);
            table[c] = direct ? c : 256 + n++;
        }
        init = 1;
    }
    return table[b];
}

/* Stored (mapped) form of raw bytes: malloc'd NUL-terminated. */
static char *mapped(const char *raw, size_t n)
{
    char *s = malloc(2 * n + 1), *o = s;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = b2u((uint8_t)raw[i]);
        if (cp < 0x80) {
            *o++ = (char)cp;
        } else {
            *o++ = (char)(0xC0 | (cp >> 6));
            *o++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    *o = 0;
    return s;
}

#define MAXT 400
typedef struct vocab {
    char *text[MAXT];
    spk_tok_str tok[MAXT];
    int32_t type[MAXT];
    int n;
    char *merge[64];
    spk_tok_str mg[64];
    int nm;
} vocab;

static int add_tok(vocab *v, const char *stored, int type)
{
    v->text[v->n] = strdup(stored);
    v->tok[v->n] = (spk_tok_str){v->text[v->n], strlen(stored)};
    v->type[v->n] = type;
    return v->n++;
}

/* Add a normal token for raw bytes (mapped to stored form). */
static int add_raw(vocab *v, const char *raw)
{
    char *m = mapped(raw, strlen(raw));
    int id = add_tok(v, m, SPK_TOKTYPE_NORMAL);
    free(m);
    return id;
}

/* Add the merge "left right" given in raw bytes. */
static void add_merge(vocab *v, const char *l, const char *r)
{
    char *ml = mapped(l, strlen(l)), *mr = mapped(r, strlen(r));
    char *s = malloc(strlen(ml) + strlen(mr) + 2);
    sprintf(s, "%s %s", ml, mr);
    v->merge[v->nm] = s;
    v->mg[v->nm] = (spk_tok_str){s, strlen(s)};
    v->nm++;
    free(ml);
    free(mr);
}

static void vocab_free(vocab *v)
{
    for (int i = 0; i < v->n; i++)
        free(v->text[i]);
    for (int i = 0; i < v->nm; i++)
        free(v->merge[i]);
    free(v);
}

enum { ID_EOT = 0, ID_IMS = 1, ID_IME = 2, ID_USER = 3, ID_IMS_SYS = 4, ID_BYTE0 = 5 };
static int id_hello, id_gworld, id_he, id_ll, id_bc, id_aa, id_abc_word, id_123, id_45, id_s_up;

/* Specials, all 256 bytes, then a few merged tokens and their merges (rank = order). */
static vocab *tiny_vocab(void)
{
    vocab *v = calloc(1, sizeof *v);
    add_tok(v, "<|endoftext|>", SPK_TOKTYPE_CONTROL);
    add_tok(v, "<|im_start|>", SPK_TOKTYPE_CONTROL);
    add_tok(v, "<|im_end|>", SPK_TOKTYPE_CONTROL);
    add_tok(v, "<user>", SPK_TOKTYPE_USER_DEFINED);
    add_tok(v, "<|im_start|>sys", SPK_TOKTYPE_CONTROL);
    for (unsigned b = 0; b < 256; b++) {
        char raw[2] = {(char)b, 0};
        char *m = mapped(raw, 1);
        add_tok(v, m, SPK_TOKTYPE_NORMAL);
        free(m);
    }
    id_he = add_raw(v, "he");
    id_ll = add_raw(v, "ll");
    add_raw(v, "hell");
    id_hello = add_raw(v, "hello");
    add_raw(v, " w");
    add_raw(v, "or");
    add_raw(v, " wor");
    add_raw(v, "ld");
    id_gworld = add_raw(v, " world");
    add_raw(v, "o ");
    id_bc = add_raw(v, "bc");
    add_raw(v, "ab");
    id_aa = add_raw(v, "aa");
    add_raw(v, "12");
    id_abc_word = add_raw(v, "abcd");  /* no merge path reaches it */
    id_123 = add_raw(v, "123");
    id_45 = add_raw(v, "45");
    id_s_up = add_raw(v, "'S");

    add_merge(v, "h", "e");
    add_merge(v, "l", "l");
    add_merge(v, "he", "ll");
    add_merge(v, "hell", "o");
    add_merge(v, " ", "w");
    add_merge(v, "o", "r");
    add_merge(v, " w", "or");
    add_merge(v, "l", "d");
    add_merge(v, " wor", "ld");
    add_merge(v, "o", " ");   /* must never apply across pre-tokenizer pieces */
    add_merge(v, "b", "c");   /* rank 10 beats "a b" (rank 11) */
    add_merge(v, "a", "b");
    add_merge(v, "a", "a");
    add_merge(v, "1", "2");   /* smollm splits digits first, so never used there */
    return v;
}

static void tiny_spec(const vocab *v, spk_tok_spec *s, const char *pre)
{
    spk_tok_spec_init(s);
    s->model = "gpt2";
    s->pre = pre;
    s->n_tokens = (size_t)v->n;
    s->tokens = v->tok;
    s->token_types = v->type;
    s->n_merges = (size_t)v->nm;
    s->merges = v->mg;
    s->bos = ID_IMS;
    s->eos = ID_IME;
}

static spk_tok *tiny_tok(const char *pre, vocab **vout)
{
    vocab *v = tiny_vocab();
    spk_tok_spec s;
    tiny_spec(v, &s, pre);
    spk_tok *tok = NULL;
    spk_status st = spk_tok_new(&s, &tok);
    ck_assert_msg(st == SPK_OK, "spk_tok_new: %s", spk_err_msg());
    if (vout)
        *vout = v;
    else
        vocab_free(v);
    return tok;
}

static size_t enc(const spk_tok *tok, const char *s, bool special, int32_t *ids, size_t cap)
{
    size_t n = 0;
    spk_status st = spk_tok_encode(tok, s, strlen(s), false, special, ids, cap, &n);
    ck_assert_msg(st == SPK_OK, "encode '%s': %s", s, spk_err_msg());
    return n;
}

static int32_t B(unsigned char c) { return ID_BYTE0 + c; }

/* ---- tests ---------------------------------------------------------------------------------- */

START_TEST(test_byte_mapping_matches_gpt2)
{
    ck_assert_uint_eq(spk_tok_byte_to_cp(' '), 0x120);   /* 'Ġ' */
    ck_assert_uint_eq(spk_tok_byte_to_cp('\n'), 0x10A);  /* 'Ċ' */
    ck_assert_uint_eq(spk_tok_byte_to_cp(0x00), 0x100);
    ck_assert_uint_eq(spk_tok_byte_to_cp(0x7F), 0x121);
    ck_assert_uint_eq(spk_tok_byte_to_cp(0xAD), 0x143);
    ck_assert_uint_eq(spk_tok_byte_to_cp('A'), 'A');
    for (unsigned b = 0; b < 256; b++) {
        ck_assert_uint_eq(spk_tok_byte_to_cp((uint8_t)b), b2u(b));
        ck_assert_int_eq(spk_tok_cp_to_byte(b2u(b)), (int)b);
    }
    ck_assert_int_eq(spk_tok_cp_to_byte(0x144), -1);
    ck_assert_int_eq(spk_tok_cp_to_byte(0x20), -1);
}
END_TEST

START_TEST(test_merges_build_words_within_pieces)
{
    spk_tok *tok = tiny_tok("smollm", NULL);
    int32_t ids[16];
    size_t n = enc(tok, "hello world", false, ids, 16);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], id_hello);
    ck_assert_int_eq(ids[1], id_gworld);
    /* "o " exists as a merge but "hello" and " " are separate pieces */
    n = enc(tok, "hello ", false, ids, 16);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], id_hello);
    ck_assert_int_eq(ids[1], B(' '));
    spk_tok_free(tok);
}
END_TEST

START_TEST(test_lowest_rank_merges_first_and_ties_go_left)
{
    spk_tok *tok = tiny_tok("smollm", NULL);
    int32_t ids[16];
    /* "b c" (rank 10) beats "a b" (rank 11) although "a b" is further left */
    size_t n = enc(tok, "abc", false, ids, 16);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], B('a'));
    ck_assert_int_eq(ids[1], id_bc);
    /* equal ranks: the leftmost pair merges first */
    n = enc(tok, "aaa", false, ids, 16);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], id_aa);
    ck_assert_int_eq(ids[1], B('a'));
    /* "abcd" is a token but no merge reaches it (smollm uses merges, not whole words) */
    n = enc(tok, "abcd", false, ids, 16);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_ne(ids[0], id_abc_word);
    spk_tok_free(tok);
}
END_TEST

START_TEST(test_smollm_splits_digits_one_by_one)
{
    spk_tok *tok = tiny_tok("smollm", NULL);
    int32_t ids[16];
    size_t n = enc(tok, "x123", false, ids, 16);
    ck_assert_uint_eq(n, 4); /* the "1 2" merge cannot apply */
    ck_assert_int_eq(ids[0], B('x'));
    ck_assert_int_eq(ids[1], B('1'));
    ck_assert_int_eq(ids[2], B('2'));
    ck_assert_int_eq(ids[3], B('3'));
    spk_tok_free(tok);
}
END_TEST

START_TEST(test_llama3_groups_digits_and_uses_whole_words)
{
    spk_tok *tok = tiny_tok("llama-bpe", NULL);
    int32_t ids[16];
    size_t n = enc(tok, "12345", false, ids, 16); /* \p{N}{1,3} */
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], id_123);
    ck_assert_int_eq(ids[1], id_45);
    n = enc(tok, "abcd", false, ids, 16); /* whole piece in the vocabulary: merges ignored */
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(ids[0], id_abc_word);
    n = enc(tok, "x'S", false, ids, 16); /* case-insensitive contraction is its own piece */
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], B('x'));
    ck_assert_int_eq(ids[1], id_s_up);
    ck_assert(spk_tok_add_bos(tok)); /* llama-bpe default when the file does not say */
    spk_tok_free(tok);
}
END_TEST

START_TEST(test_special_tokens_only_with_parse_special)
{
    spk_tok *tok = tiny_tok("smollm", NULL);
    int32_t ids[64];
    const char *s = "<|im_start|>hello<|im_end|>";
    size_t n = enc(tok, s, true, ids, 64);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(ids[0], ID_IMS);
    ck_assert_int_eq(ids[1], id_hello);
    ck_assert_int_eq(ids[2], ID_IME);
    n = enc(tok, s, false, ids, 64);
    ck_assert_uint_gt(n, 3);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_ge(ids[i], ID_BYTE0);
    /* the longest special token wins */
    n = enc(tok, "<|im_start|>system", true, ids, 64);
    ck_assert_int_eq(ids[0], ID_IMS_SYS);
    /* USER_DEFINED tokens are matched even without parse_special (as llama.cpp/HF do) */
    n = enc(tok, "a<user>b", false, ids, 64);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(ids[1], ID_USER);
    spk_tok_free(tok);
}
END_TEST

START_TEST(test_add_special_prepends_bos_when_asked)
{
    vocab *v = tiny_vocab();
    spk_tok_spec s;
    tiny_spec(v, &s, "smollm");
    s.add_bos = 1;
    spk_tok *tok;
    ck_assert_int_eq(spk_tok_new(&s, &tok), SPK_OK);
    int32_t ids[8];
    size_t n;
    ck_assert_int_eq(spk_tok_encode(tok, "he", 2, true, false, ids, 8, &n), SPK_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], ID_IMS);
    ck_assert_int_eq(ids[1], id_he);
    ck_assert_int_eq(spk_tok_encode(tok, "he", 2, false, false, ids, 8, &n), SPK_OK);
    ck_assert_uint_eq(n, 1);
    spk_tok_free(tok);
    s.add_bos = 0;
    ck_assert_int_eq(spk_tok_new(&s, &tok), SPK_OK);
    ck_assert_int_eq(spk_tok_encode(tok, "", 0, true, false, ids, 8, &n), SPK_OK);
    ck_assert_uint_eq(n, 0);
    spk_tok_free(tok);
    vocab_free(v);
}
END_TEST

START_TEST(test_encode_capacity_reports_needed_count)
{
    spk_tok *tok = tiny_tok("smollm", NULL);
    int32_t ids[8];
    for (int i = 0; i < 8; i++)
        ids[i] = -7;
    size_t n = 0;
    const char *s = "abc xyz 123";
    spk_status st = spk_tok_encode(tok, s, strlen(s), false, false, ids, 3, &n);
    ck_assert_int_eq(st, SPK_ERR_TOO_LONG);
    size_t need = n;
    ck_assert_uint_gt(need, 3);
    ck_assert_int_eq(ids[3], -7); /* nothing written past cap */
    int32_t *all = malloc(need * sizeof *all);
    ck_assert_int_eq(spk_tok_encode(tok, s, strlen(s), false, false, all, need, &n), SPK_OK);
    ck_assert_uint_eq(n, need);
    ck_assert_mem_eq(all, ids, 3 * sizeof *ids);
    ck_assert_int_eq(spk_tok_encode(tok, s, strlen(s), false, false, NULL, 0, &n), SPK_ERR_TOO_LONG);
    ck_assert_uint_eq(n, need);
    ck_assert_int_eq(spk_tok_encode(NULL, s, 1, false, false, all, need, &n), SPK_ERR_INVALID_ARG);
    free(all);
    spk_tok_free(tok);
}
END_TEST

START_TEST(test_invalid_utf8_round_trips_byte_by_byte)
{
    spk_tok *tok = tiny_tok("smollm", NULL);
    const char s[] = "\xff\xfe hello\xc3 \xe2\x82 world\x80\x80\xf0\x9f\x98";
    size_t len = sizeof s - 1;
    int32_t ids[64];
    size_t n;
    ck_assert_int_eq(spk_tok_encode(tok, s, len, false, true, ids, 64, &n), SPK_OK);
    ck_assert_int_eq(ids[0], B(0xff)); /* invalid bytes are single-byte pieces */
    ck_assert_int_eq(ids[1], B(0xfe));
    char out[128];
    size_t m;
    ck_assert_int_eq(spk_tok_decode(tok, ids, n, false, out, sizeof out, &m), SPK_OK);
    ck_assert_uint_eq(m, len);
    ck_assert_mem_eq(out, s, len);
    /* NUL bytes are ordinary bytes */
    ck_assert_int_eq(spk_tok_encode(tok, "a\0b", 3, false, false, ids, 64, &n), SPK_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(ids[1], B(0));
    spk_tok_free(tok);
}
END_TEST

START_TEST(test_decode_renders_or_skips_special_tokens)
{
    spk_tok *tok = tiny_tok("smollm", NULL);
    int32_t ids[] = {ID_IMS, id_hello, ID_USER, id_gworld, ID_IME};
    char out[64];
    size_t n;
    ck_assert_int_eq(spk_tok_decode(tok, ids, 5, false, out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, strlen("<|im_start|>hello<user> world<|im_end|>"));
    ck_assert_mem_eq(out, "<|im_start|>hello<user> world<|im_end|>", n);
    ck_assert_int_eq(spk_tok_decode(tok, ids, 5, true, out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, strlen("hello<user> world"));
    ck_assert_mem_eq(out, "hello<user> world", n);
    /* capacity and bad ids */
    ck_assert_int_eq(spk_tok_decode(tok, ids, 5, false, out, 4, &n), SPK_ERR_TOO_LONG);
    ck_assert_uint_eq(n, strlen("<|im_start|>hello<user> world<|im_end|>"));
    int32_t bad[] = {id_hello, 100000};
    ck_assert_int_eq(spk_tok_decode(tok, bad, 2, false, out, sizeof out, &n), SPK_ERR_INVALID_ARG);
    int32_t neg[] = {-1};
    ck_assert_int_eq(spk_tok_decode(tok, neg, 1, false, out, sizeof out, &n), SPK_ERR_INVALID_ARG);
    spk_tok_free(tok);
}
END_TEST

START_TEST(test_stream_holds_split_characters_back)
{
    spk_tok *tok = tiny_tok("smollm", NULL);
    spk_tok_stream s;
    spk_tok_stream_init(&s, tok, false);
    char out[64];
    size_t n;
    /* U+1F600 as four byte tokens: nothing until the last byte */
    const uint8_t emoji[4] = {0xF0, 0x9F, 0x98, 0x80};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(spk_tok_stream_push(&s, B(emoji[i]), out, sizeof out, &n), SPK_OK);
        ck_assert_uint_eq(n, 0);
    }
    ck_assert_int_eq(spk_tok_stream_push(&s, B(emoji[3]), out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 4);
    ck_assert_mem_eq(out, emoji, 4);
    /* a complete token after a partial character: the character waits, then both come out */
    ck_assert_int_eq(spk_tok_stream_push(&s, B(0xC3), out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(spk_tok_stream_push(&s, B(0xA9), out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_mem_eq(out, "\xc3\xa9", 2);
    ck_assert_int_eq(spk_tok_stream_push(&s, id_hello, out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 5);
    /* flush with an incomplete character: U+FFFD */
    ck_assert_int_eq(spk_tok_stream_push(&s, B(0xE2), out, sizeof out, &n), SPK_OK);
    ck_assert_int_eq(spk_tok_stream_push(&s, B(0x82), out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(spk_tok_stream_push(&s, -1, out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_mem_eq(out, "\xef\xbf\xbd", 3);
    ck_assert_int_eq(spk_tok_stream_push(&s, -1, out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 0);
    /* a byte that can never start a character comes out as U+FFFD at once */
    ck_assert_int_eq(spk_tok_stream_push(&s, B(0x80), out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_mem_eq(out, "\xef\xbf\xbd", 3);
    /* a lead byte followed by a non-continuation: U+FFFD then the ASCII byte */
    ck_assert_int_eq(spk_tok_stream_push(&s, B(0xE2), out, sizeof out, &n), SPK_OK);
    ck_assert_int_eq(spk_tok_stream_push(&s, B('x'), out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 4);
    ck_assert_mem_eq(out, "\xef\xbf\xbdx", 4);
    /* too small a buffer: TOO_LONG, state unchanged, retry works */
    ck_assert_int_eq(spk_tok_stream_push(&s, B(0xC3), out, sizeof out, &n), SPK_OK);
    ck_assert_int_eq(spk_tok_stream_push(&s, id_gworld, out, 2, &n), SPK_ERR_TOO_LONG);
    ck_assert_uint_eq(n, 3 + 6); /* U+FFFD for the lone 0xC3, then " world" */
    ck_assert_int_eq(spk_tok_stream_push(&s, id_gworld, out, sizeof out, &n), SPK_OK);
    ck_assert_mem_eq(out, "\xef\xbf\xbd world", 9);
    /* skip_special streams drop control tokens */
    spk_tok_stream_init(&s, tok, true);
    ck_assert_int_eq(spk_tok_stream_push(&s, ID_IME, out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(spk_tok_stream_push(&s, 99999, out, sizeof out, &n), SPK_ERR_INVALID_ARG);
    spk_tok_free(tok);
}
END_TEST

START_TEST(test_eog_set_holds_eos_and_end_of_turn_names)
{
    spk_tok *tok = tiny_tok("smollm", NULL);
    ck_assert(spk_tok_is_eog(tok, ID_IME));  /* eos */
    ck_assert(spk_tok_is_eog(tok, ID_EOT));  /* <|endoftext|> by name */
    ck_assert(!spk_tok_is_eog(tok, ID_IMS));
    ck_assert(!spk_tok_is_eog(tok, id_hello));
    ck_assert(!spk_tok_is_eog(tok, -1));
    ck_assert(!spk_tok_is_eog(tok, 1 << 20));
    ck_assert_int_eq(spk_tok_bos(tok), ID_IMS);
    ck_assert_int_eq(spk_tok_eos(tok), ID_IME);
    ck_assert_int_eq(spk_tok_n_vocab(tok), ID_BYTE0 + 256 + 18);
    ck_assert_int_eq(spk_tok_find(tok, "<|im_end|>", 10), ID_IME);
    ck_assert_int_eq(spk_tok_type(tok, ID_USER), SPK_TOKTYPE_USER_DEFINED);
    spk_tok_free(tok);
}
END_TEST

/* Build a spec from the tiny vocabulary, let `mutate` break it, and expect `want`. */
static void expect_reject(void (*mutate)(vocab *, spk_tok_spec *), spk_status want,
                          const char *needle)
{
    vocab *v = tiny_vocab();
    spk_tok_spec s;
    tiny_spec(v, &s, "smollm");
    mutate(v, &s);
    spk_tok *tok = (spk_tok *)&s; /* must be reset to NULL */
    spk_status st = spk_tok_new(&s, &tok);
    ck_assert_msg(st == want, "status %d, want %d (%s)", st, want, spk_err_msg());
    ck_assert_ptr_null(tok);
    ck_assert_msg(strstr(spk_err_msg(), needle), "message '%s' lacks '%s'", spk_err_msg(), needle);
    vocab_free(v);
}

static void m_model(vocab *v, spk_tok_spec *s) { (void)v; s->model = "bert"; }
static void m_pre(vocab *v, spk_tok_spec *s) { (void)v; s->pre = "deepseek-v3"; }
static void m_merge_unknown(vocab *v, spk_tok_spec *s)
{
    (void)s;
    v->mg[3] = (spk_tok_str){"hell zz", 7};
}
static void m_merge_nospace(vocab *v, spk_tok_spec *s)
{
    (void)s;
    v->mg[5] = (spk_tok_str){"abc", 3};
}
static void m_merge_result(vocab *v, spk_tok_spec *s)
{
    (void)s;
    v->mg[0] = (spk_tok_str){"x y", 3}; /* "xy" is not a token */
}
static void m_nvocab(vocab *v, spk_tok_spec *s) { (void)v; s->n_vocab = 49152; }
static void m_bos(vocab *v, spk_tok_spec *s) { s->bos = v->n; }
static void m_type(vocab *v, spk_tok_spec *s) { (void)s; v->type[7] = 9; }
static void m_addbos(vocab *v, spk_tok_spec *s) { (void)v; s->add_bos = 1; s->bos = -1; }

START_TEST(test_malformed_vocabularies_are_rejected_with_a_reason)
{
    expect_reject(m_model, SPK_ERR_UNSUPPORTED, "'bert'");
    expect_reject(m_pre, SPK_ERR_UNSUPPORTED, "'deepseek-v3'");
    expect_reject(m_merge_unknown, SPK_ERR_FORMAT, "merge 3 'hell zz'");
    expect_reject(m_merge_nospace, SPK_ERR_FORMAT, "merge 5");
    expect_reject(m_merge_result, SPK_ERR_FORMAT, "not a token");
    expect_reject(m_nvocab, SPK_ERR_FORMAT, "49152");
    expect_reject(m_bos, SPK_ERR_FORMAT, "bos");
    expect_reject(m_type, SPK_ERR_FORMAT, "type 9");
    expect_reject(m_addbos, SPK_ERR_FORMAT, "add_bos");
}
END_TEST

START_TEST(test_bytes_without_a_token_are_dropped)
{
    /* SmolLM2's vocabulary lacks some byte tokens; llama.cpp and HF drop those bytes */
    vocab *v = tiny_vocab();
    v->tok[ID_BYTE0 + 'q'] = (spk_tok_str){"QQ", 2};
    spk_tok_spec s;
    tiny_spec(v, &s, "smollm");
    spk_tok *tok;
    ck_assert_int_eq(spk_tok_new(&s, &tok), SPK_OK);
    int32_t ids[16];
    size_t n = enc(tok, "aqa q", false, ids, 16);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(ids[0], B('a'));
    ck_assert_int_eq(ids[1], B('a'));
    ck_assert_int_eq(ids[2], B(' '));
    spk_tok_free(tok);
    vocab_free(v);
}
END_TEST

typedef struct thr_arg {
    const spk_tok *tok;
    const char *text;
    const int32_t *want;
    size_t n_want;
    int ok;
} thr_arg;

static void *thr_encode(void *p)
{
    thr_arg *a = p;
    int32_t ids[256];
    a->ok = 1;
    for (int it = 0; it < 200; it++) {
        size_t n;
        if (spk_tok_encode(a->tok, a->text, strlen(a->text), false, true, ids, 256, &n) != SPK_OK ||
            n != a->n_want || memcmp(ids, a->want, n * sizeof *ids) != 0)
            a->ok = 0;
    }
    return NULL;
}

START_TEST(test_concurrent_encodes_agree)
{
    spk_tok *tok = tiny_tok("smollm", NULL);
    const char *text = "<|im_start|>hello world 12 abc aaa<|im_end|> hello\n\n world";
    int32_t want[256];
    size_t n = enc(tok, text, true, want, 256);
    pthread_t th[4];
    thr_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (thr_arg){tok, text, want, n, 0};
        pthread_create(&th[i], NULL, thr_encode, &a[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert(a[i].ok);
    }
    spk_tok_free(tok);
}
END_TEST

START_TEST(test_long_inputs_encode_and_round_trip)
{
    spk_tok *tok = tiny_tok("llama-bpe", NULL);
    size_t len = 200000;
    char *s = malloc(len);
    uint64_t r = 42;
    for (size_t i = 0; i < len; i++) {
        uint64_t x = spk_test_rand(&r) % 16;
        s[i] = x < 8 ? "helowrd1"[x] : x < 12 ? ' ' : x < 13 ? '\n' : (char)(spk_test_rand(&r) & 0xFF);
    }
    memset(s + 1000, ' ', 20000);  /* a long whitespace run */
    memset(s + 50000, 'a', 20000); /* a long single word */
    size_t n;
    ck_assert_int_eq(spk_tok_encode(tok, s, len, false, false, NULL, 0, &n), SPK_ERR_TOO_LONG);
    int32_t *ids = malloc(n * sizeof *ids);
    ck_assert_int_eq(spk_tok_encode(tok, s, len, false, false, ids, n, &n), SPK_OK);
    char *back = malloc(len);
    size_t m;
    ck_assert_int_eq(spk_tok_decode(tok, ids, n, false, back, len, &m), SPK_OK);
    ck_assert_uint_eq(m, len);
    ck_assert(memcmp(back, s, len) == 0);
    free(s);
    free(ids);
    free(back);
    spk_tok_free(tok);
}
END_TEST

/* ---- the GGUF adapter, on a GGUF built in memory ---------------------------------------------- */

typedef struct gbuf {
    uint8_t *p;
    size_t n, cap;
} gbuf;

static void gput(gbuf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void gu32(gbuf *b, uint32_t v) { gput(b, &v, 4); }
static void gu64(gbuf *b, uint64_t v) { gput(b, &v, 8); }
static void gstr(gbuf *b, const char *s, size_t n) { gu64(b, n); gput(b, s, n); }
static void gkey(gbuf *b, const char *k, uint32_t type) { gstr(b, k, strlen(k)); gu32(b, type); }

/* tokenizer.ggml.* for the tiny vocabulary; `pre` and the token_type count can be spoiled. */
static gbuf tiny_gguf(const vocab *v, const char *pre, int n_types)
{
    gbuf b = {0};
    gput(&b, "GGUF", 4);
    gu32(&b, 3);
    gu64(&b, 0); /* tensors */
    gu64(&b, 7); /* kv pairs */
    gkey(&b, "tokenizer.ggml.model", GGUF_STRING);
    gstr(&b, "gpt2", 4);
    gkey(&b, "tokenizer.ggml.pre", GGUF_STRING);
    gstr(&b, pre, strlen(pre));
    gkey(&b, "tokenizer.ggml.tokens", GGUF_ARRAY);
    gu32(&b, GGUF_STRING);
    gu64(&b, (uint64_t)v->n);
    for (int i = 0; i < v->n; i++)
        gstr(&b, v->tok[i].ptr, v->tok[i].len);
    gkey(&b, "tokenizer.ggml.token_type", GGUF_ARRAY);
    gu32(&b, GGUF_INT32);
    gu64(&b, (uint64_t)n_types);
    for (int i = 0; i < n_types; i++)
        gu32(&b, (uint32_t)v->type[i]);
    gkey(&b, "tokenizer.ggml.merges", GGUF_ARRAY);
    gu32(&b, GGUF_STRING);
    gu64(&b, (uint64_t)v->nm);
    for (int i = 0; i < v->nm; i++)
        gstr(&b, v->mg[i].ptr, v->mg[i].len);
    gkey(&b, "tokenizer.ggml.eos_token_id", GGUF_UINT32);
    gu32(&b, ID_IME);
    gkey(&b, "tokenizer.ggml.add_bos_token", GGUF_BOOL);
    uint8_t f = 0;
    gput(&b, &f, 1);
    while (b.n % 32) /* pad to the (default) alignment of the data section */
        gput(&b, &f, 1);
    return b;
}

START_TEST(test_gguf_metadata_builds_the_same_tokenizer)
{
    vocab *v = tiny_vocab();
    gbuf b = tiny_gguf(v, "smollm", v->n);
    spk_gguf_file *f;
    ck_assert_msg(spk_gguf_open_memory(b.p, b.n, &f) == SPK_OK, "gguf: %s", spk_err_msg());
    spk_tok *tok;
    ck_assert_msg(spk_tok_load(f, v->n, &tok) == SPK_OK, "load: %s", spk_err_msg());
    int32_t ids[8];
    size_t n = enc(tok, "hello world", false, ids, 8);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], id_hello);
    ck_assert_int_eq(ids[1], id_gworld);
    ck_assert_int_eq(spk_tok_eos(tok), ID_IME);
    ck_assert_int_eq(spk_tok_bos(tok), -1);
    ck_assert(!spk_tok_add_bos(tok));
    ck_assert_int_eq(spk_tok_type(tok, ID_USER), SPK_TOKTYPE_USER_DEFINED);
    spk_tok_free(tok);
    /* the embedding's row count must agree with the vocabulary */
    ck_assert_int_eq(spk_tok_load(f, v->n + 1, &tok), SPK_ERR_FORMAT);
    ck_assert_ptr_null(tok);
    spk_gguf_close(f);
    free(b.p);

    b = tiny_gguf(v, "deepseek-v3", v->n);
    ck_assert_int_eq(spk_gguf_open_memory(b.p, b.n, &f), SPK_OK);
    ck_assert_int_eq(spk_tok_load(f, 0, &tok), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "'deepseek-v3'"));
    spk_gguf_close(f);
    free(b.p);

    b = tiny_gguf(v, "smollm", v->n - 1);
    ck_assert_int_eq(spk_gguf_open_memory(b.p, b.n, &f), SPK_OK);
    ck_assert_int_eq(spk_tok_load(f, 0, &tok), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "token_type"));
    spk_gguf_close(f);
    free(b.p);
    vocab_free(v);
}
END_TEST

/* ---- chat templates -------------------------------------------------------------------------- */

static const char k_smol_tmpl[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

static char *render(const char *tmpl, const spk_chat_message *m, size_t n, bool add, spk_status *st)
{
    static char buf[2048];
    size_t len;
    *st = spk_chat_render_template(tmpl, strlen(tmpl), m, n, add, buf, sizeof buf, &len);
    return buf;
}

START_TEST(test_chatml_adds_the_templates_default_system_message)
{
    spk_chat_message m[] = {{"user", "Hello"}, {"assistant", "Hi!"}};
    spk_status st;
    const char *out = render(k_smol_tmpl, m, 2, true, &st);
    ck_assert_int_eq(st, SPK_OK);
    ck_assert_str_eq(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                          "Hugging Face<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
                          "<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>assistant\n");
    spk_chat_message ms[] = {{"system", "Be brief."}, {"user", "Hello"}};
    out = render(k_smol_tmpl, ms, 2, false, &st);
    ck_assert_str_eq(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n");
    /* escaped newlines inside the literal (Qwen-style) and a plain ChatML without default */
    const char *qwen = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
                       "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- "
                       "'<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}";
    out = render(qwen, m, 1, false, &st);
    ck_assert_str_eq(out, "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n");
    const char *plain = "{{'<|im_start|>' + message['role'] + '\\n' + message['content']}}";
    out = render(plain, m, 1, true, &st);
    ck_assert_str_eq(out, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
}
END_TEST

START_TEST(test_llama3_headers_and_trimmed_content)
{
    const char *tmpl = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}";
    spk_chat_message m[] = {{"system", "  Be brief.\n"}, {"user", "Hi"}};
    spk_status st;
    const char *out = render(tmpl, m, 2, true, &st);
    ck_assert_int_eq(st, SPK_OK);
    ck_assert_str_eq(out, "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                          "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n");
}
END_TEST

START_TEST(test_chat_unknown_template_and_capacity)
{
    spk_chat_message m[] = {{"user", "Hello"}};
    char buf[16];
    size_t n;
    const char *t = "[INST] {{ message }} [/INST]";
    ck_assert_int_eq(spk_chat_render_template(t, strlen(t), m, 1, true, buf, sizeof buf, &n),
                     SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "'llama2'"));
    ck_assert_int_eq(spk_chat_render_template(k_smol_tmpl, strlen(k_smol_tmpl), m, 1, true, buf,
                                              sizeof buf, &n),
                     SPK_ERR_TOO_LONG);
    size_t need = n;
    char *big = malloc(need);
    ck_assert_int_eq(spk_chat_render_template(k_smol_tmpl, strlen(k_smol_tmpl), m, 1, true, big,
                                              need, &n),
                     SPK_OK); /* exactly fits (no room for the NUL) */
    ck_assert_uint_eq(n, need);
    free(big);
    spk_chat_message bad[] = {{"user", NULL}};
    ck_assert_int_eq(spk_chat_render_template(k_smol_tmpl, strlen(k_smol_tmpl), bad, 1, true, buf,
                                              sizeof buf, &n),
                     SPK_ERR_INVALID_ARG);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_byte_mapping_matches_gpt2);
    tcase_add_test(tc, test_merges_build_words_within_pieces);
    tcase_add_test(tc, test_lowest_rank_merges_first_and_ties_go_left);
    tcase_add_test(tc, test_smollm_splits_digits_one_by_one);
    tcase_add_test(tc, test_llama3_groups_digits_and_uses_whole_words);
    tcase_add_test(tc, test_special_tokens_only_with_parse_special);
    tcase_add_test(tc, test_add_special_prepends_bos_when_asked);
    tcase_add_test(tc, test_encode_capacity_reports_needed_count);
    tcase_add_test(tc, test_invalid_utf8_round_trips_byte_by_byte);
    tcase_add_test(tc, test_decode_renders_or_skips_special_tokens);
    tcase_add_test(tc, test_stream_holds_split_characters_back);
    tcase_add_test(tc, test_eog_set_holds_eos_and_end_of_turn_names);
    tcase_add_test(tc, test_malformed_vocabularies_are_rejected_with_a_reason);
    tcase_add_test(tc, test_bytes_without_a_token_are_dropped);
    tcase_add_test(tc, test_concurrent_encodes_agree);
    tcase_add_test(tc, test_long_inputs_encode_and_round_trip);
    tcase_add_test(tc, test_gguf_metadata_builds_the_same_tokenizer);
    tcase_add_test(tc, test_chatml_adds_the_templates_default_system_message);
    tcase_add_test(tc, test_llama3_headers_and_trimmed_content);
    tcase_add_test(tc, test_chat_unknown_template_and_capacity);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return spk_test_run(suite()); }
