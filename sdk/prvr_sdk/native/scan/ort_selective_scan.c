/* prvr::SelectiveScan as an ONNX Runtime custom op on the CPU: the torch op's C kernel, in ORT.
 *
 * Why: a bundle's scan node carries a portable body (a `Scan` over time, ~5x the naive reference); this
 * library gives ORT a native kernel for the node instead (~16x), so the Retriever encodes Mamba videos as
 * fast as torch. ORT's C/C++ headers are not installable from a package index, so this file declares the
 * little it uses itself, from facts of the stable, append-only C ABI (onnxruntime_c_api.h):
 *   - the entry point ORT looks up in a library: RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*);
 *   - OrtApiBase = { GetApi(version), GetVersionString() };
 *   - OrtApi is a table of function pointers whose order never changes: SLOT_* are the positions used;
 *   - OrtCustomOp is a versioned struct of callbacks: PrvrCustomOp declares its fields up to version 16
 *     (CreateKernelV2 / KernelComputeV2, which return a status, so bad shapes become ORT errors).
 * Python loads it with SessionOptions.register_custom_ops_library (prvr_sdk.backends.ort_scan).
 *
 * The kernel wants B and C time-major ([Bt,G,L,N]); the node has them [Bt,G,N,L], so they are transposed
 * into a buffer first (N*L per group, small next to the D*N*L recurrence). Channel blocks run on ORT's
 * intra-op thread pool (KernelContext_ParallelFor), so `intra_op_num_threads` governs it as for any op.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "selective_scan_cpu.c" /* the one kernel source, shared with the torch op */

/* Built with -fvisibility=hidden: only these symbols leave the library, so the kernel's own functions
 * bind inside it and never to the torch op's copy (same names, another library) in the same process. */
#define PRVR_EXPORT __attribute__((visibility("default")))

/* ---- the ONNX Runtime C ABI, declared here (opaque handles, a few enum values, table slots) ---- */
typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef void *const PrvrOrtApi; /* OrtApi, used as an array of function pointers */

typedef struct {
    const PrvrOrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} PrvrOrtApiBase;

enum { PRVR_ORT_FAIL = 1, PRVR_ORT_INVALID_ARGUMENT = 2 };     /* OrtErrorCode */
enum { PRVR_ONNX_FLOAT = 1 };                                 /* ONNXTensorElementDataType */
enum { PRVR_IO_REQUIRED = 0 };                                /* OrtCustomOpInputOutputCharacteristic */
enum { PRVR_MEM_DEFAULT = 0 };                                /* OrtMemType */
/* The API version asked for: 18 is the oldest onnxruntime prvr-sdk supports (pyproject), and has every
 * slot below (KernelContext_ParallelFor arrived in 17). */
#define PRVR_ORT_API_VERSION 18
#define PRVR_CUSTOM_OP_VERSION 16 /* the OrtCustomOp fields declared below */

/* Positions in the OrtApi table (0-based). */
enum {
    SLOT_CreateStatus = 0,
    SLOT_CreateCustomOpDomain = 26,
    SLOT_CustomOpDomain_Add = 27,
    SLOT_AddCustomOpDomain = 28,
    SLOT_GetTensorMutableData = 51,
    SLOT_GetDimensionsCount = 61,
    SLOT_GetDimensions = 62,
    SLOT_GetTensorTypeAndShape = 65,
    SLOT_KernelInfoGetAttribute_int64 = 86,
    SLOT_KernelContext_GetInput = 90,
    SLOT_KernelContext_GetOutput = 91,
    SLOT_ReleaseTensorTypeAndShapeInfo = 99,
    SLOT_KernelContext_ParallelFor = 274,
};

typedef OrtStatus *(*FnCreateStatus)(int code, const char *msg);
typedef OrtStatus *(*FnCreateCustomOpDomain)(const char *domain, OrtCustomOpDomain **out);
typedef OrtStatus *(*FnCustomOpDomain_Add)(OrtCustomOpDomain *domain, const void *op);
typedef OrtStatus *(*FnAddCustomOpDomain)(OrtSessionOptions *options, OrtCustomOpDomain *domain);
typedef OrtStatus *(*FnGetTensorMutableData)(OrtValue *value, void **out);
typedef OrtStatus *(*FnGetDimensionsCount)(const OrtTensorTypeAndShapeInfo *info, size_t *out);
typedef OrtStatus *(*FnGetDimensions)(const OrtTensorTypeAndShapeInfo *info, int64_t *dims, size_t n);
typedef OrtStatus *(*FnGetTensorTypeAndShape)(const OrtValue *value, OrtTensorTypeAndShapeInfo **out);
typedef OrtStatus *(*FnKernelInfoGetAttribute_int64)(const OrtKernelInfo *info, const char *name, int64_t *out);
typedef OrtStatus *(*FnKernelContext_GetInput)(const OrtKernelContext *ctx, size_t index, const OrtValue **out);
typedef OrtStatus *(*FnKernelContext_GetOutput)(OrtKernelContext *ctx, size_t index, const int64_t *dims,
                                                size_t n, OrtValue **out);
