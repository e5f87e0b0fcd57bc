/*
 * sha256.h - SHA-256 (FIPS 180-4), for content ids and configuration hashes.
 *
 * Document ids and ledger keys must be stable across runs, machines and
 * versions of this program, so they use a standard hash rather than anything
 * home-grown. None of the libraries we link exports one, hence this file.
 *
 *   sha256_ctx c; sha256_init(&c); sha256_update(&c, data, n); ...
 *   uint8_t digest[32]; sha256_final(&c, digest);
 * or in one call: char hex[SHA256_HEX_SIZE]; sha256_hex(data, n, hex);
 */
#ifndef Q3_SHA256_H
#define Q3_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_SIZE 32
#define SHA256_HEX_SIZE 65 /* 64 lowercase hex digits and a NUL */

typedef struct sha256_ctx {
    uint32_t state[8];
    uint64_t n_bytes;  /* total message length so far */
    uint8_t block[64]; /* pending partial block */
    size_t n_block;
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t n);
/* Writes the digest; the context must be re-initialised before reuse. */
void sha256_final(sha256_ctx *c, uint8_t digest[SHA256_DIGEST_SIZE]);
/* Finishes c and writes the digest as lowercase hex. */
void sha256_final_hex(sha256_ctx *c, char hex[SHA256_HEX_SIZE]);

/* One-shot helpers. */
void sha256(const void *data, size_t n, uint8_t digest[SHA256_DIGEST_SIZE]);
void sha256_hex(const void *data, size_t n, char hex[SHA256_HEX_SIZE]);

#endif
