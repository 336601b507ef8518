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

static sgemm_fn real_sgemm = NULL;
static sgemv_fn real_sgemv = NULL;
static int gemv_enabled = 1;
static long n_gemv = 0, n_gemm = 0;

int iceburg_blas_init(const char *blas_path) {
    void *h = dlopen(blas_path, RTLD_NOW | RTLD_GLOBAL);
    if (!h) return -1;
    real_sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
    real_sgemv = (sgemv_fn)dlsym(h, "cblas_sgemv");
    return (real_sgemm && real_sgemv) ? 0 : -2;
}

void iceburg_blas_set_gemv(int on) { gemv_enabled = on; }
long iceburg_blas_gemv_calls(void) { return n_gemv; }
long iceburg_blas_gemm_calls(void) { return n_gemm; }

void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
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
    real_sgemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