typedef void (*FnReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo *info);
typedef OrtStatus *(*FnKernelContext_ParallelFor)(const OrtKernelContext *ctx, void (*fn)(void *, size_t),
                                                  size_t total, size_t num_batch, void *data);

#define ORT_FN(api, name) ((Fn##name)(api)[SLOT_##name])
#define ORT_TRY(expr)                                                                                        \
    do {                                                                                                     \
        OrtStatus *status_ = (expr);                                                                         \
        if (status_) return status_;                                                                         \
    } while (0)

/* OrtCustomOp up to version 16, in the header's field order. */
typedef struct PrvrCustomOp PrvrCustomOp;
struct PrvrCustomOp {
    uint32_t version;
    void *(*CreateKernel)(const PrvrCustomOp *op, const PrvrOrtApi *api, const OrtKernelInfo *info);
    const char *(*GetName)(const PrvrCustomOp *op);
    const char *(*GetExecutionProviderType)(const PrvrCustomOp *op);
    int (*GetInputType)(const PrvrCustomOp *op, size_t index);
    size_t (*GetInputTypeCount)(const PrvrCustomOp *op);
    int (*GetOutputType)(const PrvrCustomOp *op, size_t index);
    size_t (*GetOutputTypeCount)(const PrvrCustomOp *op);
    void (*KernelCompute)(void *kernel, OrtKernelContext *ctx);
    void (*KernelDestroy)(void *kernel);
    int (*GetInputCharacteristic)(const PrvrCustomOp *op, size_t index);
    int (*GetOutputCharacteristic)(const PrvrCustomOp *op, size_t index);
    int (*GetInputMemoryType)(const PrvrCustomOp *op, size_t index);
    int (*GetVariadicInputMinArity)(const PrvrCustomOp *op);
    int (*GetVariadicInputHomogeneity)(const PrvrCustomOp *op);
    int (*GetVariadicOutputMinArity)(const PrvrCustomOp *op);
    int (*GetVariadicOutputHomogeneity)(const PrvrCustomOp *op);
    OrtStatus *(*CreateKernelV2)(const PrvrCustomOp *op, const PrvrOrtApi *api, const OrtKernelInfo *info,
                                 void **kernel);
    OrtStatus *(*KernelComputeV2)(void *kernel, OrtKernelContext *ctx);
};

/* ---- the kernel ---- */
enum { IN_U, IN_DELTA, IN_A, IN_B, IN_C, IN_D, IN_BIAS, N_INPUTS };

typedef struct {
    const PrvrOrtApi *api;
    int64_t softplus;
} ScanKernel;

static int64_t prvr_ort_calls; /* completed computes: lets tests prove this kernel, not the body, ran */

/* The number of completed SelectiveScan computes in this process (read through ctypes by the tests). */
PRVR_EXPORT int64_t prvr_ort_scan_calls(void) { return __atomic_load_n(&prvr_ort_calls, __ATOMIC_RELAXED); }

/* Lets the loader check it found a library built from the same interface. */
PRVR_EXPORT int prvr_ort_scan_abi_version(void) { return 1; }

static OrtStatus *shape_of(const PrvrOrtApi *api, const OrtValue *v, int64_t *dims, size_t *rank) {
    OrtTensorTypeAndShapeInfo *info = NULL;
    ORT_TRY(ORT_FN(api, GetTensorTypeAndShape)(v, &info));
    OrtStatus *st = ORT_FN(api, GetDimensionsCount)(info, rank);
    if (!st && *rank <= 5) st = ORT_FN(api, GetDimensions)(info, dims, *rank);
    ORT_FN(api, ReleaseTensorTypeAndShapeInfo)(info);
    return st;
}

static OrtStatus *bad_input(const PrvrOrtApi *api, const char *what) {
    char msg[256];
    snprintf(msg, sizeof msg, "prvr::SelectiveScan: %s", what);
    return ORT_FN(api, CreateStatus)(PRVR_ORT_INVALID_ARGUMENT, msg);
}

typedef struct {
    const float *u, *delta, *A, *B, *C, *D, *bias;
    float *y;
    int64_t batch, dim, length, dstate, groups, softplus, blocks, chunks;
    int failed; /* a chunk could not get scratch memory */
} ScanJob;

