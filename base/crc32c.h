/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial and final
 * XOR 0xFFFFFFFF): the checksum of iSCSI, ext4 and Btrfs, with a CPU
 * instruction on x86 (SSE4.2) and a table walk elsewhere. The Engram table
 * files' per-block checksums (engram/table_file.c) use it. */
#ifndef BASE_CRC32C_H
#define BASE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* The CRC-32C of n bytes at p continued from crc (0 to start): crc32c(crc32c(0,
 * a), b) == crc32c(0, a || b). crc32c(0, "123456789", 9) == 0xE3069283. */
uint32_t crc32c(uint32_t crc, const void *p, size_t n);

#endif
