// ublkdm_native: io_uring transport, aligned buffers, descriptor mmaps, pread/pwrite, copies
// through file mappings, block device geometry and a thread's CPU affinity. Transport only; it
// knows nothing of ublk semantics beyond the I/O command layout.
#include <napi.h>

#include "affinity.h"
#include "blockdev.h"
#include "fileio.h"
#include "mapped_copy.h"
#include "memory.h"
#include "ring.h"

namespace ublkdm {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Ring", Ring::Define(env));
  exports.Set("createEventFd", Napi::Function::New(env, CreateEventFd, "createEventFd"));
  exports.Set("allocAligned", Napi::Function::New(env, AllocAligned, "allocAligned"));
  exports.Set("addressOf", Napi::Function::New(env, AddressOf, "addressOf"));
  exports.Set("adviseNoHugePages", Napi::Function::New(env, AdviseNoHugePages, "adviseNoHugePages"));
  exports.Set("mmapReadOnly", Napi::Function::New(env, MmapReadOnly, "mmapReadOnly"));
  exports.Set("mmapShared", Napi::Function::New(env, MmapShared, "mmapShared"));
  exports.Set("copyFromMapping", Napi::Function::New(env, CopyFromMapping, "copyFromMapping"));
  exports.Set("copyToMapping", Napi::Function::New(env, CopyToMapping, "copyToMapping"));
  exports.Set("copyBytes", Napi::Function::New(env, CopyBytesBetween, "copyBytes"));
  exports.Set("unmap", Napi::Function::New(env, Unmap, "unmap"));
  exports.Set("blockDeviceBytes", Napi::Function::New(env, BlockDeviceBytes, "blockDeviceBytes"));
  exports.Set("pread", Napi::Function::New(env, Pread, "pread"));
  exports.Set("fileSize", Napi::Function::New(env, FileSize, "fileSize"));
  exports.Set("nextData", Napi::Function::New(env, NextData, "nextData"));
  exports.Set("nextHole", Napi::Function::New(env, NextHole, "nextHole"));
  exports.Set("pwrite", Napi::Function::New(env, Pwrite, "pwrite"));
  exports.Set("preadv", Napi::Function::New(env, Preadv, "preadv"));
  exports.Set("pwritev", Napi::Function::New(env, Pwritev, "pwritev"));
  exports.Set("logicalBlockBytes", Napi::Function::New(env, LogicalBlockBytes, "logicalBlockBytes"));
  exports.Set("threadCpus", Napi::Function::New(env, ThreadCpus, "threadCpus"));
  exports.Set("setThreadCpus", Napi::Function::New(env, SetThreadCpus, "setThreadCpus"));
  return exports;
}

}  // namespace ublkdm

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return ublkdm::Init(env, exports); }

NODE_API_MODULE(ublkdm_native, InitAddon)