/* One chunk of channel blocks, with its own scratch (the kernel's time-major copies of u, delta, y). */
static void run_chunk(void *data, size_t chunk) {
    ScanJob *job = data;
    const int64_t begin = job->blocks * (int64_t)chunk / job->chunks;
    const int64_t end = job->blocks * ((int64_t)chunk + 1) / job->chunks;
    if (begin >= end) return;
    float *scratch = malloc(sizeof(float) * 3 * (size_t)job->length * PRVR_W);
    if (!scratch) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    prvr_scan_fwd_f32(job->u, job->delta, job->A, job->B, job->C, job->D, job->bias, job->y, NULL, scratch,
                      job->batch, job->dim, job->length, job->dstate, job->groups, job->softplus, begin, end);
    free(scratch);
}

/* [rows, N, L] -> [rows, L, N] */
static void to_time_major(const float *src, float *dst, int64_t rows, int64_t n, int64_t l) {
    for (int64_t r = 0; r < rows; ++r) {
        const float *s = src + r * n * l;
        float *d = dst + r * n * l;
        for (int64_t i = 0; i < n; ++i)
            for (int64_t t = 0; t < l; ++t) d[t * n + i] = s[i * l + t];
    }
}

/* Below this much work (blocks * L * N * PRVR_W), handing chunks to other threads costs more than it saves. */
#define PRVR_MIN_PARALLEL_WORK (1 << 16)
#define PRVR_MAX_CHUNKS 64

static OrtStatus *scan_compute(void *kernel, OrtKernelContext *ctx) {
    const ScanKernel *k = kernel;
    const PrvrOrtApi *api = k->api;
    const OrtValue *in[N_INPUTS];
    int64_t dims[N_INPUTS][5];
    size_t rank[N_INPUTS];
    void *ptr[N_INPUTS];
    for (size_t i = 0; i < N_INPUTS; ++i) {
        ORT_TRY(ORT_FN(api, KernelContext_GetInput)(ctx, i, &in[i]));
        if (!in[i]) return bad_input(api, "all 7 inputs are required");
        ORT_TRY(shape_of(api, in[i], dims[i], &rank[i]));
        ORT_TRY(ORT_FN(api, GetTensorMutableData)((OrtValue *)in[i], &ptr[i]));
    }
    static const size_t want_rank[N_INPUTS] = {3, 3, 2, 4, 4, 1, 1};
    for (size_t i = 0; i < N_INPUTS; ++i)
        if (rank[i] != want_rank[i]) return bad_input(api, "expected ranks u 3, delta 3, A 2, B 4, C 4, D 1, bias 1");
    const int64_t batch = dims[IN_U][0], dim = dims[IN_U][1], length = dims[IN_U][2];
    const int64_t dstate = dims[IN_A][1], groups = dims[IN_B][1];
    if (dims[IN_DELTA][0] != batch || dims[IN_DELTA][1] != dim || dims[IN_DELTA][2] != length)
        return bad_input(api, "delta must have u's shape [B,D,L]");
    if (dims[IN_A][0] != dim) return bad_input(api, "A must be [D,N]");
    for (int i = IN_B; i <= IN_C; ++i)
        if (dims[i][0] != batch || dims[i][1] != groups || dims[i][2] != dstate || dims[i][3] != length)
            return bad_input(api, "B and C must be [B,G,N,L]");
    if (dims[IN_D][0] != dim || dims[IN_BIAS][0] != dim) return bad_input(api, "D and delta_bias must be [D]");
    if (groups < 1 || dim % groups != 0) return bad_input(api, "D must be a multiple of the group count G");
    if (dstate > PRVR_MAX_N) return bad_input(api, "at most 256 states (N) per channel");

    OrtValue *out = NULL;
    ORT_TRY(ORT_FN(api, KernelContext_GetOutput)(ctx, 0, dims[IN_U], 3, &out));
    void *y = NULL;
    ORT_TRY(ORT_FN(api, GetTensorMutableData)(out, &y));
    if (batch == 0 || dim == 0 || length == 0) {
        __atomic_fetch_add(&prvr_ort_calls, 1, __ATOMIC_RELAXED);
        return NULL;
    }

    const size_t bc = (size_t)(batch * groups * dstate * length);
    float *bt = malloc(sizeof(float) * 2 * (bc ? bc : 1));
    if (!bt) return ORT_FN(api, CreateStatus)(PRVR_ORT_FAIL, "prvr::SelectiveScan: out of memory");
    to_time_major(ptr[IN_B], bt, batch * groups, dstate, length);
    to_time_major(ptr[IN_C], bt + bc, batch * groups, dstate, length);

    const int64_t blocks = batch * groups * ((dim / groups + PRVR_W - 1) / PRVR_W);
    const int64_t work = blocks * length * (dstate ? dstate : 1) * PRVR_W;
    int64_t chunks = work / PRVR_MIN_PARALLEL_WORK;
    chunks = chunks < 1 ? 1 : (chunks > blocks ? blocks : (chunks > PRVR_MAX_CHUNKS ? PRVR_MAX_CHUNKS : chunks));
    ScanJob job = {ptr[IN_U], ptr[IN_DELTA], ptr[IN_A], bt, bt + bc, ptr[IN_D], ptr[IN_BIAS], y,
                   batch, dim, length, dstate, groups, k->softplus, blocks, chunks, 0};
    OrtStatus *st = NULL;
    if (chunks == 1)
        run_chunk(&job, 0);
    else
        st = ORT_FN(api, KernelContext_ParallelFor)(ctx, run_chunk, (size_t)chunks, 0, &job);
    free(bt);
    if (st) return st;
    if (job.failed) return ORT_FN(api, CreateStatus)(PRVR_ORT_FAIL, "prvr::SelectiveScan: out of memory");
    __atomic_fetch_add(&prvr_ort_calls, 1, __ATOMIC_RELAXED);
    return NULL;
}

