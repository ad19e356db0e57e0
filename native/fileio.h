// pread/pwrite on this thread, for a thread that copies to and from a memory-backed file itself
// rather than through io_uring (which would hand such a copy to a worker thread).
#pragma once

#include <napi.h>

namespace ublkdm {

// pread(fd, view, fileByteOffset) / pwrite(fd, view, fileByteOffset): bytes moved, or -errno.
// Never throws for an I/O error: the result goes to the request as a ring completion's would.
Napi::Value Pread(const Napi::CallbackInfo& info);
Napi::Value Pwrite(const Napi::CallbackInfo& info);
// preadv(fd, views, fileByteOffset) / pwritev(fd, views, fileByteOffset): the same for a list of
// 1 to IOV_MAX views, in one call.
Napi::Value Preadv(const Napi::CallbackInfo& info);
Napi::Value Pwritev(const Napi::CallbackInfo& info);
// fileSize(fd): fstat's st_size, or -errno.
Napi::Value FileSize(const Napi::CallbackInfo& info);
// nextData(fd, fileByteOffset) / nextHole(fd, fileByteOffset): lseek(SEEK_DATA / SEEK_HOLE),
// where the first data (hole) at or after the offset begins, or -errno (-ENXIO at or past the
// end). The file's end counts as a hole.
Napi::Value NextData(const Napi::CallbackInfo& info);
Napi::Value NextHole(const Napi::CallbackInfo& info);

}  // namespace ublkdm
