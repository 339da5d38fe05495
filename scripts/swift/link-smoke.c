/* Links libCoreMLBridge.a into a plain C program the way a Rust (or any
 * non-Swift) binary does on Linux, and runs it: proves the link line in
 * coreml-bridge/README.md ("Linking on Linux"). Usage:
 *   link-smoke <dir containing add_one.mlmodelc>   (COREML_BRIDGE_TEST_RUNTIME=1)
 */
#include "coreml_bridge.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...) do { fprintf(stderr, "link-smoke: " __VA_ARGS__); fputc('\n', stderr); return 1; } while (0)

int main(int argc, char** argv) {
    if (argc != 2) FAIL("usage: %s <dir>", argv[0]);
    if (coreml_bridge_abi_version() != COREML_BRIDGE_ABI_VERSION) FAIL("ABI version mismatch");

    char* json = NULL;
    char* err = NULL;
    if (coreml_runtime_info(&json, &err) != COREML_OK) FAIL("runtime_info: %s", err);
    if (strstr(json, "\"coreml_available\":false") == NULL) FAIL("unexpected runtime info %s", json);
    coreml_free_string(json);

    char path[4096];
    snprintf(path, sizeof path, "%s/add_one.mlmodelc", argv[1]);
    void* h = NULL;
    int32_t st = coreml_load_model(path, COREML_COMPUTE_CPU_ONLY, 5000, &h, &err);
    if (st != COREML_OK) FAIL("load %d: %s", st, err);

    float v[4] = {1.5f, -2.0f, 0.0f, 41.0f};
    int64_t shape[2] = {2, 2};
    CoremlTensor t = {"x", COREML_DTYPE_F32, 2, shape, NULL, v, sizeof v};
    CoremlOutputs* out = NULL;
    st = coreml_predict(h, &t, 1, 5000, &out, &err);
    if (st != COREML_OK) FAIL("predict %d: %s", st, err);
    const float want[4] = {2.5f, -1.0f, 1.0f, 42.0f};
    if (out->count != 1 || strcmp(out->tensors[0].name, "y") != 0 ||
        out->tensors[0].byte_len != sizeof want || memcmp(out->tensors[0].data, want, sizeof want) != 0)
        FAIL("wrong outputs");
    coreml_free_outputs(out);

    t.dtype = 42; /* an error path: Swift error -> status + owned message */
    st = coreml_predict(h, &t, 1, 5000, &out, &err);
    if (st != COREML_ERR_INVALID_ARGUMENT || err == NULL || out != NULL) FAIL("bad dtype gave %d", st);
    coreml_free_string(err);
    coreml_free_model(h);
    if (coreml_model_schema(h, &json, &err) != COREML_ERR_INVALID_HANDLE) FAIL("stale handle accepted");
    coreml_free_string(err);
    puts("link-smoke: ok");
    return 0;
}