static OrtStatus *scan_create(const PrvrCustomOp *op, const PrvrOrtApi *api, const OrtKernelInfo *info,
                              void **kernel) {
    (void)op;
    int64_t softplus = 0;
    ORT_TRY(ORT_FN(api, KernelInfoGetAttribute_int64)(info, "delta_softplus", &softplus));
    ScanKernel *k = malloc(sizeof *k);
    if (!k) return ORT_FN(api, CreateStatus)(PRVR_ORT_FAIL, "prvr::SelectiveScan: out of memory");
    k->api = api;
    k->softplus = softplus != 0;
    *kernel = k;
    return NULL;
}

static void scan_destroy(void *kernel) { free(kernel); }
static const char *scan_name(const PrvrCustomOp *op) { (void)op; return "SelectiveScan"; }
static const char *scan_provider(const PrvrCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int scan_float(const PrvrCustomOp *op, size_t i) { (void)op; (void)i; return PRVR_ONNX_FLOAT; }
static size_t scan_inputs(const PrvrCustomOp *op) { (void)op; return N_INPUTS; }
static size_t scan_outputs(const PrvrCustomOp *op) { (void)op; return 1; }
static int scan_required(const PrvrCustomOp *op, size_t i) { (void)op; (void)i; return PRVR_IO_REQUIRED; }
static int scan_mem_default(const PrvrCustomOp *op, size_t i) { (void)op; (void)i; return PRVR_MEM_DEFAULT; }
static int scan_one(const PrvrCustomOp *op) { (void)op; return 1; }

static const PrvrCustomOp scan_op = {
    .version = PRVR_CUSTOM_OP_VERSION,
    .CreateKernel = NULL, /* the V2 pair below is used (version >= 16) */
    .GetName = scan_name,
    .GetExecutionProviderType = scan_provider,
    .GetInputType = scan_float,
    .GetInputTypeCount = scan_inputs,
    .GetOutputType = scan_float,
    .GetOutputTypeCount = scan_outputs,
    .KernelCompute = NULL,
    .KernelDestroy = scan_destroy,
    .GetInputCharacteristic = scan_required,
    .GetOutputCharacteristic = scan_required,
    .GetInputMemoryType = scan_mem_default,
    .GetVariadicInputMinArity = scan_one,
    .GetVariadicInputHomogeneity = scan_one,
    .GetVariadicOutputMinArity = scan_one,
    .GetVariadicOutputHomogeneity = scan_one,
    .CreateKernelV2 = scan_create,
    .KernelComputeV2 = scan_compute,
};

/* Called by ONNX Runtime for each SessionOptions.register_custom_ops_library(path). The domain is not
 * released: ORT keeps a pointer to it for the sessions' lifetime, and it is a few bytes per session. */
PRVR_EXPORT OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const PrvrOrtApiBase *base) {
    const PrvrOrtApi *api = base->GetApi(PRVR_ORT_API_VERSION);
    if (!api) {
        const PrvrOrtApi *v1 = base->GetApi(1);
        return v1 ? ORT_FN(v1, CreateStatus)(PRVR_ORT_FAIL, "prvr::SelectiveScan needs onnxruntime >= 1.18")
                  : NULL;
    }
    OrtCustomOpDomain *domain = NULL;
    ORT_TRY(ORT_FN(api, CreateCustomOpDomain)("prvr", &domain));
    ORT_TRY(ORT_FN(api, CustomOpDomain_Add)(domain, &scan_op));
    return ORT_FN(api, AddCustomOpDomain)(options, domain);
}
