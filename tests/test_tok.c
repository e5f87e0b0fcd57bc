/*
 * test_tok.c - unit tests of tok (byte-level BPE) and chat (Qwen3 template).
 *
 * The handmade tokenizers in tests/fixtures/tok have the 256 byte symbols as
 * ids 0-255 (id = byte value) and a few merges chosen so that rank order,
 * leftmost-first ties and long words all show:
 *   256 he, 257 lo, 258 ll, 259 hel, 260 hello, 261 Ġhe, 262 aa, 263 aaaa,
 *   264 "12" (ranks in that order); added tokens 300 <|end|>, 301 <L>
 *   (lstrip), 302 <R> (rstrip), 303 <W> (single_word), 304 e+U+0301
 *   (normalized, so it matches "é"), 305 <|end|>long.
 * tiny/ splits with Qwen's regex after NFC; gpt2/ uses ByteLevel's own
 * GPT-2 regex and the older "a b" merge strings.
 * The real Qwen3 tokenizer is compared with HF in tests/tokenizer.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>

#include "chat.h"
#include "check.h"
#include "tok.h"
#include "tokdata.h"

static char fixtures[4096];

static tok *open_fixture(const char *name)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", fixtures, name);
    tok *t = NULL;
    errbuf err;
    int rc = tok_open(&t, dir, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    return t;
}

/* Encodes text (len bytes) and compares with the expected ids. */
static void expect_n(const tok *t, const char *text, size_t len, const int32_t *want, size_t n_want,
                     int line)
{
    int32_t *ids;
    size_t n;
    errbuf err;
    int rc = tok_encode(t, text, len, &ids, &n, &err);
    CHECK_MSG(rc == 0, "line %d: %s", line, err.msg);
    int same = rc == 0 && n == n_want && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    if (!same) {
        fprintf(stderr, "line %d: got", line);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    CHECK_MSG(same, "line %d: ids of \"%s\"", line, text);
    free(ids);
}

#define EXPECT(t, text, ...)                                                                       \
    do {                                                                                           \
        static const int32_t want_[] = {__VA_ARGS__};                                              \
        expect_n(t, text, strlen(text), want_, sizeof want_ / sizeof want_[0], __LINE__);          \
    } while (0)

static void test_merges(void)
{
    tok *t = open_fixture("tiny");
    if (!t)
        return;
    CHECK_INT_EQ(tok_vocab_size(t), 306);
    EXPECT(t, "hello", 260);
    /* lo (rank 1) beats the leftmost ll (rank 2) */
    EXPECT(t, "llo", 'l', 257);
    /* hel (3) and hello (4) come before Ġhe (5): the space stays alone */
    EXPECT(t, " hello", ' ', 260);
    EXPECT(t, " he", 261);
    /* equal ranks merge leftmost first: aa aa a, then aaaa a */
    EXPECT(t, "aaaaa", 263, 'a');
    EXPECT(t, "aaa", 262, 'a');
    /* Qwen's regex splits digits one by one, so "12" never merges */
    EXPECT(t, "123", '1', '2', '3');
    EXPECT(t, "a\r\n\r\nb", 'a', '\r', '\n', '\r', '\n', 'b');
    EXPECT(t, "x", 'x');
    int32_t *ids = (int32_t *)1;
    size_t n = 99;
    errbuf err;
    CHECK(tok_encode(t, "", 0, &ids, &n, &err) == 0 && n == 0);
    free(ids);

    /* A long word: 100000 'a' merge to 25000 "aaaa" (and fast: no n^2). */
    size_t long_n = 100000;
    char *word = malloc(long_n);
    memset(word, 'a', long_n);
    CHECK(tok_encode(t, word, long_n, &ids, &n, &err) == 0);
    CHECK_INT_EQ(n, long_n / 4);
    int all = 1;
    for (size_t i = 0; i < n; i++)
        all &= ids[i] == 263;
    CHECK(all);
    free(ids);
    free(word);
    tok_close(t);

    t = open_fixture("gpt2");
    if (!t)
        return;
    CHECK_INT_EQ(tok_vocab_size(t), 265);
    EXPECT(t, "123", 264, '3'); /* GPT-2's regex keeps digit runs together */
    EXPECT(t, " hello", ' ', 260);
    EXPECT(t, "<|end|>", '<', '|', 'e', 'n', 'd', '|', '>'); /* no added tokens here */
    tok_close(t);
}

static void test_bytes(void)
{
    tok *t = open_fixture("tiny");
    if (!t)
        return;
    /* GPT-2's byte-to-unicode table: printable bytes are themselves, the
     * others move to U+0100 and up in byte order. */
    CHECK_INT_EQ(tok_token_id(t, "\xC4\xA0"), ' ');    /* Ġ U+0120 */
    CHECK_INT_EQ(tok_token_id(t, "\xC4\x80"), 0);      /* Ā U+0100 */
    CHECK_INT_EQ(tok_token_id(t, "\xC4\x8A"), '\n');   /* Ċ U+010A */
    CHECK_INT_EQ(tok_token_id(t, "\xC4\xA1"), 0x7F);   /* ġ U+0121 */
    CHECK_INT_EQ(tok_token_id(t, "\xC4\xA2"), 0x80);   /* Ģ U+0122 */
    CHECK_INT_EQ(tok_token_id(t, "\xC5\x83"), 0xAD);   /* Ń U+0143 */
    CHECK_INT_EQ(tok_token_id(t, "\xC3\xA9"), 0xE9);   /* é stands for itself */
    CHECK_INT_EQ(tok_token_id(t, "!"), '!');
    CHECK_INT_EQ(tok_token_id(t, " "), -1);
    CHECK_INT_EQ(tok_token_id(t, "<|end|>"), 300);
    CHECK_INT_EQ(tok_token_id(t, "hello"), 260);
    /* Every byte token decodes to its byte. */
    int all = 1;
    for (int b = 0; b < 256; b++) {
        size_t len;
        const char *s = tok_token_bytes(t, b, &len);
        all &= s && len == 1 && (unsigned char)s[0] == b;
    }
    CHECK(all);
    size_t len;
    CHECK(tok_token_bytes(t, 280, &len) == NULL && len == 0); /* a gap in the ids */
    CHECK(tok_token_bytes(t, -1, &len) == NULL);
    CHECK(tok_token_bytes(t, 306, &len) == NULL);

    /* Control bytes and NUL are ordinary text. */
    EXPECT(t, "\x7F", 0x7F);
    static const int32_t nul_ids[] = {'a', 0, 'b'};
    expect_n(t, "a\0b", 3, nul_ids, 3, __LINE__);

    strbuf out = STRBUF_INIT;
    errbuf err;
    static const int32_t ids[] = {260, 261, 300, 999, -5, 0xC3, 0xA9, 281};
    CHECK(tok_decode(t, ids, 7, &out, &err) == 0);
    CHECK_STR_EQ(out.buf, "hello he<|end|>\xC3\xA9"); /* unknown ids skipped */
    sb_reset(&out);
    /* Half a character becomes U+FFFD, like HF's from_utf8_lossy. */
    static const int32_t half[] = {'a', 0xC3, 'b', 0xE4, 0xBD};
    CHECK(tok_decode(t, half, 5, &out, &err) == 0);
    CHECK_STR_EQ(out.buf, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
    /* decode appends */
    CHECK(tok_decode(t, ids, 1, &out, &err) == 0);
    CHECK_STR_EQ(out.buf, "a\xEF\xBF\xBD" "b\xEF\xBF\xBDhello");
    sb_release(&out);
    tok_close(t);
}

static void test_added(void)
{
    tok *t = open_fixture("tiny");
    if (!t)
        return;
    EXPECT(t, "a<|end|>b", 'a', 300, 'b');
    EXPECT(t, "<|end|><|end|>", 300, 300);
    EXPECT(t, "<|end|>long<|end|>", 305, 300); /* longest match */
    EXPECT(t, "<|end|", '<', '|', 'e', 'n', 'd', '|');
    /* lstrip eats the spaces before <L>, rstrip those after <R> */
    EXPECT(t, "a  <L>b", 'a', 301, 'b');
    EXPECT(t, "a<R> \t b", 'a', 302, 'b');
    EXPECT(t, "a <R>", 'a', ' ', 302);
    /* single_word: only between non-word characters */
    EXPECT(t, " <W> ", ' ', 303, ' ');
    EXPECT(t, "<W>", 303);
    EXPECT(t, "x<W>", 'x', '<', 'W', '>');
    /* a normalized added token matches after NFC */
    EXPECT(t, "e\xCC\x81", 304);
    EXPECT(t, "a\xC3\xA9", 'a', 304);
    tok_close(t);
}

static void test_errors(void)
{
    tok *t = NULL;
    errbuf err;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/none", fixtures);
    CHECK(tok_open(&t, dir, &err) < 0 && t == NULL);
    CHECK_MSG(strstr(err.msg, "none: no such folder") != NULL, "%s", err.msg);
    /* A folder without the file names the file. */
    CHECK(tok_open(&t, fixtures, &err) < 0 && t == NULL);
    CHECK_MSG(strstr(err.msg, "tok/tokenizer.json") != NULL, "%s", err.msg);

    snprintf(dir, sizeof dir, "%s/bad-json", fixtures);
    CHECK(tok_open(&t, dir, &err) < 0);
    CHECK_MSG(strstr(err.msg, "bad-json/tokenizer.json:3:") != NULL, "%s", err.msg);

    snprintf(dir, sizeof dir, "%s/bad-merge", fixtures);
    CHECK(tok_open(&t, dir, &err) < 0);
    CHECK_MSG(strstr(err.msg, "merges[0]") && strstr(err.msg, "'zz'"), "%s", err.msg);

    snprintf(dir, sizeof dir, "%s/bad-normalizer", fixtures);
    CHECK(tok_open(&t, dir, &err) < 0);
    CHECK_MSG(strstr(err.msg, "Lowercase") != NULL, "%s", err.msg);

    t = open_fixture("tiny");
    if (!t)
        return;
    int32_t *ids = (int32_t *)1;
    size_t n = 5;
    CHECK(tok_encode(t, "ab\xFF" "cd", 5, &ids, &n, &err) < 0 && ids == NULL && n == 0);
    CHECK_MSG(strstr(err.msg, "byte offset 2") != NULL, "%s", err.msg);
    CHECK(tok_encode(t, "ab\xC3", 3, &ids, &n, &err) < 0); /* cut character */
    CHECK_MSG(strstr(err.msg, "byte offset 2") != NULL, "%s", err.msg);
    CHECK(tok_encode(t, "\xED\xA0\x80", 3, &ids, &n, &err) < 0);   /* a surrogate */
    CHECK(tok_encode(t, "\xC0\xAF", 2, &ids, &n, &err) < 0);       /* overlong */
    CHECK(tok_encode(t, "\xF4\x90\x80\x80", 4, &ids, &n, &err) < 0); /* > U+10FFFF */
    tok_close(t);
}

/* Our NFC normalises only the spans around code points that can change;
 * encoding a text must equal encoding its full NFC (utf8proc's). */
static void test_nfc(const tok *t)
{
    static const char *parts[] = {"e", "\xCC\x81", "\xCC\xA3", "a", "\xE1\x84\x80", "\xE1\x85\xA1",
                                  "\xE1\x86\xA8", "\xEA\xB0\x80", " ", "\xE0\xB3\x86",
                                  "\xE0\xB3\x95", "\xE0\xB3\x82", "\xE2\x84\xAB", "\xEF\xAC\x81",
                                  "\xE3\x81\x8B", "\xE3\x82\x99", "\xC3\xA9", "Z", "\xE4\xB8\xAD"};
    size_t n_parts = sizeof parts / sizeof parts[0];
    unsigned seed = 12345;
    int mismatches = 0;
    for (int round = 0; round < 300; round++) {
        strbuf text = STRBUF_INIT;
        int len = 1 + round % 17;
        for (int i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            sb_adds(&text, parts[(seed >> 16) % n_parts]);
        }
        char *nfc = (char *)utf8proc_NFC((const utf8proc_uint8_t *)text.buf);
        int32_t *a, *b;
        size_t na, nb;
        errbuf err;
        if (tok_encode(t, text.buf, text.len, &a, &na, &err) ||
            tok_encode(t, nfc, strlen(nfc), &b, &nb, &err)) {
            CHECK_MSG(0, "%s", err.msg);
            break;
        }
        if (na != nb || memcmp(a, b, na * sizeof *a))
            mismatches++;
        free(a);
        free(b);
        free(nfc);
        sb_release(&text);
    }
    CHECK_INT_EQ(mismatches, 0);
}

static void test_qwen3(void)
{
    char dir[] = "/tmp/test_tok.XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK_MSG(0, "mkdtemp failed");
        return;
    }
    errbuf err;
    CHECK_MSG(tokdata_extract(dir, &err) == 0, "%s", err.msg);
    tok *t = NULL;
    CHECK_MSG(tok_open(&t, dir, &err) == 0, "%s", err.msg);
    if (t) {
        CHECK_INT_EQ(tok_vocab_size(t), 151669);
        CHECK_INT_EQ(tok_token_id(t, "<|endoftext|>"), 151643);
        CHECK_INT_EQ(tok_token_id(t, "<|im_start|>"), 151644);
        CHECK_INT_EQ(tok_token_id(t, "<|im_end|>"), 151645);
        CHECK_INT_EQ(tok_token_id(t, "<think>"), 151667);
        CHECK_INT_EQ(tok_token_id(t, "</think>"), 151668);
        CHECK_INT_EQ(tok_token_id(t, "no such token"), -1);
        test_nfc(t);
        tok_close(t);
    }
    char path[64];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    rmdir(dir);
}

static void test_chat(void)
{
    strbuf out = STRBUF_INIT;
    errbuf err;
    chat_msg one[] = {{"user", "Hi"}};
    CHECK(chat_render(&out, one, 1, 1, 1, &err) == 0);
    CHECK_STR_EQ(out.buf, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    sb_reset(&out);
    CHECK(chat_render(&out, one, 1, 1, 0, &err) == 0);
    CHECK_STR_EQ(out.buf, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                          "<think>\n\n</think>\n\n");
    sb_reset(&out);
    CHECK(chat_render(&out, one, 1, 0, 0, &err) == 0);
    CHECK_STR_EQ(out.buf, "<|im_start|>user\nHi<|im_end|>\n");

    /* Reasoning is dropped from assistant turns before the last query and
     * kept (re-wrapped) on the turn after it. */
    chat_msg hist[] = {{"system", "S"},
                       {"user", "Q1"},
                       {"assistant", "<think>\nR1\n</think>\n\nA1"},
                       {"user", "Q2"},
                       {"assistant", "\n<think>R2</think>A2"}};
    sb_reset(&out);
    CHECK(chat_render(&out, hist, 5, 0, 1, &err) == 0);
    CHECK_STR_EQ(out.buf, "<|im_start|>system\nS<|im_end|>\n"
                          "<|im_start|>user\nQ1<|im_end|>\n"
                          "<|im_start|>assistant\nA1<|im_end|>\n"
                          "<|im_start|>user\nQ2<|im_end|>\n"
                          "<|im_start|>assistant\n<think>\nR2\n</think>\n\nA2<|im_end|>\n");
    /* A system message after the first renders like a user turn; tool
     * results are grouped into one user turn. */
    chat_msg tools[] = {{"user", "Q"}, {"system", "late"}, {"tool", "r1"}, {"tool", "r2"}};
    sb_reset(&out);
    CHECK(chat_render(&out, tools, 4, 1, 1, &err) == 0);
    CHECK_STR_EQ(out.buf, "<|im_start|>user\nQ<|im_end|>\n<|im_start|>system\nlate<|im_end|>\n"
                          "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n"
                          "<tool_response>\nr2\n</tool_response><|im_end|>\n"
                          "<|im_start|>assistant\n");

    chat_msg bad[] = {{"user", "x"}, {"robot", "y"}};
    CHECK(chat_render(&out, bad, 2, 1, 1, &err) < 0);
    CHECK_MSG(strstr(err.msg, "message 1") && strstr(err.msg, "robot"), "%s", err.msg);
    chat_msg null_content[] = {{"user", NULL}};
    CHECK(chat_render(&out, null_content, 1, 1, 1, &err) < 0);
    CHECK(chat_render(&out, one, 0, 1, 1, &err) < 0);
    sb_release(&out);
}

int main(void)
{
    const char *src = getenv("top_srcdir");
    snprintf(fixtures, sizeof fixtures, "%s/tests/fixtures/tok", src ? src : ".");
    test_merges();
    test_bytes();
    test_added();
    test_errors();
    test_qwen3();
    test_chat();
    return check_exit("test_tok");
}
