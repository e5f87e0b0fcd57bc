/*
 * engine.c - backend choice and the thin wrappers of engine.h.
 *
 * The CUDA backend is referenced only when configure built it (HAVE_CUDA);
 * cuda/cuda_engine.h then provides
 *     int cuda_engine_open(eng **out, const model *m, const eng_options *opts,
 *                          errbuf *err);
 *     int cuda_engine_available(void);   (1 when a usable GPU is present)
 * A CPU-only build asked for CUDA says so instead of failing later.
 */
#include "config.h"

#include "engine.h"

#ifdef HAVE_CUDA
#include "cuda_engine.h"
#endif

int eng_open(eng **out, const model *m, const eng_options *opts, errbuf *err)
{
    *out = NULL;
    switch (opts->backend) {
    case ENG_BACKEND_CPU:
        return cpu_engine_open(out, m, opts, err);
    case ENG_BACKEND_CUDA:
#ifdef HAVE_CUDA
        return cuda_engine_open(out, m, opts, err);
#else
        return errorf(err, "this qwen3-batch was built without CUDA (configure found no nvcc); "
                           "use backend cpu or rebuild with --with-cuda");
#endif
    case ENG_BACKEND_AUTO:
    default:
#ifdef HAVE_CUDA
        if (cuda_engine_available())
            return cuda_engine_open(out, m, opts, err);
#endif
        return cpu_engine_open(out, m, opts, err);
    }
}

void eng_close(eng *e)
{
    if (e)
        e->vt->close(e);
}

int eng_seq_add(eng *e, const sample_params *sp, int *seq, errbuf *err)
{
    return e->vt->seq_add(e, sp, seq, err);
}

int eng_seq_fork(eng *e, int src, int n_prefix, const sample_params *sp, int *seq, errbuf *err)
{
    return e->vt->seq_fork(e, src, n_prefix, sp, seq, err);
}

void eng_seq_release(eng *e, int seq)
{
    e->vt->seq_release(e, seq);
}

int eng_step(eng *e, const eng_item *items, int n_items, float *logits, int32_t *sampled,
             errbuf *err)
{
    return e->vt->step(e, items, n_items, logits, sampled, err);
}

int64_t eng_kv_free_tokens(const eng *e)
{
    return e->vt->kv_free_tokens(e);
}
