#include "affinity.h"

#include <sched.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "js_errors.h"

namespace ublkdm {

// pid 0: the calling thread, not the process (Linux affinity is per thread).
Napi::Value ThreadCpus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) {
    ThrowErrno(env, "sched_getaffinity", errno);
    return env.Undefined();
  }
  Napi::Array cpus = Napi::Array::New(env);
  uint32_t count = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (CPU_ISSET(cpu, &set)) cpus.Set(count++, Napi::Number::New(env, cpu));
  }
  return cpus;
}

Napi::Value SetThreadCpus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) {
    ThrowType(env, "setThreadCpus(cpus: number[])");
    return env.Undefined();
  }
  Napi::Array cpus = info[0].As<Napi::Array>();
  cpu_set_t set;
  CPU_ZERO(&set);
  for (uint32_t i = 0; i < cpus.Length(); i++) {
    Napi::Value value = cpus.Get(i);
    double cpu = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
    if (!(cpu >= 0 && cpu < CPU_SETSIZE) || cpu != static_cast<int>(cpu)) {
      ThrowType(env, "setThreadCpus: every CPU must be an integer from 0 to " + std::to_string(CPU_SETSIZE - 1));
      return env.Undefined();
    }
    CPU_SET(static_cast<int>(cpu), &set);
  }
  if (sched_setaffinity(0, sizeof(set), &set) != 0) {
    ThrowErrno(env, "sched_setaffinity", errno);
    return env.Undefined();
  }
  return env.Undefined();
}

}  // namespace ublkdm
