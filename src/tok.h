/*
 * tok.h - the Qwen3 tokenizer: byte-level BPE read from a Hugging Face
 * tokenizer.json, giving the same ids and text as HF `tokenizers`.
 *
 * Encoding, as tokenizers does it for Qwen3's file:
 *   1. added tokens ("<|im_start|>", "<think>", ...) are found whole in the
 *      raw text, leftmost-longest, and map to their ids directly;
 *   2. each stretch between them is NFC-normalised (utf8proc) and split by
 *      the pre-tokenizer regex from the file (pcre2, UTF + UCP), pieces
 *      kept "isolated";
 *   3. each piece's bytes are mapped to the GPT-2 byte alphabet and merged
 *      by BPE rank (lowest rank first, leftmost on ties).
 * Decoding maps ids back to their strings and the byte alphabet back to
 * bytes; byte sequences that are not valid UTF-8 (a completion cut inside a
 * character) become U+FFFD, as tokenizers' lossy decode does.
 *
 * A tok is immutable after tok_open and safe to share between threads.
 */
#ifndef Q3_TOK_H
#define Q3_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "strbuf.h"

typedef struct tok tok;

/* Reads DIR/tokenizer.json. Errors name the file and what is wrong. */
int tok_open(tok **out, const char *dir, errbuf *err);
void tok_close(tok *t);

/* Encodes text[0..len) (UTF-8; invalid UTF-8 is an error naming the byte
 * offset). *ids is malloc'ed and owned by the caller. */
int tok_encode(const tok *t, const char *text, size_t len, int32_t **ids, size_t *n_ids,
               errbuf *err);

/* Appends the text of ids to out. Unknown ids are an error. */
int tok_decode(const tok *t, const int32_t *ids, size_t n, strbuf *out, errbuf *err);

/* Highest id + 1 over the vocabulary and the added tokens. */
int tok_vocab_size(const tok *t);

/* The id of a token string as written in the file (an added token's content
 * or a vocabulary entry in the byte alphabet), or -1. */
int32_t tok_token_id(const tok *t, const char *token);

#endif
