/* float16 rows times a few float32 queries, and float16 -> float32 decoding, for ExactIndex search.
 *
 * prvr_f16dot:  out[i, j] = sum_k float(rows[i, k]) * q[j, k]   for rows [n, d] float16 (raw bits),
 *               q [nq, d] float32, out [n, nq] float32, nq >= 1 (queries in groups of 8,
 *               each group passing over an L1-sized tile of rows, so rows are read from memory once).
 * prvr_f16_decode: dst[i] = float(src[i]) for n float16 values.
 *
 * Why: a single query against a million clips is a matrix-vector product, bound by reading the float16
 * matrix once. numpy can only decode float16 in extra passes over a float32 copy and then run a GEMV,
 * which costs several times the read. Here each row is converted in registers (F16C) and multiplied
 * with FMA while it streams in, on several threads over contiguous row ranges.
 *
 * The SIMD code carries a target attribute instead of global -m flags, so the rest of the file (the
 * CPU check in particular) is plain x86-64 and safe to call anywhere: Python calls prvr_f16dot_cpu_ok()
 * before anything else and keeps numpy when it returns 0. On other architectures everything compiles to
 * stubs that report "unsupported".
 *
 * Numerics: each (row, query) pair sums 8 lanes of products with FMA, then adds the lanes and the
 * scalar tail (d % 8) -- float32 throughout, differing from BLAS only in summation order. float16
 * subnormals, zeros and negative values convert exactly (vcvtph2ps is exact for every finite value).
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define PRVR_F16DOT_ABI 1
#define PRVR_GROUP 8   /* queries per pass over a row tile (register budget) */
#define PRVR_TILE_BYTES (16 << 10) /* float16 bytes of a row tile: stays in L1 across query groups */
#define PRVR_PF_ROWS 16            /* software prefetch distance, in rows (12 KiB at d = 384) */
#define PRVR_MAX_THREADS 256
/* Work per thread at least (multiply-adds of a product, values of a decode): below this, creating a
 * thread -- and, on a loaded machine, waiting for it to be scheduled -- costs more than it saves. */
#define PRVR_MIN_MACS_PER_THREAD (1 << 22) /* ~0.5 ms of products: dot rows per thread = this / (nq*d) */
#define PRVR_MIN_VALUES_PER_THREAD (1 << 18)

int prvr_f16dot_abi_version(void) { return PRVR_F16DOT_ABI; }

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* 1 when the CPU and the OS support AVX2, FMA and F16C (CPUID plus XGETBV: the OS saves YMM state). */
int prvr_f16dot_cpu_ok(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned need1 = (1u << 12) /*fma*/ | (1u << 27) /*osxsave*/ | (1u << 28) /*avx*/ | (1u << 29) /*f16c*/;
    if ((c & need1) != need1) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6u) != 6u) return 0; /* XMM and YMM state enabled by the OS */
    if (__get_cpuid_max(0, 0) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b & (1u << 5)) != 0; /* avx2 */
}

INLINE TGT float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE TGT float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }

/* One row against NQ queries, with S accumulators per query over interleaved 8-value steps. NQ and S are
 * compile-time constants at every call site, so the loops unroll and acc[][] lives in registers
 * (S*NQ accumulators + S row vectors + 1 query vector <= 16 YMM), giving S*NQ independent FMA chains. */
