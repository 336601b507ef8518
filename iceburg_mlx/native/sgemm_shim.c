/* iceburg-mlx: a cblas_sgemm that sends matrix-vector products to cblas_sgemv.
 *
 * MLX's CPU backend calls cblas_sgemm for every f32 matmul, including the M=1 products of
 * single-stream decoding. OpenBLAS's sgemm packs the whole weight panel for those (~3x the
 * memory traffic of a GEMV); sgemv streams it once. Loaded with RTLD_GLOBAL before mlx.core, this
 * library's cblas_sgemm is the one MLX binds to; everything else goes to the real BLAS, which
 * iceburg_blas_init() opens. Row-major only (what MLX uses); anything else is passed through.
 */
#include <dlfcn.h>
#include <stddef.h>

enum { RowMajor = 101, NoTrans = 111, Trans = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);

typedef void (*setthreads_fn)(int);
typedef int (*getthreads_fn)(void);

static sgemm_fn real_sgemm = NULL;
static sgemv_fn real_sgemv = NULL;
static setthreads_fn real_set_threads = NULL;
static getthreads_fn real_get_threads = NULL;
/* GEMMs with M <= 16 and M*N*K below this run on one thread: small products (LoRA matrices in a
 * batched decode step) gain little from OpenBLAS threads, whose spin-waiting then competes with
 * the packed kernels' helper thread (a batched decode step varied 110-200 ms with, 124-134 without). */
static long small_gemm_flops = 1L << 22;
static int gemv_enabled = 1;
static long n_gemv = 0, n_gemm = 0;

static int qw_try(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc);

int iceburg_blas_init(const char *blas_path) {
    void *h = dlopen(blas_path, RTLD_NOW | RTLD_GLOBAL);
    if (!h) return -1;
    real_sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
    real_sgemv = (sgemv_fn)dlsym(h, "cblas_sgemv");
    real_set_threads = (setthreads_fn)dlsym(h, "openblas_set_num_threads");
    real_get_threads = (getthreads_fn)dlsym(h, "openblas_get_num_threads");
    return (real_sgemm && real_sgemv) ? 0 : -2;
}

void iceburg_blas_set_gemv(int on) { gemv_enabled = on; }
void iceburg_blas_set_small_gemm(long flops) { small_gemm_flops = flops; }
long iceburg_blas_gemv_calls(void) { return n_gemv; }
long iceburg_blas_gemm_calls(void) { return n_gemm; }

