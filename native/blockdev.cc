#include "blockdev.h"

#include <linux/fs.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstdint>

#include "js_errors.h"

namespace ublkdm {

Napi::Value BlockDeviceBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    ThrowType(env, "blockDeviceBytes(fd)");
    return env.Undefined();
  }
  uint64_t byteLength = 0;
  if (ioctl(info[0].As<Napi::Number>().Int32Value(), BLKGETSIZE64, &byteLength) != 0) {
    ThrowErrno(env, "ioctl(BLKGETSIZE64)", errno);
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(byteLength));
}

Napi::Value LogicalBlockBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    ThrowType(env, "logicalBlockBytes(fd)");
    return env.Undefined();
  }
  int byteLength = 0;
  if (ioctl(info[0].As<Napi::Number>().Int32Value(), BLKSSZGET, &byteLength) != 0) {
    ThrowErrno(env, "ioctl(BLKSSZGET)", errno);
    return env.Undefined();
  }
  return Napi::Number::New(env, byteLength);
}

}  // namespace ublkdm
