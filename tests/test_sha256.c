/* test_sha256.c - SHA-256 against the FIPS 180-4 / NIST CAVS vectors, and
 * streaming in uneven pieces against one-shot hashing. */
#include "check.h"
#include "sha256.h"

#include <stdlib.h>

static void check_vector(const char *msg, size_t n, const char *want)
{
    char hex[SHA256_HEX_SIZE];
    sha256_hex(msg, n, hex);
    CHECK_STR_EQ(hex, want);
}

int main(void)
{
    check_vector("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_vector("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    check_vector(m448, strlen(m448),
                 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklm"
                       "nopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    check_vector(m896, strlen(m896),
                 "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    /* Lengths around the padding boundary (55, 56, 64 bytes): cross-checked
     * with coreutils sha256sum. */
    check_vector("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 55,
                 "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
    check_vector("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 56,
                 "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
    check_vector("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 64,
                 "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");

    /* One million 'a', fed in pieces of varying size. */
    size_t total = 1000000;
    char *buf = malloc(total);
    memset(buf, 'a', total);
    sha256_ctx c;
    sha256_init(&c);
    size_t off = 0, piece = 1;
    while (off < total) {
        size_t n = piece < total - off ? piece : total - off;
        sha256_update(&c, buf + off, n);
        off += n;
        piece = piece * 3 % 1000 + 1;
    }
    char hex[SHA256_HEX_SIZE];
    sha256_final_hex(&c, hex);
    CHECK_STR_EQ(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

    /* Streaming equals one-shot for every split point of a 200-byte message. */
    char msg[200];
    for (int i = 0; i < 200; i++)
        msg[i] = (char)(i * 7 + 3);
    char want[SHA256_HEX_SIZE];
    sha256_hex(msg, sizeof msg, want);
    int same = 1;
    for (size_t split = 0; split <= sizeof msg; split++) {
        sha256_init(&c);
        sha256_update(&c, msg, split);
        sha256_update(&c, msg + split, sizeof msg - split);
        sha256_final_hex(&c, hex);
        same &= strcmp(hex, want) == 0;
    }
    CHECK(same);
    free(buf);
    return check_exit("test_sha256");
}