void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    if (order == RowMajor && K > 0 && qw_try(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) return;
    if (gemv_enabled && order == RowMajor && K > 0 && (ta == NoTrans || ta == Trans) &&
        (tb == NoTrans || tb == Trans)) {
        if (M == 1) {
            /* C[0, 0:N] = alpha * a . op(B) + beta * C; a = A's only row (or column if ta=Trans). */
            int incx = (ta == NoTrans) ? 1 : lda;
            n_gemv++;
            if (tb == NoTrans) /* B is K x N: y = B^T a */
                real_sgemv(RowMajor, Trans, K, N, alpha, B, ldb, A, incx, beta, C, 1);
            else               /* B is stored N x K: y = B a */
                real_sgemv(RowMajor, NoTrans, N, K, alpha, B, ldb, A, incx, beta, C, 1);
            return;
        }
        if (N == 1) {
            /* C[0:M, 0] (stride ldc) = alpha * op(A) b + beta * C; b = op(B)'s only column. */
            int incx = (tb == NoTrans) ? ldb : 1;
            n_gemv++;
            if (ta == NoTrans) /* A is M x K */
                real_sgemv(RowMajor, NoTrans, M, K, alpha, A, lda, B, incx, beta, C, ldc);
            else               /* A is stored K x M */
                real_sgemv(RowMajor, Trans, K, M, alpha, A, lda, B, incx, beta, C, ldc);
            return;
        }
    }
    n_gemm++;
    if (M <= 16 && (long)M * N * K < small_gemm_flops && real_set_threads && real_get_threads) {
        int nt = real_get_threads();
        if (nt > 1) {
            real_set_threads(1);
            real_sgemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
            real_set_threads(nt);
            return;
        }
    }
    real_sgemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ---------------------------------------------------------------------------------------------
 * Quantized-weight products for small M (decoding).
 *
 * A model loaded from a quantized file (GGUF Q4_0/Q4_1/Q8_0, MLX affine 4/8-bit) computes on f32
 * weights dequantized from it, because MLX's CPU quantized matmul does not use BLAS. For the
 * matrix-vector products of decoding, though, the cost is reading the weights: 4 bytes per weight
 * in f32 against ~0.6 (4-bit) or ~1.1 (8-bit) in the packed form. iceburg_qw_register() records,
 * for a dense f32 weight W (N x K, row-major), the packed form it was dequantized from (MLX's
 * affine layout: codes packed little-endian in uint32 words, one f32 scale and bias per group;
 * W[n, k] = scale * code + bias). When MLX asks for x @ W^T with at most QW_MAX_M rows of x and B
 * is exactly a registered W, the product is computed from the packed form instead. The caller
 * keeps W and the packed arrays alive while registered (so W's address cannot be reused).
 * ------------------------------------------------------------------------------------------- */
#include <stdint.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define QW_SLOTS 4096 /* open addressing, power of two */
#define QW_MAX_M 16
#define QW_TILE 4     /* rows of x per pass over the weights */

typedef struct {
    const float *w; /* key: the dense weight's data */
    int n, k, bits, group;
    const uint8_t *codes; /* n rows of k*bits/8 bytes */
    const float *scales, *biases; /* n rows of k/group */
} qw_entry;

static qw_entry qw_table[QW_SLOTS];
static long qw_count = 0, n_qw = 0;
static int qw_enabled = 1;

static unsigned qw_hash(const void *p) {
    uintptr_t v = (uintptr_t)p;
    v ^= v >> 17;
    v *= 0x9E3779B97F4A7C15ull;
    return (unsigned)(v >> 40) & (QW_SLOTS - 1);
}

#define QW_TOMB ((const float *)1) /* a removed entry: probing goes on past it */

static qw_entry *qw_find(const float *w) {
    if (qw_count == 0) return NULL;
    for (unsigned i = qw_hash(w), probe = 0; probe < QW_SLOTS; i = (i + 1) & (QW_SLOTS - 1), probe++) {
        const float *key = __atomic_load_n(&qw_table[i].w, __ATOMIC_ACQUIRE);
        if (key == w) return &qw_table[i];
        if (key == NULL) return NULL;
    }
    return NULL;
}

/* 0 ok; -1 unsupported shape/type; -2 table full; -3 already registered. Not thread-safe against
 * other writers (the Python side holds a lock); readers see an entry only once it is complete. */
int iceburg_qw_register(const float *w, int n, int k, int bits, int group, const void *codes,
                        const float *scales, const float *biases) {
    if (!w || w == QW_TOMB || n <= 0 || k <= 0 || (bits != 4 && bits != 8) || group < 32 || group % 32 ||
        k % group)
        return -1;
    if (qw_find(w)) return -3;
    if (qw_count >= QW_SLOTS / 2) return -2;
    unsigned i = qw_hash(w);
    while (qw_table[i].w != NULL && qw_table[i].w != QW_TOMB) i = (i + 1) & (QW_SLOTS - 1);
    qw_entry *e = &qw_table[i];
    e->n = n; e->k = k; e->bits = bits; e->group = group;
    e->codes = (const uint8_t *)codes; e->scales = scales; e->biases = biases;
    __atomic_store_n(&e->w, w, __ATOMIC_RELEASE);
    qw_count++;
    return 0;
}

/* Products in flight (a product counts itself before it looks an entry up). */
static long qw_active = 0;

/* Remove an entry. 0: done, and no product is still using its arrays (they may be freed); 1: done,
 * but products were still running after ~0.1 s (keep the arrays); -1: not registered. */
int iceburg_qw_unregister(const float *w) {
    qw_entry *e = qw_find(w);
    if (!e) return -1;
    __atomic_store_n(&e->w, QW_TOMB, __ATOMIC_SEQ_CST);
    qw_count--;
    /* A product that began before the store may hold the entry; one that begins after cannot
     * find it. Wait for a moment with none in flight (decode runs them one at a time). */
    for (int i = 0; i < 100000; i++) {
        if (__atomic_load_n(&qw_active, __ATOMIC_SEQ_CST) == 0) return 0;
        sched_yield();
    }
    return 1;
}

void iceburg_qw_set_enabled(int on) { qw_enabled = on; }
long iceburg_qw_calls(void) { return n_qw; }
long iceburg_qw_entries(void) { return qw_count; }

#ifdef __AVX512F__
#include <immintrin.h>

/* 16 codes (u8) -> 16 floats */
static inline __m512 qw_cvt16(__m128i c) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c)); }

