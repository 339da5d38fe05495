/* Compile-time checks of the ABI declared in coreml_bridge.h. The Rust side
 * mirrors these layouts with #[repr(C)]; the sizes below hold on every LP64
 * target we build for (x86_64/arm64 Linux and Apple platforms). */
#include "coreml_bridge.h"
#include <stddef.h>

#if defined(__LP64__) || defined(_LP64)
_Static_assert(sizeof(CoremlTensor) == 48, "CoremlTensor layout");
_Static_assert(offsetof(CoremlTensor, name) == 0, "CoremlTensor.name");
_Static_assert(offsetof(CoremlTensor, dtype) == 8, "CoremlTensor.dtype");
_Static_assert(offsetof(CoremlTensor, rank) == 12, "CoremlTensor.rank");
_Static_assert(offsetof(CoremlTensor, shape) == 16, "CoremlTensor.shape");
_Static_assert(offsetof(CoremlTensor, strides) == 24, "CoremlTensor.strides");
_Static_assert(offsetof(CoremlTensor, data) == 32, "CoremlTensor.data");
_Static_assert(offsetof(CoremlTensor, byte_len) == 40, "CoremlTensor.byte_len");
_Static_assert(sizeof(CoremlOutputTensor) == 40, "CoremlOutputTensor layout");
_Static_assert(offsetof(CoremlOutputTensor, shape) == 16, "CoremlOutputTensor.shape");
_Static_assert(offsetof(CoremlOutputTensor, data) == 24, "CoremlOutputTensor.data");
_Static_assert(offsetof(CoremlOutputTensor, byte_len) == 32, "CoremlOutputTensor.byte_len");
_Static_assert(sizeof(CoremlOutputs) == 24, "CoremlOutputs layout");
_Static_assert(offsetof(CoremlOutputs, tensors) == 8, "CoremlOutputs.tensors");
#endif
_Static_assert(sizeof(int32_t) == 4, "int32_t");
