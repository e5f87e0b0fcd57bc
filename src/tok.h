/*
 * tok.h - byte-level BPE tokenizer read from a Hugging Face tokenizer.json.
 *
 * Encodes exactly as HF `tokenizers` does for Qwen3 (and other byte-level
 * BPE files of the same shape):
 *   1. added tokens (the "added_tokens" list) are cut out of the text first,
 *      leftmost-longest, with their lstrip/rstrip/single_word flags; tokens
 *      with "normalized": true are matched after normalisation;
 *   2. the rest is NFC-normalised (normalizer "NFC", or none);
 *   3. split by the pre-tokenizer regex from the file (PCRE2 with UTF and
 *      UCP; behaviour "Isolated"), or by the GPT-2 regex when the ByteLevel
 *      pre-tokenizer has use_regex;
 *   4. each piece's bytes become the ByteLevel symbols and are merged by
 *      merge rank (lowest first, leftmost among equals).
 * Decoding maps tokens back to bytes with the ByteLevel decoder (added
 * tokens as their text) and, like HF, replaces invalid UTF-8 in the result
 * with U+FFFD.
 *
 * A tok is immutable after tok_open; any number of threads may call the
 * encode/decode functions on it at once. Each thread keeps its own cache of
 * already-merged words, freed when the thread exits or at tok_close.
 */
#ifndef Q3_TOK_H
#define Q3_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "strbuf.h"

typedef struct tok tok;

/* Reads DIR/tokenizer.json. On success *out owns the tokenizer (free with
 * tok_close) and 0 is returned; on failure -1 with err naming the file and,
 * for bad JSON, the line and column or the offending entry. */
int tok_open(tok **out, const char *dir, errbuf *err);

/* Same, from a file path instead of a directory. */
int tok_open_file(tok **out, const char *path, errbuf *err);

/* Frees t and every thread's word cache. No encode/decode call on t may be
 * running. NULL is ignored. */
void tok_close(tok *t);

/* Encodes len bytes of UTF-8 text (NUL bytes are ordinary characters).
 * On success *ids is a malloc'ed array the caller frees (NULL when
 * *n_ids == 0) and 0 is returned. Invalid UTF-8 is an error naming the
 * byte offset; *ids is then NULL. No special tokens are added: the text is
 * taken as is (chat_render builds prompts). */
int tok_encode(const tok *t, const char *text, size_t len, int32_t **ids, size_t *n_ids,
               errbuf *err);

/* Appends the text of ids to out. Ids that name no token are skipped, as HF
 * does; invalid UTF-8 in the joined bytes (a multi-byte character cut
 * between calls) becomes U+FFFD. Returns 0 (the status is there for callers
 * that check it uniformly). */
int tok_decode(const tok *t, const int32_t *ids, size_t n, strbuf *out, errbuf *err);

/* The raw bytes of one token (byte-level decoded; an added token's text),
 * borrowed from t, or NULL (with *len 0) when id names no token. For
 * streaming output, where a character may span two tokens. */
const char *tok_token_bytes(const tok *t, int32_t id, size_t *len);

/* Highest token id + 1, added tokens included. */
int tok_vocab_size(const tok *t);

/* Id of a token given by its text in the file ("<think>", "<|im_end|>", or
 * a vocabulary entry in its byte-level spelling such as "Ġthe"); -1 if
 * absent. Added tokens are looked up first, as HF does. */
int32_t tok_token_id(const tok *t, const char *token);

#endif