/* y[r, n] (r < TM) for rows n in [n0, n1); xp holds each x row with every 4-bit group's even
 * elements first and odd ones second (the order the nibbles unpack in). */
#define QW_KERNEL(TM)                                                                                   \
    static void qw_rows_##TM(const qw_entry *e, const float *xp, int k, float *y, int ldy, float alpha,  \
                             float beta, int n0, int n1) {                                              \
        const int g = e->group, ng = k / g, row_bytes = k * e->bits / 8;                                \
        const __m128i lo_mask = _mm_set1_epi8(0x0F);                                                    \
        for (int n = n0; n < n1; n++) {                                                                 \
            const uint8_t *codes = e->codes + (size_t)n * row_bytes;                                    \
            const float *sc = e->scales + (size_t)n * ng, *bi = e->biases + (size_t)n * ng;             \
            __m512 acc0[TM], acc1[TM];                                                                  \
            for (int r = 0; r < TM; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();                       \
            for (int c = 0; c < k; c += 32) {                                                           \
                const __m512 s = _mm512_set1_ps(sc[c / g]), b = _mm512_set1_ps(bi[c / g]);              \
                __m512 w0, w1;                                                                          \
                if (e->bits == 4) {                                                                     \
                    __m128i q = _mm_loadu_si128((const __m128i *)(codes + c / 2));                      \
                    w0 = _mm512_fmadd_ps(qw_cvt16(_mm_and_si128(q, lo_mask)), s, b);                    \
                    w1 = _mm512_fmadd_ps(qw_cvt16(_mm_and_si128(_mm_srli_epi16(q, 4), lo_mask)), s, b);  \
                } else {                                                                                \
                    w0 = _mm512_fmadd_ps(qw_cvt16(_mm_loadu_si128((const __m128i *)(codes + c))), s, b); \
                    w1 = _mm512_fmadd_ps(qw_cvt16(_mm_loadu_si128((const __m128i *)(codes + c + 16))), s, b); \
                }                                                                                       \
                for (int r = 0; r < TM; r++) {                                                          \
                    const float *xr = xp + (size_t)r * k + c;                                           \
                    acc0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), acc0[r]);                        \
                    acc1[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), acc1[r]);                   \
                }                                                                                       \
            }                                                                                           \
            for (int r = 0; r < TM; r++) {                                                              \
                float t = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));                        \
                float *out = y + (size_t)r * ldy + n;                                                   \
                *out = alpha * t + (beta == 0.f ? 0.f : beta * *out);                                   \
            }                                                                                           \
        }                                                                                               \
    }
QW_KERNEL(1)
QW_KERNEL(2)
QW_KERNEL(3)
QW_KERNEL(4)

