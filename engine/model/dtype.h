/* Bulk conversion of checkpoint tensors (safetensors dtypes) to f32. */
#ifndef ENGINE_MODEL_DTYPE_H
#define ENGINE_MODEL_DTYPE_H

#include <stddef.h>

#include "base/numeric.h"
#include "engine/model/safetensors.h"

/* dst[i] = src[i] as f32 for i < n; src in dtype F32, BF16 or F16. */
void dtype_to_f32(float *dst, const void *src, dtype t, size_t n);

#endif
