#include "c_harness.h"
#include "coreml_bridge.h"
#include <stdio.h>
#include <string.h>

void harness_layout(size_t out[6]) {
    out[0] = sizeof(CoremlTensor);
    out[1] = offsetof(CoremlTensor, byte_len);
    out[2] = sizeof(CoremlOutputTensor);
    out[3] = offsetof(CoremlOutputTensor, byte_len);
    out[4] = sizeof(CoremlOutputs);
    out[5] = offsetof(CoremlOutputs, reserved);
}

void harness_batch_layout(size_t out[2]) {
    out[0] = sizeof(CoremlBatchMember);
    out[1] = offsetof(CoremlBatchMember, n_inputs);
}

#define CHECK_STATUS(expr, want)                                                     \
    do {                                                                             \
        char* err_ = NULL;                                                           \
        char** errp_ = &err_;                                                        \
        (void)errp_;                                                                 \
        int32_t got_ = (expr);                                                       \
        if (got_ != (want)) {                                                        \
            if (failures == 0)                                                       \
                snprintf(msg, msg_len, "line %d: %s gave %d, want %d (%s)", __LINE__, \
                         #expr, (int)got_, (int)(want), err_ ? err_ : "no message");  \
            failures++;                                                              \
        } else if ((want) != COREML_OK && err_ == NULL && failures == 0 &&           \
                   strstr(#expr, "errp_") != NULL) {                                 \
            snprintf(msg, msg_len, "line %d: no error message", __LINE__);          \
            failures++;                                                              \
        }                                                                            \
        coreml_free_string(err_);                                                    \
    } while (0)

int harness_bad_arguments(const char* compiled_path, char* msg, size_t msg_len) {
    int failures = 0;
    msg[0] = 0;
    char* s = NULL;
    void* h = NULL;
    CoremlOutputs* outs = NULL;

    if (coreml_bridge_abi_version() != COREML_BRIDGE_ABI_VERSION) {
        snprintf(msg, msg_len, "abi version %d != header %d", coreml_bridge_abi_version(), COREML_BRIDGE_ABI_VERSION);
        return 1;
    }

    /* compile */
    CHECK_STATUS(coreml_compile_model(NULL, "/tmp", 1000, &s, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_compile_model("/nonexistent/x.mlpackage", "/tmp", 1000, &s, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_compile_model(compiled_path, NULL, 1000, &s, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_compile_model(compiled_path, "/tmp", 1000, NULL, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_compile_model(compiled_path, "/tmp", 0, &s, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_compile_model(compiled_path, "/tmp", -5, &s, NULL), COREML_ERR_INVALID_ARGUMENT);
    if (s != NULL) { snprintf(msg, msg_len, "out_compiled_path set on failure"); failures++; }

    /* load */
    CHECK_STATUS(coreml_load_model(NULL, 0, 1000, &h, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_load_model(compiled_path, 7, 1000, &h, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_load_model(compiled_path, -1, 1000, &h, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_load_model(compiled_path, 0, 0, &h, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_load_model(compiled_path, 0, 1000, NULL, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_load_model("/nonexistent/m.mlmodelc", 0, 1000, &h, errp_), COREML_ERR_INVALID_ARGUMENT);
    if (h != NULL) { snprintf(msg, msg_len, "out_handle set on failure"); failures++; }

    /* schema / predict on bad handles */
    CHECK_STATUS(coreml_model_schema(NULL, &s, errp_), COREML_ERR_INVALID_HANDLE);
    CHECK_STATUS(coreml_model_schema((void*)(uintptr_t)0x1234, &s, errp_), COREML_ERR_INVALID_HANDLE);
    float v[2] = {1, 2};
    int64_t shape[2] = {1, 2};
    CoremlTensor t = {"x", COREML_DTYPE_F32, 2, shape, NULL, v, sizeof v};
    CHECK_STATUS(coreml_predict(NULL, &t, 1, 1000, &outs, errp_), COREML_ERR_INVALID_HANDLE);
    CHECK_STATUS(coreml_predict((void*)(uintptr_t)0xdeadbeef, &t, 1, 1000, &outs, errp_), COREML_ERR_INVALID_HANDLE);

    /* a real handle, then bad tensors */
    CHECK_STATUS(coreml_load_model(compiled_path, COREML_COMPUTE_CPU_ONLY, 5000, &h, errp_), COREML_OK);
    if (h == NULL) { if (!failures) snprintf(msg, msg_len, "load gave no handle"); return failures + 1; }
    CHECK_STATUS(coreml_model_schema(h, NULL, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_predict(h, NULL, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_predict(h, &t, 0, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_predict(h, &t, -1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_predict(h, &t, 1, 0, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_predict(h, &t, 1, 1000, NULL, errp_), COREML_ERR_INVALID_ARGUMENT);

    CoremlTensor bad = t;
    bad.name = NULL;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.dtype = 0;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.dtype = 99;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.dtype = COREML_DTYPE_I64;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.rank = 0;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.rank = COREML_MAX_RANK + 1;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.rank = 3; /* wrong rank for the buffer: byte_len mismatch */
    int64_t shape3[3] = {1, 2, 2};
    bad.shape = shape3;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.shape = NULL;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    int64_t zero_shape[2] = {0, 2};
    bad = t; bad.shape = zero_shape;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    int64_t neg_shape[2] = {-1, 2};
    bad = t; bad.shape = neg_shape;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.data = NULL;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.byte_len = sizeof v - 1;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.byte_len = sizeof v + 4;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    int64_t big_strides[2] = {2, 2}; /* spans 3 elements = 12 bytes > 8 */
    bad = t; bad.strides = big_strides;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    int64_t neg_strides[2] = {2, -1};
    bad = t; bad.strides = neg_strides;
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    int64_t huge_shape[2] = {INT64_MAX, INT64_MAX};
    bad = t; bad.shape = huge_shape;
    {
        char* err_ = NULL;
        int32_t st = coreml_predict(h, &bad, 1, 1000, &outs, &err_);
        if (st != COREML_ERR_INVALID_ARGUMENT && st != COREML_ERR_OUT_OF_MEMORY) {
            if (!failures) snprintf(msg, msg_len, "huge shape gave %d", (int)st);
            failures++;
        }
        coreml_free_string(err_);
    }
    CoremlTensor two[2] = {t, t}; /* duplicate names */
    CHECK_STATUS(coreml_predict(h, two, 2, 1000, &outs, errp_), COREML_ERR_INVALID_ARGUMENT);
    bad = t; bad.name = "not_an_input";
    CHECK_STATUS(coreml_predict(h, &bad, 1, 1000, &outs, errp_), COREML_ERR_SCHEMA_MISMATCH);
    if (outs != NULL) { if (!failures) snprintf(msg, msg_len, "out_outputs set on failure"); failures++; }

    /* The good call still works, after all that. */
    CHECK_STATUS(coreml_predict(h, &t, 1, 5000, &outs, errp_), COREML_OK);
    coreml_free_outputs(outs);
    coreml_free_outputs(outs);    /* double free: ignored */
    coreml_free_outputs(NULL);
    coreml_free_outputs((CoremlOutputs*)(void*)&t); /* never returned by the bridge: ignored */

    /* stale handle */
    coreml_free_model(h);
    CHECK_STATUS(coreml_model_schema(h, &s, errp_), COREML_ERR_INVALID_HANDLE);
    CHECK_STATUS(coreml_predict(h, &t, 1, 1000, &outs, errp_), COREML_ERR_INVALID_HANDLE);
    coreml_free_model(h);         /* double free: ignored */
    coreml_free_model(NULL);
    coreml_free_model((void*)(uintptr_t)42);
    coreml_free_string(NULL);

    /* compute plan / runtime info argument checks */
    CHECK_STATUS(coreml_compute_plan(NULL, 0, 1000, &s, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_compute_plan(compiled_path, 9, 1000, &s, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_compute_plan(compiled_path, 0, 1000, NULL, errp_), COREML_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(coreml_runtime_info(NULL, errp_), COREML_ERR_INVALID_ARGUMENT);
    return failures;
}

int harness_roundtrip(const char* compiled_path, char* msg, size_t msg_len) {
    msg[0] = 0;
    void* h = NULL;
    char* err = NULL;
    int32_t st = coreml_load_model(compiled_path, COREML_COMPUTE_ALL, 5000, &h, &err);
    if (st != COREML_OK) { snprintf(msg, msg_len, "load: %d %s", (int)st, err ? err : ""); coreml_free_string(err); return 1; }

    char* json = NULL;
    st = coreml_model_schema(h, &json, &err);
    if (st != COREML_OK || json == NULL || strstr(json, "\"inputs\"") == NULL) {
        snprintf(msg, msg_len, "schema: %d %s", (int)st, err ? err : "");
        coreml_free_string(err); coreml_free_model(h); return 1;
    }
    coreml_free_string(json);

    /* A 2x3 tensor stored with a padded row stride of 4 (like ANE rows). */
    float padded[8] = {1, 2, 3, -99, 4, 5, 6, -99};
    int64_t shape[2] = {2, 3};
    int64_t strides[2] = {4, 1};
    CoremlTensor in = {"x", COREML_DTYPE_F32, 2, shape, strides, padded, sizeof padded};
    CoremlOutputs* outs = NULL;
    st = coreml_predict(h, &in, 1, 5000, &outs, &err);
    /* The caller's buffer may be reused at once: the bridge copied it. */
    memset(padded, 0, sizeof padded);
    if (st != COREML_OK || outs == NULL) {
        snprintf(msg, msg_len, "predict: %d %s", (int)st, err ? err : "");
        coreml_free_string(err); coreml_free_model(h); return 1;
    }
    int rc = 0;
    if (outs->count != 1) { snprintf(msg, msg_len, "count %d", outs->count); rc = 1; }
    else {
        const CoremlOutputTensor* o = &outs->tensors[0];
        const float want[6] = {2, 3, 4, 5, 6, 7};
        if (strcmp(o->name, "y") != 0 || o->dtype != COREML_DTYPE_F32 || o->rank != 2 ||
            o->shape[0] != 2 || o->shape[1] != 3 || o->byte_len != sizeof want) {
            snprintf(msg, msg_len, "output descriptor wrong: %s dtype %d rank %d len %llu",
                     o->name, (int)o->dtype, (int)o->rank, (unsigned long long)o->byte_len);
            rc = 1;
        } else if (memcmp(o->data, want, sizeof want) != 0) {
            const float* d = (const float*)o->data;
            snprintf(msg, msg_len, "output values %g %g %g %g %g %g", d[0], d[1], d[2], d[3], d[4], d[5]);
            rc = 1;
        }
    }
    coreml_free_outputs(outs);
    coreml_free_model(h);
    return rc;
}