static void qw_rows(const qw_entry *e, int m, const float *xp, int k, float *y, int ldy, float alpha,
                    float beta, int n0, int n1) {
    switch (m) {
    case 1: qw_rows_1(e, xp, k, y, ldy, alpha, beta, n0, n1); break;
    case 2: qw_rows_2(e, xp, k, y, ldy, alpha, beta, n0, n1); break;
    case 3: qw_rows_3(e, xp, k, y, ldy, alpha, beta, n0, n1); break;
    default: qw_rows_4(e, xp, k, y, ldy, alpha, beta, n0, n1); break;
    }
}
#else
/* Portable form of the same (compilers vectorise the inner loops). */
static void qw_rows(const qw_entry *e, int m, const float *xp, int k, float *y, int ldy, float alpha,
                    float beta, int n0, int n1) {
    const int g = e->group, ng = k / g, row_bytes = k * e->bits / 8;
    for (int n = n0; n < n1; n++) {
        const uint8_t *codes = e->codes + (size_t)n * row_bytes;
        const float *sc = e->scales + (size_t)n * ng, *bi = e->biases + (size_t)n * ng;
        float acc[QW_TILE][32] = {{0}};
        for (int c = 0; c < k; c += 32) {
            float w[32], s = sc[c / g], b = bi[c / g];
            if (e->bits == 4)
                for (int j = 0; j < 16; j++) {
                    uint8_t q = codes[c / 2 + j];
                    w[j] = (float)(q & 15) * s + b;
                    w[16 + j] = (float)(q >> 4) * s + b;
                }
            else
                for (int j = 0; j < 32; j++) w[j] = (float)codes[c + j] * s + b;
            for (int r = 0; r < m; r++)
                for (int j = 0; j < 32; j++) acc[r][j] += w[j] * xp[(size_t)r * k + c + j];
        }
        for (int r = 0; r < m; r++) {
            float t = 0.f;
            for (int j = 0; j < 32; j++) t += acc[r][j];
            float *out = y + (size_t)r * ldy + n;
            *out = alpha * t + (beta == 0.f ? 0.f : beta * *out);
        }
    }
}
#endif

/* x rows in the order the codes unpack: for 4-bit, each group's even elements then odd ones. */
static void qw_pack_x(const qw_entry *e, int m, const float *A, int lda, float *xp) {
    const int k = e->k;
    for (int r = 0; r < m; r++) {
        const float *x = A + (size_t)r * lda;
        float *o = xp + (size_t)r * k;
        if (e->bits == 8) {
            memcpy(o, x, sizeof(float) * k);
            continue;
        }
        for (int c = 0; c < k; c += 32)
            for (int j = 0; j < 16; j++) {
                o[c + j] = x[c + 2 * j];
                o[c + 16 + j] = x[c + 2 * j + 1];
            }
    }
}

/* One helper thread takes the second half of the rows. It spins briefly for the next product
 * (decode issues them back to back), then sleeps on a condition variable, so it never holds a
 * core against other threads for long (OpenMP's default spinning starved a server's threads). */
#include <pthread.h>

typedef struct {
    const qw_entry *e;
    int m, ldc;
    const float *xp;
    float *C, alpha, beta;
    int n0, n1;
} qw_job;

static pthread_mutex_t qw_mu = PTHREAD_MUTEX_INITIALIZER;  /* guards posted/cond */
static pthread_mutex_t qw_busy = PTHREAD_MUTEX_INITIALIZER; /* one caller uses the helper at a time */
static pthread_cond_t qw_cv = PTHREAD_COND_INITIALIZER;
static long qw_posted = 0, qw_finished = 0;
static qw_job qw_pending;
static int qw_helper = -1; /* -1 not tried, 0 unavailable, 1 running */
#define QW_SPIN 2000

static void qw_run(const qw_job *j) { qw_rows(j->e, j->m, j->xp, j->e->k, j->C, j->ldc, j->alpha, j->beta, j->n0, j->n1); }

