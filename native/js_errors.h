// Turning failed system calls into JS exceptions (exceptions are disabled in C++: every
// throwing path returns right after calling one of these).
#pragma once

#include <napi.h>

#include <cstring>
#include <string>

namespace ublkdm {

// Throws `what: strerror(errnum)` with .errno and .code set like Node's system errors.
inline void ThrowErrno(Napi::Env env, const std::string& what, int errnum) {
  Napi::Error error = Napi::Error::New(env, what + ": " + std::strerror(errnum));
  error.Set("errno", Napi::Number::New(env, errnum));
  error.Set("syscall", Napi::String::New(env, what));
  error.ThrowAsJavaScriptException();
}

inline void ThrowType(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
}

}  // namespace ublkdm
