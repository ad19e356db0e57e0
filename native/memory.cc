#include "memory.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include "js_errors.h"

namespace ublkdm {

namespace {

// A live mapping. unmap() may release it before the GC does, so the finalizer must know
// whether the range is still ours: munmap'ing it twice could tear down an unrelated mapping
// that reused the addresses.
struct Mapping {
  void* address;
  size_t byteLength;
  bool unmapped;
};

std::mutex mappingsLock;  // finalizers are not guaranteed to run on the JS thread
std::unordered_map<void*, Mapping*> mappings;

void ReleaseMapping(Napi::Env, void*, Mapping* mapping) {
  {
    std::lock_guard<std::mutex> guard(mappingsLock);
    if (!mapping->unmapped) {
      munmap(mapping->address, mapping->byteLength);
      mappings.erase(mapping->address);
    }
  }
  delete mapping;
}

void FreeAligned(Napi::Env, void* data) { std::free(data); }

void UnmapAnonymous(Napi::Env, void* data, size_t* byteLength) {
  munmap(data, *byteLength);
  delete byteLength;
}

// Large buffers (ublk tag buffers: depth x max I/O size) come from anonymous mmap: zeroed
// and page-aligned by the kernel, and only the pages actually used become resident.
constexpr int64_t kAnonymousMapMinBytes = 64 * 1024;
constexpr int64_t kPageBytes = 4096;

}  // namespace

bool ViewBytes(Napi::Value value, void** data, size_t* byteLength) {
  napi_env env = value.Env();
  if (value.IsTypedArray()) {
    napi_typedarray_type type;
    size_t length;
    napi_value arrayBuffer;
    size_t byteOffset;
    if (napi_get_typedarray_info(env, value, &type, &length, data, &arrayBuffer, &byteOffset) != napi_ok) {
      return false;
    }
    *byteLength = length * value.As<Napi::TypedArray>().ElementSize();
    return true;
  }
  if (value.IsDataView()) {
    napi_value arrayBuffer;
    size_t byteOffset;
    return napi_get_dataview_info(env, value, byteLength, data, &arrayBuffer, &byteOffset) == napi_ok;
  }
  ThrowType(value.Env(), "expected a TypedArray or DataView");
  return false;
}

Napi::Value AllocAligned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    ThrowType(env, "allocAligned(byteLength, alignment)");
    return env.Undefined();
  }
  int64_t byteLength = info[0].As<Napi::Number>().Int64Value();
  int64_t alignment = info[1].As<Napi::Number>().Int64Value();
  if (byteLength <= 0 || alignment < static_cast<int64_t>(sizeof(void*)) || (alignment & (alignment - 1)) != 0) {
    Napi::RangeError::New(env, "allocAligned: byteLength must be > 0 and alignment a power of two").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (byteLength >= kAnonymousMapMinBytes && alignment <= kPageBytes) {
    void* mapped = mmap(nullptr, static_cast<size_t>(byteLength), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) {
      ThrowErrno(env, "mmap", errno);
      return env.Undefined();
    }
    // Tag buffers are touched a few KiB at a time, far apart: with transparent huge pages each
    // touch would make a whole 2 MiB resident, and a queue's 64 MiB soon all of it.
    madvise(mapped, static_cast<size_t>(byteLength), MADV_NOHUGEPAGE);
    auto* mappedBytes = new size_t(static_cast<size_t>(byteLength));
    return Napi::ArrayBuffer::New(env, mapped, *mappedBytes, UnmapAnonymous, mappedBytes);
  }
  void* data = nullptr;
  int err = posix_memalign(&data, static_cast<size_t>(alignment), static_cast<size_t>(byteLength));
  if (err != 0) {
    ThrowErrno(env, "posix_memalign", err);
    return env.Undefined();
  }
  std::memset(data, 0, static_cast<size_t>(byteLength));
  return Napi::ArrayBuffer::New(env, data, static_cast<size_t>(byteLength), FreeAligned);
}

Napi::Value AdviseNoHugePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* data = nullptr;
  size_t byteLength = 0;
  if (info.Length() < 1 || !ViewBytes(info[0], &data, &byteLength)) return env.Undefined();
  // Only the pages wholly inside the view: its edges may share a page with other memory.
  uintptr_t start = (reinterpret_cast<uintptr_t>(data) + kPageBytes - 1) & ~static_cast<uintptr_t>(kPageBytes - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(data) + byteLength) & ~static_cast<uintptr_t>(kPageBytes - 1);
  // Advice only: a kernel without transparent huge pages refuses it (EINVAL), which changes nothing.
  if (end > start) madvise(reinterpret_cast<void*>(start), end - start, MADV_NOHUGEPAGE);
  return env.Undefined();
}

Napi::Value AddressOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* data = nullptr;
  size_t byteLength = 0;
  if (info.Length() < 1 || !ViewBytes(info[0], &data, &byteLength)) return env.Undefined();
  return Napi::Number::New(env, static_cast<double>(reinterpret_cast<uintptr_t>(data)));
}

namespace {

// mmap(MAP_SHARED) of a file range as an ArrayBuffer that munmaps on GC or unmap().
Napi::Value MapShared(const Napi::CallbackInfo& info, const char* usage, int protection) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    ThrowType(env, usage);
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int64_t fileByteOffset = info[1].As<Napi::Number>().Int64Value();
  int64_t byteLength = info[2].As<Napi::Number>().Int64Value();
  if (byteLength <= 0 || fileByteOffset < 0) {
    Napi::RangeError::New(env, std::string(usage) + ": bad offset or length").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  void* address = mmap(nullptr, static_cast<size_t>(byteLength), protection, MAP_SHARED, fd, fileByteOffset);
  if (address == MAP_FAILED) {
    ThrowErrno(env, "mmap", errno);
    return env.Undefined();
  }
  auto* mapping = new Mapping{address, static_cast<size_t>(byteLength), false};
  {
    std::lock_guard<std::mutex> guard(mappingsLock);
    mappings[address] = mapping;
  }
  return Napi::ArrayBuffer::New(env, address, mapping->byteLength, ReleaseMapping, mapping);
}

}  // namespace

Napi::Value MmapReadOnly(const Napi::CallbackInfo& info) {
  return MapShared(info, "mmapReadOnly(fd, fileByteOffset, byteLength)", PROT_READ);
}

Napi::Value MmapShared(const Napi::CallbackInfo& info) {
  return MapShared(info, "mmapShared(fd, fileByteOffset, byteLength)", PROT_READ | PROT_WRITE);
}

Napi::Value Unmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) {
    ThrowType(env, "unmap(arrayBuffer)");
    return env.Undefined();
  }
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  void* address = buffer.Data();
  {
    std::lock_guard<std::mutex> guard(mappingsLock);
    auto found = mappings.find(address);
    if (found == mappings.end()) {
      ThrowType(env, "unmap: not a live mapping from mmapReadOnly or mmapShared");
      return env.Undefined();
    }
    Mapping* mapping = found->second;
    munmap(mapping->address, mapping->byteLength);
    mapping->unmapped = true;
    mappings.erase(found);
  }
  buffer.Detach();
  return env.Undefined();
}

}  // namespace ublkdm
