// Memory the kernel reads or writes directly: aligned buffers, addresses of views, and
// read-only mmaps of the ublk descriptor arrays.
#pragma once

#include <napi.h>

namespace ublkdm {

Napi::Value AllocAligned(const Napi::CallbackInfo& info);
Napi::Value AddressOf(const Napi::CallbackInfo& info);
// adviseNoHugePages(view): madvise(MADV_NOHUGEPAGE) over the whole pages of the view, as
// allocAligned does for its own large buffers (tag buffers are touched a few KiB at a time).
Napi::Value AdviseNoHugePages(const Napi::CallbackInfo& info);
Napi::Value MmapReadOnly(const Napi::CallbackInfo& info);
Napi::Value MmapShared(const Napi::CallbackInfo& info);
Napi::Value Unmap(const Napi::CallbackInfo& info);

// The bytes of a TypedArray, DataView or Buffer; false (with a pending TypeError) otherwise.
bool ViewBytes(Napi::Value value, void** data, size_t* byteLength);

}  // namespace ublkdm