INLINE TGT void row_dot(const uint16_t *row, int64_t d, const float *q, float *out, const int NQ, const int S) {
    __m256 acc[4][PRVR_GROUP];
    for (int s = 0; s < S; ++s)
        for (int j = 0; j < NQ; ++j) acc[s][j] = _mm256_setzero_ps();
    const int64_t step = 8 * S, dS = d / step * step, d8 = d & ~(int64_t)7;
    int64_t k = 0;
    for (; k < dS; k += step) {
        /* Rows are read in address order, one stream the hardware prefetcher follows -- except across
         * the 4 KiB pages of a memory map, so each cache line PRVR_PF_ROWS rows ahead is also requested
         * once here. Prefetches past the end are harmless (they never fault). */
        for (int s = 0; s < S; ++s)
            if (((k + 8 * s) & 31) == 0)
                _mm_prefetch((const char *)(row + PRVR_PF_ROWS * d + k + 8 * s), _MM_HINT_T0);
        __m256 x[4];
        for (int s = 0; s < S; ++s) x[s] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + k + 8 * s)));
        for (int j = 0; j < NQ; ++j)
            for (int s = 0; s < S; ++s)
                acc[s][j] = _mm256_fmadd_ps(x[s], _mm256_loadu_ps(q + j * d + k + 8 * s), acc[s][j]);
    }
    for (; k < d8; k += 8) {
        const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + k)));
        for (int j = 0; j < NQ; ++j) acc[0][j] = _mm256_fmadd_ps(x, _mm256_loadu_ps(q + j * d + k), acc[0][j]);
    }
    for (int j = 0; j < NQ; ++j) {
        __m256 v = acc[0][j];
        for (int s = 1; s < S; ++s) v = _mm256_add_ps(v, acc[s][j]);
        float sum = hsum8(v);
        for (int64_t t = d8; t < d; ++t) sum += f16_to_f32(row[t]) * q[j * d + t];
        out[j] = sum;
    }
}

/* Rows [begin, end) of a row tile against NQ queries, in address order. */
#define DEFINE_RANGE(NQ, S)                                                                             \
    static TGT void range_##NQ(const uint16_t *rows, int64_t d, const float *q, float *out, int64_t ldo,  \
                               int64_t begin, int64_t end) {                                            \
        for (int64_t i = begin; i < end; ++i) row_dot(rows + i * d, d, q, out + i * ldo, (NQ), (S));    \
    }
/* Accumulators per query chosen for >= 4 independent FMA chains within the 16 YMM registers. */
DEFINE_RANGE(1, 4)
DEFINE_RANGE(2, 2)
DEFINE_RANGE(3, 2)
DEFINE_RANGE(4, 2)
DEFINE_RANGE(5, 1)
DEFINE_RANGE(6, 1)
DEFINE_RANGE(7, 1)
DEFINE_RANGE(8, 1)

typedef void (*range_fn)(const uint16_t *, int64_t, const float *, float *, int64_t, int64_t, int64_t);
static const range_fn RANGES[PRVR_GROUP + 1] = {0,       range_1, range_2, range_3, range_4,
                                                range_5, range_6, range_7, range_8};

/* Rows [begin, end) against all nq queries: tiles of rows small enough to stay in L1 while every group
 * of up to PRVR_GROUP queries passes over them, so each float16 row is read from memory once. */
static TGT void dot_range(const uint16_t *rows, int64_t d, const float *q, int64_t nq, float *out,
                          int64_t begin, int64_t end) {
    int64_t tile = PRVR_TILE_BYTES / (2 * d);
    if (tile < 8) tile = 8;
    for (int64_t t0 = begin; t0 < end; t0 += tile) {
        const int64_t t1 = t0 + tile < end ? t0 + tile : end;
        for (int64_t j = 0; j < nq; j += PRVR_GROUP) {
            const int64_t g = nq - j < PRVR_GROUP ? nq - j : PRVR_GROUP;
            RANGES[g](rows, d, q + j * d, out + j, nq, t0, t1);
        }
    }
}

static TGT void decode_range(const uint16_t *src, float *dst, int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + 32 <= end; i += 32) {
        for (int u = 0; u < 32; u += 8)
            _mm256_storeu_ps(dst + i + u, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i + u))));
    }
    for (; i < end; ++i) dst[i] = f16_to_f32(src[i]);
}
#else
int prvr_f16dot_cpu_ok(void) { return 0; }
static void dot_range(const uint16_t *rows, int64_t d, const float *q, int64_t nq, float *out, int64_t begin,
                      int64_t end) {
    (void)rows, (void)d, (void)q, (void)nq, (void)out, (void)begin, (void)end;
}
static void decode_range(const uint16_t *src, float *dst, int64_t begin, int64_t end) {
    (void)src, (void)dst, (void)begin, (void)end;
}
#endif

