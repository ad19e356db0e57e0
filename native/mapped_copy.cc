#include "mapped_copy.h"

#include <setjmp.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include "js_errors.h"

namespace ublkdm {

namespace {

// A memory access to a page of a shared file mapping that the file no longer has (truncated
// under us), or that cannot be allocated (a hole of a full tmpfs), raises SIGBUS, whose default
// ends the process, and with it every device it serves. pread and pwrite meet the same pages
// as an errno. So a copy through a mapping runs under a guard: the handler, finding the faulting
// thread inside a guarded copy, jumps back out of it, and the copy answers -EFAULT.
//
// The guard is the thread's own (faults are delivered to the thread that faulted); initial-exec
// TLS, so that reading it inside the handler allocates nothing.
__attribute__((tls_model("initial-exec"))) thread_local sigjmp_buf* activeGuard = nullptr;
struct sigaction previousBusAction;
std::once_flag installBusHandler;

void OnBus(int signal, siginfo_t* info, void* context) {
  sigjmp_buf* guard = activeGuard;
  if (guard != nullptr) {
    activeGuard = nullptr;
    siglongjmp(*guard, 1);
  }
  // Not a guarded copy's fault: what would have happened without us.
  if ((previousBusAction.sa_flags & SA_SIGINFO) != 0 && previousBusAction.sa_sigaction != nullptr) {
    previousBusAction.sa_sigaction(signal, info, context);
  } else if (previousBusAction.sa_handler != SIG_DFL && previousBusAction.sa_handler != SIG_IGN) {
    previousBusAction.sa_handler(signal);
  } else {
    // The default action, now: the process ends as SIGBUS always ended it. Raised, not left to
    // the faulting access to repeat: a SIGBUS sent by kill repeats nothing, and returning would
    // leave the process alive with the default handler in place of the guard's. (An ignored
    // SIGBUS from a fault would only repeat for ever.)
    struct sigaction fallback {};
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    sigaction(SIGBUS, &fallback, nullptr);
    raise(SIGBUS);
  }
}

void InstallBusHandler() {
  struct sigaction action {};
  action.sa_sigaction = OnBus;
  // SA_NODEFER: the handler leaves by siglongjmp, and sigsetjmp(…, 0) saves no signal mask, so
  // SIGBUS must not be left blocked behind it (a later fault would then kill outright).
  action.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  sigaction(SIGBUS, &action, &previousBusAction);
}

// 64 bytes a step in 16-byte vector moves. Not memcpy: glibc's memcpy moves a few KiB to a few
// hundred KiB with `rep movsb`, which qemu's TCG (our test guests) runs a byte at a time:
// 340 MB/s where vector moves ran 2.6 GB/s in the same guest. On hardware the two are alike.
// The attribute keeps GCC from turning the loop back into a memcpy call.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
__attribute__((noinline)) void CopyBytes(uint8_t* to, const uint8_t* from, size_t byteLength) {
#if defined(__x86_64__)
  while (byteLength >= 64) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from));
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from + 16));
    __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from + 32));
    __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from + 48));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to), a);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to + 16), b);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to + 32), c);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to + 48), d);
    to += 64;
    from += 64;
    byteLength -= 64;
  }
#endif
  std::memcpy(to, from, byteLength);
}

int64_t GuardedCopy(uint8_t* to, const uint8_t* from, size_t byteLength) {
  std::call_once(installBusHandler, InstallBusHandler);
  sigjmp_buf guard;
  if (sigsetjmp(guard, 0) != 0) return -EFAULT;  // the handler cleared activeGuard
  activeGuard = &guard;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  CopyBytes(to, from, byteLength);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  activeGuard = nullptr;
  return static_cast<int64_t>(byteLength);
}

Napi::Value MappedCopy(const Napi::CallbackInfo& info, bool toMapping) {
  Napi::Env env = info.Env();
  const char* usage = toMapping ? "copyToMapping(mapping, mappingByteOffset, source)" : "copyFromMapping(mapping, mappingByteOffset, target)";
  void* mapping = nullptr;
  size_t mappingBytes = 0;
  int64_t mappingByteOffset = -1;
  void* view = nullptr;
  size_t viewBytes = 0;
  if (info.Length() < 3 || napi_get_arraybuffer_info(env, info[0], &mapping, &mappingBytes) != napi_ok ||
      napi_get_value_int64(env, info[1], &mappingByteOffset) != napi_ok ||
      napi_get_buffer_info(env, info[2], &view, &viewBytes) != napi_ok) {
    ThrowType(env, usage);
    return env.Undefined();
  }
  if (mapping == nullptr || mappingByteOffset < 0 || static_cast<uint64_t>(mappingByteOffset) > mappingBytes ||
      viewBytes > mappingBytes - static_cast<size_t>(mappingByteOffset)) {
    Napi::RangeError::New(env, std::string(usage) + ": the range is not inside the mapping").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint8_t* inMapping = static_cast<uint8_t*>(mapping) + mappingByteOffset;
  int64_t moved = toMapping ? GuardedCopy(inMapping, static_cast<const uint8_t*>(view), viewBytes)
                            : GuardedCopy(static_cast<uint8_t*>(view), inMapping, viewBytes);
  return Napi::Number::New(env, static_cast<double>(moved));
}

}  // namespace

Napi::Value CopyBytesBetween(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "copyBytes(target, source)";
  void* target = nullptr;
  size_t targetBytes = 0;
  void* source = nullptr;
  size_t sourceBytes = 0;
  if (info.Length() < 2 || napi_get_buffer_info(env, info[0], &target, &targetBytes) != napi_ok ||
      napi_get_buffer_info(env, info[1], &source, &sourceBytes) != napi_ok) {
    ThrowType(env, usage);
    return env.Undefined();
  }
  if (sourceBytes > targetBytes) {
    Napi::RangeError::New(env, std::string(usage) + ": the source is longer than the target").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // Memory, not a file mapping: nothing to fault on, so no guard. memmove's rule for overlap is
  // not needed by any caller (two buffers, never one), and CopyBytes copies forwards.
  if (sourceBytes > 0) CopyBytes(static_cast<uint8_t*>(target), static_cast<const uint8_t*>(source), sourceBytes);
  return Napi::Number::New(env, static_cast<double>(sourceBytes));
}

Napi::Value CopyFromMapping(const Napi::CallbackInfo& info) { return MappedCopy(info, false); }
Napi::Value CopyToMapping(const Napi::CallbackInfo& info) { return MappedCopy(info, true); }

}  // namespace ublkdm
