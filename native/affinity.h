// The CPUs the calling thread may run on (sched_getaffinity / sched_setaffinity of the thread
// itself): a queue thread is placed on the CPUs whose requests its queue receives.
#pragma once

#include <napi.h>

namespace ublkdm {

Napi::Value ThreadCpus(const Napi::CallbackInfo& info);
Napi::Value SetThreadCpus(const Napi::CallbackInfo& info);

}  // namespace ublkdm
