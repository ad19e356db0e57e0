// One io_uring, owned by one JS object. Completions are handed to JS in batches through two
// shared typed arrays, either when the ring's eventfd becomes readable on the libuv loop, or,
// for a ring driven by its caller (a queue thread with nothing else to wait on), from Wait().
#pragma once

#include <liburing.h>
#include <napi.h>
#include <sys/uio.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

namespace ublkdm {

// createEventFd(): a non-blocking, close-on-exec eventfd, for a thread waiting in its ring to be
// woken by another (a read of it sits in the ring; the other thread writes it).
Napi::Value CreateEventFd(const Napi::CallbackInfo& info);

class Ring : public Napi::ObjectWrap<Ring> {
 public:
  static Napi::Function Define(Napi::Env env);

  explicit Ring(const Napi::CallbackInfo& info);
  ~Ring() override;

 private:
  Napi::Value PrepRead(const Napi::CallbackInfo& info);
  Napi::Value PrepWrite(const Napi::CallbackInfo& info);
  Napi::Value PrepReadv(const Napi::CallbackInfo& info);
  Napi::Value PrepWritev(const Napi::CallbackInfo& info);
  Napi::Value PrepFsync(const Napi::CallbackInfo& info);
  Napi::Value PrepFallocate(const Napi::CallbackInfo& info);
  Napi::Value PrepUringCmd(const Napi::CallbackInfo& info);
  Napi::Value StageSqes(const Napi::CallbackInfo& info);
  Napi::Value TimeWaitsInto(const Napi::CallbackInfo& info);
  Napi::Value PrepStaged(const Napi::CallbackInfo& info);
  Napi::Value PrepBlockDiscard(const Napi::CallbackInfo& info);
  Napi::Value PrepCancel(const Napi::CallbackInfo& info);
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Reap(const Napi::CallbackInfo& info);
  Napi::Value Wait(const Napi::CallbackInfo& info);
  Napi::Value BoundMethods(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value KeepUntilExit(const Napi::CallbackInfo& info);
  Napi::Value PollAfterWakeups(const Napi::CallbackInfo& info);

  // Shared by readv/writev: builds the iovec array kept until the request completes.
  Napi::Value PrepVectored(const Napi::CallbackInfo& info, bool isWrite);

  // A free SQE, submitting what is queued when the SQ is full. Null (with a pending JS
  // exception) if the ring is closed or stays full.
  io_uring_sqe* NextSqe(Napi::Env env);
  // The same without JS: null with *err set to the errno (the ring closed or stayed full).
  io_uring_sqe* TryNextSqe(int* err);
  // Fills sqe as a URING_CMD on fd (the whole SQE cleared first).
  void SetUringCmd(io_uring_sqe* sqe, int fd, uint32_t cmdOp);
  // Turns the requests JS staged (see StageSqes) into SQEs. Those that get no SQE (the SQ stays
  // full) stay staged, at the front, for the next call.
  void PrepStagedSqes();
  // An SQE cleared and set up as IORING_OP_URING_CMD on fd; nullptr (JS error thrown) if none.
  io_uring_sqe* NextUringCmdSqe(Napi::Env env, int fd, uint32_t cmdOp);
  // Accounts one more request in flight; the loop is kept alive only while some are.
  void Track(io_uring_sqe* sqe, uint64_t token);

  static void OnEventFdReadable(uv_poll_t* handle, int status, int events);
  void DrainEventFd();
  // Runs the JS callback for every batch ready; returns how many completions it ran.
  unsigned ReapCompletions();
  // After a wakeup of the loop that found a few completions, poll for the next (see
  // PollAfterWakeups).
  void PollForNext(unsigned reaped);
  // Copies up to one batch of ready CQEs into the shared arrays and consumes them; returns how
  // many. Completions the kernel still holds back (overflow list, pending task work) count.
  unsigned CollectBatch();
  // Poll without sleeping until minComplete completions are ready or pollMicros passed (counted
  // from startNanos, a CLOCK_MONOTONIC reading): 0 or -errno.
  int PollFor(unsigned minComplete, int64_t pollMicros, int64_t startNanos);
  void Teardown();

  io_uring ring_{};
  bool open_ = false;
  bool sqe128_ = false;
  // No eventfd and no uv_poll: the owner blocks in Wait() instead of the libuv loop.
  bool callerDriven_ = false;
  // The kernel raises IORING_SQ_TASKRUN when it queues task work (IORING_SETUP_TASKRUN_FLAG).
  bool taskrunFlag_ = false;
  int eventFd_ = -1;
  // A second descriptor of the ring, never closed (see KeepUntilExit).
  int keptFd_ = -1;
  uv_poll_t* poll_ = nullptr;  // freed by uv_close's callback, which may outlive this object
  uint64_t inFlight_ = 0;
  // Event-loop rings: how long to poll after a wakeup that found a few completions (0: never),
  // how many are a few, and whether the last such poll found one (the client is still sending).
  int64_t pollMicros_ = 0;
  // The most completions a wakeup may run for the poll after it to be worth its CPU.
  unsigned pollMaxBatch_ = 1;
  bool lastPollFound_ = false;

  void KeepCompletionArrays(Napi::Int32Array tokens, Napi::Int32Array results);

  Napi::Reference<Napi::Int32Array> tokens_;
  Napi::Reference<Napi::Int32Array> results_;
  int32_t* tokensData_ = nullptr;
  int32_t* resultsData_ = nullptr;
  Napi::FunctionReference onCompletions_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  std::vector<io_uring_cqe*> cqes_;

  // Requests written by JS into a shared array instead of one call each (see StageSqes);
  // prepared before every submit.
  Napi::Reference<Napi::Float64Array> stagedSqes_;
  double* stagedWords_ = nullptr;
  size_t stagedCapacity_ = 0;

  // Where Wait() writes how long its last wait in the kernel took, in microseconds (see
  // TimeWaitsInto); null: waits are not timed.
  Napi::Reference<Napi::Float64Array> waitTimes_;
  double* waitMicros_ = nullptr;

  // readv/writev argument arrays, read by the kernel until the request completes.
  std::unordered_map<uint64_t, std::unique_ptr<iovec[]>> iovecsInFlight_;
};

}  // namespace ublkdm
