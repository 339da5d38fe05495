/* C code that calls the bridge exactly as a C (or Rust) caller would:
 * through coreml_bridge.h, with C structs and C ownership rules. */
#ifndef C_HARNESS_H
#define C_HARNESS_H
#include <stddef.h>
#include <stdint.h>

/* sizeof/offsetof of the ABI structs as C sees them, for comparison with
 * Swift's MemoryLayout: [sizeof(CoremlTensor), offsetof(.., byte_len),
 * sizeof(CoremlOutputTensor), offsetof(.., byte_len), sizeof(CoremlOutputs),
 * offsetof(.., reserved)]. */
void harness_layout(size_t out[6]);
void harness_batch_layout(size_t out[2]);

/* Calls every entry point with invalid arguments; returns the number of
 * checks that did not give the documented status (0 = all good); the first
 * failure is described in `msg`. Needs COREML_BRIDGE_TEST_RUNTIME=1 and a
 * loadable fake model at `compiled_path` (identity, input "x" f32). */
int harness_bad_arguments(const char* compiled_path, char* msg, size_t msg_len);

/* Loads `compiled_path` (an add_one fake model with input "x" and output
 * "y"), predicts on a padded 2x3 f32 input given through strides, checks the
 * output, frees everything. Returns 0 on success; else `msg` says why. */
int harness_roundtrip(const char* compiled_path, char* msg, size_t msg_len);

#endif
