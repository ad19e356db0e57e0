// Block device geometry ioctls.
#pragma once

#include <napi.h>

namespace ublkdm {

Napi::Value BlockDeviceBytes(const Napi::CallbackInfo& info);
Napi::Value LogicalBlockBytes(const Napi::CallbackInfo& info);

}  // namespace ublkdm