static void *qw_worker(void *arg) {
    (void)arg;
    long seen = 0;
    for (;;) {
        for (int i = 0; i < QW_SPIN && __atomic_load_n(&qw_posted, __ATOMIC_ACQUIRE) == seen; i++)
#if defined(__x86_64__)
            __builtin_ia32_pause();
#else
            ;
#endif
        if (__atomic_load_n(&qw_posted, __ATOMIC_ACQUIRE) == seen) {
            pthread_mutex_lock(&qw_mu);
            while (__atomic_load_n(&qw_posted, __ATOMIC_ACQUIRE) == seen) pthread_cond_wait(&qw_cv, &qw_mu);
            pthread_mutex_unlock(&qw_mu);
        }
        seen = __atomic_load_n(&qw_posted, __ATOMIC_ACQUIRE);
        qw_job j = qw_pending;
        qw_run(&j);
        __atomic_store_n(&qw_finished, seen, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* A forked child has no helper thread: start over there. */
static void qw_after_fork_child(void) {
    pthread_mutex_init(&qw_mu, NULL);
    pthread_mutex_init(&qw_busy, NULL);
    pthread_cond_init(&qw_cv, NULL);
    qw_posted = qw_finished = 0;
    qw_helper = -1;
}

static int qw_start_helper(void) {
    if (qw_helper < 0) {
        static int atfork_done = 0;
        if (!atfork_done) {
            pthread_atfork(NULL, NULL, qw_after_fork_child);
            atfork_done = 1;
        }
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        qw_helper = pthread_create(&t, &a, qw_worker, NULL) == 0 ? 1 : 0;
        pthread_attr_destroy(&a);
    }
    return qw_helper;
}

static void qw_gemm(const qw_entry *e, int M, const float *A, int lda, float alpha, float beta, float *C,
                    int ldc) {
    float stack[QW_TILE * 4096];
    float *xp = e->k <= 4096 ? stack : (float *)malloc(sizeof(float) * QW_TILE * (size_t)e->k);
    for (int r0 = 0; r0 < M; r0 += QW_TILE) {
        int m = M - r0 < QW_TILE ? M - r0 : QW_TILE;
        qw_pack_x(e, m, A + (size_t)r0 * lda, lda, xp);
        qw_job all = {e, m, ldc, xp, C + (size_t)r0 * ldc, alpha, beta, 0, e->n};
        if ((long)e->n * e->k >= 65536 && pthread_mutex_trylock(&qw_busy) == 0) {
            if (qw_start_helper() == 1) {
                int half = e->n / 2;
                qw_job mine = all, theirs = all;
                mine.n1 = half;
                theirs.n0 = half;
                qw_pending = theirs;
                pthread_mutex_lock(&qw_mu);
                long ticket = __atomic_add_fetch(&qw_posted, 1, __ATOMIC_RELEASE);
                pthread_cond_signal(&qw_cv);
                pthread_mutex_unlock(&qw_mu);
                qw_run(&mine);
                for (int i = 0; __atomic_load_n(&qw_finished, __ATOMIC_ACQUIRE) != ticket; i++)
                    if (i > 1000) sched_yield();
                pthread_mutex_unlock(&qw_busy);
                continue;
            }
            pthread_mutex_unlock(&qw_busy);
        }
        qw_run(&all);
    }
    if (xp != stack) free(xp);
}

/* Called from cblas_sgemm: 1 if the product was computed from a registered packed weight. */
static int qw_try(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc) {
    if (!qw_enabled || ta != NoTrans || tb != Trans || M > QW_MAX_M || M < 1 || qw_count == 0) return 0;
    __atomic_add_fetch(&qw_active, 1, __ATOMIC_SEQ_CST);
    qw_entry *e = qw_find(B);
    int used = e && e->n == N && e->k == K && ldb == K;
    if (used) {
        n_qw++;
        qw_gemm(e, M, A, lda, alpha, beta, C, ldc);
    }
    __atomic_sub_fetch(&qw_active, 1, __ATOMIC_SEQ_CST);
    return used;
}
