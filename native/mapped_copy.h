// Copies between a view and a file mapping (mmapShared / mmapReadOnly) that a fault in the
// mapping cannot kill the process with, and between two views of memory, in moves TCG runs fast.
#pragma once

#include <napi.h>

namespace ublkdm {

// copyFromMapping(mapping, mappingByteOffset, target) / copyToMapping(mapping, mappingByteOffset,
// source): the view's length in bytes moved, or -EFAULT when a page of the mapping could not be
// touched (the file shrank under it, or a hole could not be filled on a full tmpfs): the caller
// then goes by pread or pwrite, which answer such a range with a short count or an errno.
Napi::Value CopyFromMapping(const Napi::CallbackInfo& info);
Napi::Value CopyToMapping(const Napi::CallbackInfo& info);

// copyBytes(target, source): source's bytes to the start of target (at least as long), in the
// same vector moves, for copies between buffers of memory (never a file mapping: unguarded).
Napi::Value CopyBytesBetween(const Napi::CallbackInfo& info);

}  // namespace ublkdm
