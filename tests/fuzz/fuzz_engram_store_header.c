/* libFuzzer target: engram_store_parse_header on arbitrary bytes, taken as a
 * whole table file (its length is the file size). Any input must give OK or
 * EFORMAT with a message, never a crash or sanitizer report; an accepted
 * header's every row must lie inside the input, and its stride must keep
 * rows apart and aligned: at least row_bytes, a multiple of 8 (of the
 * row's power of two under 8 bytes), no more than the old power-of-two
 * stride pads (under 2 * row_bytes + 4096). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engram/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    engram_store_header h;
    char err[512];
    err[0] = 0;
    int rc = engram_store_parse_header(data, size, size ? size : 1, &h, err, sizeof(err));
    if (rc == ENGRAM_STORE_OK) {
        uint32_t dense = engram_store_row_stride(h.row_bytes), align = dense < 8 ? dense : 8;
        if (h.data_offset % ENGRAM_STORE_BLOCK || h.row_stride < h.row_bytes || h.row_stride % align ||
            h.row_stride >= 2ull * h.row_bytes + ENGRAM_STORE_BLOCK ||
            h.row_bytes != engram_store_row_bytes((int)h.dtype, h.cols) || h.rows == 0)
            abort();
        if (h.data_offset + (h.rows - 1) * h.row_stride + h.row_bytes > size) abort();
    } else if (rc != ENGRAM_STORE_EFORMAT || !err[0]) {
        abort();
    }
    /* Without the size check too: the header alone. */
    rc = engram_store_parse_header(data, size, 0, &h, NULL, 0);
    if (rc != ENGRAM_STORE_OK && rc != ENGRAM_STORE_EFORMAT) abort();
    return 0;
}
