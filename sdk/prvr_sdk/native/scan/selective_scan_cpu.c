/* Selective scan on the CPU: a plain C kernel (no torch or ONNX Runtime headers, compiles in about a
 * second). One copy serves both users: the torch op loads it through ctypes
 * (prvr_export/ops/cpu_kernel.py) and ort_selective_scan.c includes it into ONNX Runtime's custom op.
 * Each (batch, channel) row keeps its N states in a small array and walks time once; the inner loop
 * over N is written so the compiler vectorises it, which needs an exp that inlines. Threads are the
 * caller's job (a ctypes thread pool, or ONNX Runtime's intra-op pool), so this file has no OpenMP
 * runtime.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PRVR_MAX_N 256
#define PRVR_W 16 /* channels per vector block in the forward kernel */

/* exp for float that the compiler can vectorise: range reduction x = k*ln2 + r, |r| <= ln2/2, then
 * the classic degree-6 polynomial (Cephes expf coefficients), scaled by 2^k through the exponent
 * bits. Relative error ~2e-7 on the whole range; inputs below -87 return ~0 (state decays to 0). */
static inline float prvr_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - k * 0.693359375f;
    r = r - k * (-2.12194440e-4f);
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)), vectorisable: with e = exp(-|x|) in (0, 1] and
 * s = e / (2 + e) <= 1/3, log1p(e) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...); seven terms leave a
 * relative error below 2e-8. */
static inline float prvr_softplusf(float x) {
    const float e = prvr_expf(x < 0 ? x : -x);
    const float s = e / (2.0f + e), s2 = s * s;
    float p = 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return (x > 0 ? x : 0.0f) + 2.0f * s * p;
}

static inline double prvr_softplus(double x) { return x > 20 ? x : log1p(exp(x)); }

#define SCALAR float
#define SFX(name) name##_f32
#define EXPV(x) prvr_expf(x)
#define SOFTPLUS(x) prvr_softplusf(x)
#include "selective_scan_impl.h"
#undef SCALAR
#undef SFX
#undef EXPV
#undef SOFTPLUS

#define SCALAR double
#define SFX(name) name##_f64
#define EXPV(x) exp(x)
#define SOFTPLUS(x) prvr_softplus(x)
#include "selective_scan_impl.h"
#undef SCALAR
#undef SFX
#undef EXPV
#undef SOFTPLUS

/* Lets the loader check it found a kernel built from the same interface. */
int prvr_scan_abi_version(void) { return 1; }
