#include "fileio.h"

#include <limits.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "js_errors.h"

namespace ublkdm {

namespace {

// Raw N-API rather than node-addon-api's wrappers: this runs once per request, and
// napi_get_buffer_info (any ArrayBufferView in Node 20+) skips the walk through every
// typed-array kind that napi_get_typedarray_info does.
Napi::Value Transfer(const Napi::CallbackInfo& info, bool isWrite) {
  Napi::Env env = info.Env();
  void* data = nullptr;
  size_t byteLength = 0;
  int32_t fd = -1;
  int64_t fileByteOffset = -1;
  if (info.Length() < 3 || napi_get_value_int32(env, info[0], &fd) != napi_ok ||
      napi_get_buffer_info(env, info[1], &data, &byteLength) != napi_ok ||
      napi_get_value_int64(env, info[2], &fileByteOffset) != napi_ok || fileByteOffset < 0) {
    ThrowType(env, isWrite ? "pwrite(fd, view, fileByteOffset)" : "pread(fd, view, fileByteOffset)");
    return env.Undefined();
  }
  ssize_t moved;
  do {
    moved = isWrite ? pwrite(fd, data, byteLength, fileByteOffset) : pread(fd, data, byteLength, fileByteOffset);
  } while (moved < 0 && errno == EINTR);
  return Napi::Number::New(env, moved < 0 ? -errno : static_cast<double>(moved));
}

Napi::Value TransferVector(const Napi::CallbackInfo& info, bool isWrite) {
  Napi::Env env = info.Env();
  int64_t fileByteOffset = -1;
  int32_t fd = -1;
  uint32_t count = 0;
  bool usable = info.Length() >= 3 && napi_get_value_int32(env, info[0], &fd) == napi_ok && info[1].IsArray() &&
                napi_get_value_int64(env, info[2], &fileByteOffset) == napi_ok && fileByteOffset >= 0;
  if (usable) {
    count = info[1].As<Napi::Array>().Length();
    usable = count > 0 && count <= IOV_MAX;
  }
  iovec iov[IOV_MAX];
  for (uint32_t i = 0; usable && i < count; i++) {
    Napi::Value view = info[1].As<Napi::Array>()[i];
    usable = napi_get_buffer_info(env, view, &iov[i].iov_base, &iov[i].iov_len) == napi_ok;
  }
  if (!usable) {
    ThrowType(env, isWrite ? "pwritev(fd, views (1 to IOV_MAX), fileByteOffset)" : "preadv(fd, views (1 to IOV_MAX), fileByteOffset)");
    return env.Undefined();
  }
  ssize_t moved;
  do {
    moved = isWrite ? pwritev(fd, iov, static_cast<int>(count), fileByteOffset) : preadv(fd, iov, static_cast<int>(count), fileByteOffset);
  } while (moved < 0 && errno == EINTR);
  return Napi::Number::New(env, moved < 0 ? -errno : static_cast<double>(moved));
}

}  // namespace

Napi::Value Pread(const Napi::CallbackInfo& info) { return Transfer(info, false); }

Napi::Value Pwrite(const Napi::CallbackInfo& info) { return Transfer(info, true); }

Napi::Value Preadv(const Napi::CallbackInfo& info) { return TransferVector(info, false); }

Napi::Value Pwritev(const Napi::CallbackInfo& info) { return TransferVector(info, true); }

Napi::Value FileSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t fd = -1;
  if (info.Length() < 1 || napi_get_value_int32(env, info[0], &fd) != napi_ok) {
    ThrowType(env, "fileSize(fd)");
    return env.Undefined();
  }
  struct stat st;
  if (fstat(fd, &st) != 0) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, static_cast<double>(st.st_size));
}

namespace {

Napi::Value Seek(const Napi::CallbackInfo& info, int whence, const char* usage) {
  Napi::Env env = info.Env();
  int32_t fd = -1;
  int64_t fileByteOffset = -1;
  if (info.Length() < 2 || napi_get_value_int32(env, info[0], &fd) != napi_ok ||
      napi_get_value_int64(env, info[1], &fileByteOffset) != napi_ok || fileByteOffset < 0) {
    ThrowType(env, usage);
    return env.Undefined();
  }
  off_t found = lseek(fd, static_cast<off_t>(fileByteOffset), whence);
  return Napi::Number::New(env, found < 0 ? -errno : static_cast<double>(found));
}

}  // namespace

Napi::Value NextData(const Napi::CallbackInfo& info) { return Seek(info, SEEK_DATA, "nextData(fd, fileByteOffset)"); }

Napi::Value NextHole(const Napi::CallbackInfo& info) { return Seek(info, SEEK_HOLE, "nextHole(fd, fileByteOffset)"); }

}  // namespace ublkdm