/* One call's work, shared by its threads: chunks of `chunk` items handed out through an atomic counter,
 * so a thread that the OS deschedules (a loaded machine) delays only the chunk it holds, not a fixed
 * share of the call. */
typedef struct {
    int kind; /* 0: dot, 1: decode */
    const uint16_t *rows;
    int64_t d, nq;
    const float *q;
    float *out;
    int64_t n, chunk;
    int64_t next; /* first item not yet handed out (atomic) */
} job_t;

static int cpu_ok_cached(void) {
    static int ok = -1; /* a benign race: every thread computes the same value */
    if (ok < 0) ok = prvr_f16dot_cpu_ok();
    return ok;
}

static void *worker(void *arg) {
    job_t *job = (job_t *)arg;
    for (;;) {
        const int64_t begin = __atomic_fetch_add(&job->next, job->chunk, __ATOMIC_RELAXED);
        if (begin >= job->n) break;
        const int64_t end = begin + job->chunk < job->n ? begin + job->chunk : job->n;
        if (job->kind == 0)
            dot_range(job->rows, job->d, job->q, job->nq, job->out, begin, end);
        else
            decode_range(job->rows, job->out, begin, end);
    }
    return NULL;
}

/* Run `job` on up to `threads` threads (this one included; fewer when there is little work). A thread
 * that cannot be created is simply not there: the others take its chunks. */
static void run_parallel(job_t *job, int64_t threads, int64_t min_per_thread) {
    if (threads > PRVR_MAX_THREADS) threads = PRVR_MAX_THREADS;
    if (threads > job->n / min_per_thread) threads = job->n / min_per_thread;
    if (threads < 1) threads = 1;
    /* ~8 chunks per thread balance the load; never below a minimum that keeps the counter cold. */
    int64_t chunk = job->n / (threads * 8);
    if (chunk < job->chunk) chunk = job->chunk;
    job->chunk = chunk;
    job->next = 0;
    pthread_t tids[PRVR_MAX_THREADS];
    int started[PRVR_MAX_THREADS];
    for (int64_t t = 1; t < threads; ++t) started[t] = pthread_create(&tids[t], NULL, worker, job) == 0;
    worker(job);
    for (int64_t t = 1; t < threads; ++t)
        if (started[t]) pthread_join(tids[t], NULL);
}

/* out [n, nq] = rows [n, d] (float16 bits) @ q [nq, d]^T. Returns 0, or -1 for arguments it does not
 * take (nq < 1, d < 1, an unsupported CPU), leaving out untouched. The caller decides up to which nq this
 * beats BLAS (compute grows with nq while the read stays the same). */
int prvr_f16dot(const uint16_t *rows, int64_t n, int64_t d, const float *q, int64_t nq, float *out,
                int64_t threads) {
    if (nq < 1 || n < 0 || d < 1 || !cpu_ok_cached()) return -1;
    job_t job = {0, rows, d, nq, q, out, n, 1024, 0};
    const int64_t min_rows = PRVR_MIN_MACS_PER_THREAD / (nq * d) > 0 ? PRVR_MIN_MACS_PER_THREAD / (nq * d) : 1;
    run_parallel(&job, threads, min_rows);
    return 0;
}

/* dst [n] = src [n] (float16 bits -> float32). Returns 0, or -1 on an unsupported CPU. */
int prvr_f16_decode(const uint16_t *src, float *dst, int64_t n, int64_t threads) {
    if (n < 0 || !cpu_ok_cached()) return -1;
    job_t job = {1, src, 0, 0, 0, dst, n, 1 << 16, 0};
    run_parallel(&job, threads, PRVR_MIN_VALUES_PER_THREAD);
    return 0;
}
