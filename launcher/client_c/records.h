/* The request's records (tag byte, LE u32 length, payload), buffered into one fd, and the
 * little-endian helpers the client's messages share. Header-only: the client is one program. */
#ifndef FARAMESH_CLIENT_RECORDS_H
#define FARAMESH_CLIENT_RECORDS_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static inline void put_u32(unsigned char *out, uint32_t value)
{
    for (int i = 0; i < 4; i++)
        out[i] = (unsigned char)(value >> (8 * i));
}

static inline uint32_t get_u32(const unsigned char *in)
{
    return (uint32_t)in[0] | (uint32_t)in[1] << 8 | (uint32_t)in[2] << 16 | (uint32_t)in[3] << 24;
}

/* Returns -1 with errno on a failed write; retries EINTR and short writes. */
static inline int write_all(int fd, const void *data, size_t len)
{
    const char *at = data;
    while (len > 0) {
        ssize_t n = write(fd, at, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        at += n;
        len -= (size_t)n;
    }
    return 0;
}

/* argv and environ can be MBs: small records are gathered, big payloads are written straight. */
struct records {
    int fd;
    int failed;  /* errno of the first failed write, reported by records_flush() */
    size_t used;
    unsigned char buf[1 << 16];
};

static inline void records_write(struct records *out, const void *data, size_t len)
{
    if (out->used + len > sizeof(out->buf)) {
        if (!out->failed && write_all(out->fd, out->buf, out->used) < 0)
            out->failed = errno;
        out->used = 0;
    }
    if (len > sizeof(out->buf)) {
        if (!out->failed && write_all(out->fd, data, len) < 0)
            out->failed = errno;
        return;
    }
    memcpy(out->buf + out->used, data, len);
    out->used += len;
}

static inline void records_put(struct records *out, char tag, const void *payload, size_t len)
{
    unsigned char head[5] = {(unsigned char)tag};
    put_u32(head + 1, (uint32_t)len);
    records_write(out, head, sizeof(head));
    records_write(out, payload, len);
}

static inline int records_flush(struct records *out)
{
    if (!out->failed && write_all(out->fd, out->buf, out->used) < 0)
        out->failed = errno;
    out->used = 0;
    errno = out->failed;
    return out->failed ? -1 : 0;
}

#endif
