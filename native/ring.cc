#include "ring.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "js_errors.h"
#include "memory.h"

namespace ublkdm {

namespace {

// The CQ is larger than the SQ so that a full SQ of requests plus long-lived ublk commands
// rarely overflows it (the kernel keeps overflowed CQEs anyway; this keeps them on the fast path).
constexpr unsigned kCqPerSqEntries = 4;
constexpr size_t kUringCmdBytes64 = 16;
constexpr size_t kUringCmdBytes128 = 80;
// BLOCK_URING_CMD_DISCARD = _IO(0x12, 0) (linux/fs.h, Linux 6.12). Neither the installed kernel
// headers nor liburing 2.3 (no io_uring_prep_cmd_discard) define it, so it is spelled out here.
constexpr uint32_t kBlockUringCmdDiscard = (0x12u << 8) | 0u;
// Numbers per staged SQE (see StageSqes): kind, fd, five that depend on the kind, token.
constexpr size_t kStagedRecordWords = 8;
// A staged record's first number: what it asks for.
enum class StagedKind : int { kUblkIoCmd = 0, kRead = 1, kWrite = 2 };

// The 16-byte ublk I/O command payload (struct ublksrv_io_cmd).
struct UblkIoCmd {
  uint16_t queueId;
  uint16_t tag;
  int32_t result;
  uint64_t bufAddress;
};
static_assert(sizeof(UblkIoCmd) == 16, "ublksrv_io_cmd is 16 bytes");

bool ArgsAreNumbers(const Napi::CallbackInfo& info, size_t count) {
  if (info.Length() < count) return false;
  for (size_t i = 0; i < count; i++) {
    if (!info[i].IsNumber()) return false;
  }
  return true;
}

uint64_t ToToken(Napi::Value value) { return static_cast<uint64_t>(value.As<Napi::Number>().DoubleValue()); }

uint64_t ToByteOffset(Napi::Value value) { return static_cast<uint64_t>(value.As<Napi::Number>().Int64Value()); }

// While a caller-driven ring with TASKRUN_FLAG polls by looking at memory, how often it still
// yields the CPU (and enters the kernel once, whatever the flags say).
constexpr int64_t kPollYieldEveryNanos = 50 * 1000;
// Looks at memory between two readings of the clock: in a VM without a usable TSC, reading it
// is a system call.
constexpr unsigned kPollLooksPerClockRead = 32;

int64_t MonotonicNanos() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec * 1000000000LL + now.tv_nsec;
}

}  // namespace

Napi::Value CreateEventFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    ThrowErrno(env, "eventfd", errno);
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Function Ring::Define(Napi::Env env) {
  // The ring's methods are reached only through boundMethods() (it says why).
  return DefineClass(env, "Ring", {InstanceMethod("boundMethods", &Ring::BoundMethods)});
}

Ring::Ring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Ring>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsNumber() || !info[1].IsBoolean() || !info[2].IsTypedArray() ||
      !info[3].IsTypedArray() || !info[4].IsFunction() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
      info[3].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    ThrowType(env, "new Ring(entries, sqe128, tokens: Int32Array, results: Int32Array, onCompletions[, callerDriven])");
    return;
  }
  unsigned entries = info[0].As<Napi::Number>().Uint32Value();
  sqe128_ = info[1].As<Napi::Boolean>().Value();
  Napi::Int32Array tokens = info[2].As<Napi::Int32Array>();
  Napi::Int32Array results = info[3].As<Napi::Int32Array>();
  size_t capacity = std::min(tokens.ElementLength(), results.ElementLength());
  if (entries == 0 || capacity == 0) {
    Napi::RangeError::New(env, "Ring: entries and the completion arrays must be non-empty").ThrowAsJavaScriptException();
    return;
  }

  callerDriven_ = info.Length() > 5 && info[5].IsBoolean() && info[5].As<Napi::Boolean>().Value();

  // A caller-driven ring is used by one thread only and reaped only from Wait(), which enters
  // the kernel for events: completion task work can then wait for that entry instead of
  // interrupting the thread (DEFER_TASKRUN, which needs SINGLE_ISSUER). Kernels before 6.1
  // refuse the flags; such a ring works without them, at the cost of those interruptions.
  //
  // TASKRUN_FLAG has the kernel also raise IORING_SQ_TASKRUN in the shared SQ flags whenever it
  // queues task work for the ring, so a poll can look at memory for news instead of entering
  // the kernel to find out (PollFor).
  unsigned baseFlags = IORING_SETUP_CQSIZE | (sqe128_ ? IORING_SETUP_SQE128 : 0);
  const unsigned deferred = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  const unsigned callerDrivenFlags[] = {deferred | IORING_SETUP_TASKRUN_FLAG, deferred, IORING_SETUP_COOP_TASKRUN, 0};
  int err = -EINVAL;
  for (unsigned extra : callerDrivenFlags) {
    if (!callerDriven_ && extra != 0) continue;
    io_uring_params params{};
    params.flags = baseFlags | extra;
    params.cq_entries = entries * kCqPerSqEntries;
    err = io_uring_queue_init_params(entries, &ring_, &params);
    if (err != -EINVAL) {
      taskrunFlag_ = err == 0 && (extra & IORING_SETUP_TASKRUN_FLAG) != 0;
      break;
    }
  }
  if (err < 0) {
    ThrowErrno(env, "io_uring_queue_init_params", -err);
    return;
  }
  if (callerDriven_) {
    // io_uring_enter looks the ring's descriptor up on every call, and in a process with threads
    // that takes a reference on the file each time (fget, fput): registered, the thread's own
    // table names the ring instead. Only this thread enters this ring, which the registration
    // (per thread) requires; io_uring_queue_exit drops it. A kernel without it (before 5.18)
    // refuses, and the ring works as before.
    io_uring_register_ring_fd(&ring_);
    KeepCompletionArrays(tokens, results);
    cqes_.resize(capacity);
    open_ = true;
    return;
  }
  eventFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (eventFd_ < 0) {
    int saved = errno;
    io_uring_queue_exit(&ring_);
    ThrowErrno(env, "eventfd", saved);
    return;
  }
  err = io_uring_register_eventfd(&ring_, eventFd_);
  if (err < 0) {
    io_uring_queue_exit(&ring_);
    close(eventFd_);
    ThrowErrno(env, "io_uring_register_eventfd", -err);
    return;
  }
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  poll_ = new uv_poll_t;
  uv_poll_init(loop, poll_, eventFd_);
  poll_->data = this;
  uv_poll_start(poll_, UV_READABLE, &Ring::OnEventFdReadable);
  // Idle rings must not keep the process alive; Track() refs the handle while I/O is in flight.
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));

  KeepCompletionArrays(tokens, results);
  onCompletions_ = Napi::Persistent(info[4].As<Napi::Function>());
  asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "ublkdm.Ring");
  cqes_.resize(capacity);
  open_ = true;
}

Ring::~Ring() { Teardown(); }

// The arrays are read and written on every wait: their data pointers are taken once here, not
// through a reference and a typed-array lookup each time (a fifth of a QD 1 request's CPU went
// there). Data() asks V8 for the array's buffer, which moves the bytes of a small on-heap array
// off the heap for good; the references keep the arrays, so the pointers stay valid.
void Ring::KeepCompletionArrays(Napi::Int32Array tokens, Napi::Int32Array results) {
  tokens_ = Napi::Persistent(tokens);
  results_ = Napi::Persistent(results);
  tokensData_ = tokens.Data();
  resultsData_ = results.Data();
}

void Ring::Teardown() {
  if (!open_) return;
  open_ = false;
  if (poll_ != nullptr) {
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* handle) { delete reinterpret_cast<uv_poll_t*>(handle); });
    poll_ = nullptr;
    io_uring_unregister_eventfd(&ring_);
  }
  io_uring_queue_exit(&ring_);
  if (eventFd_ >= 0) close(eventFd_);
  eventFd_ = -1;
  iovecsInFlight_.clear();
  inFlight_ = 0;
}

io_uring_sqe* Ring::NextSqe(Napi::Env env) {
  if (!open_) {
    Napi::Error::New(env, "ring is closed").ThrowAsJavaScriptException();
    return nullptr;
  }
  int err = 0;
  io_uring_sqe* sqe = TryNextSqe(&err);
  if (sqe == nullptr) ThrowErrno(env, err == EBUSY ? "io_uring_get_sqe" : "io_uring_submit", err);
  return sqe;
}

io_uring_sqe* Ring::TryNextSqe(int* err) {
  if (!open_) {
    *err = EBADF;
    return nullptr;
  }
  for (int attempt = 0; attempt < 4; attempt++) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe != nullptr) return sqe;
    int submitted = io_uring_submit(&ring_);
    if (submitted < 0 && submitted != -EAGAIN && submitted != -EBUSY && submitted != -EINTR) {
      *err = -submitted;
      return nullptr;
    }
  }
  *err = EBUSY;
  return nullptr;
}

void Ring::Track(io_uring_sqe* sqe, uint64_t token) {
  io_uring_sqe_set_data64(sqe, token);
  if (inFlight_++ == 0 && poll_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
}

Napi::Value Ring::PrepRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* data;
  size_t byteLength;
  if (!info[0].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber()) {
    ThrowType(env, "prepRead(fd, buf, fileByteOffset, token)");
    return env.Undefined();
  }
  if (!ViewBytes(info[1], &data, &byteLength)) return env.Undefined();
  io_uring_sqe* sqe = NextSqe(env);
  if (sqe == nullptr) return env.Undefined();
  io_uring_prep_read(sqe, info[0].As<Napi::Number>().Int32Value(), data, static_cast<unsigned>(byteLength),
                     ToByteOffset(info[2]));
  Track(sqe, ToToken(info[3]));
  return env.Undefined();
}

Napi::Value Ring::PrepWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* data;
  size_t byteLength;
  if (!info[0].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber() || !info[4].IsNumber()) {
    ThrowType(env, "prepWrite(fd, buf, fileByteOffset, rwFlags, token)");
    return env.Undefined();
  }
  if (!ViewBytes(info[1], &data, &byteLength)) return env.Undefined();
  io_uring_sqe* sqe = NextSqe(env);
  if (sqe == nullptr) return env.Undefined();
  io_uring_prep_write(sqe, info[0].As<Napi::Number>().Int32Value(), data, static_cast<unsigned>(byteLength),
                      ToByteOffset(info[2]));
  sqe->rw_flags = static_cast<__kernel_rwf_t>(info[3].As<Napi::Number>().Int32Value());
  Track(sqe, ToToken(info[4]));
  return env.Undefined();
}

Napi::Value Ring::PrepReadv(const Napi::CallbackInfo& info) { return PrepVectored(info, false); }

Napi::Value Ring::PrepWritev(const Napi::CallbackInfo& info) { return PrepVectored(info, true); }

Napi::Value Ring::PrepVectored(const Napi::CallbackInfo& info, bool isWrite) {
  Napi::Env env = info.Env();
  // readv: (fd, bufs, fileByteOffset, token); writev: (fd, bufs, fileByteOffset, rwFlags, token)
  size_t tokenIndex = isWrite ? 4 : 3;
  if (!info[0].IsNumber() || !info[1].IsArray() || !info[2].IsNumber() ||
      !info[tokenIndex].IsNumber() || (isWrite && !info[3].IsNumber())) {
    ThrowType(env, isWrite ? "prepWritev(fd, bufs, fileByteOffset, rwFlags, token)"
                           : "prepReadv(fd, bufs, fileByteOffset, token)");
    return env.Undefined();
  }
  Napi::Array bufs = info[1].As<Napi::Array>();
  uint32_t count = bufs.Length();
  if (count == 0 || count > IOV_MAX) {
    Napi::RangeError::New(env, "readv/writev: 1..IOV_MAX buffers").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::unique_ptr<iovec[]> iovecs(new iovec[count]);
  for (uint32_t i = 0; i < count; i++) {
    void* data;
    size_t byteLength;
    if (!ViewBytes(bufs.Get(i), &data, &byteLength)) return env.Undefined();
    iovecs[i].iov_base = data;
    iovecs[i].iov_len = byteLength;
  }
  io_uring_sqe* sqe = NextSqe(env);
  if (sqe == nullptr) return env.Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint64_t fileByteOffset = ToByteOffset(info[2]);
  uint64_t token = ToToken(info[tokenIndex]);
  if (isWrite) {
    io_uring_prep_writev(sqe, fd, iovecs.get(), count, fileByteOffset);
    sqe->rw_flags = static_cast<__kernel_rwf_t>(info[3].As<Napi::Number>().Int32Value());
  } else {
    io_uring_prep_readv(sqe, fd, iovecs.get(), count, fileByteOffset);
  }
  iovecsInFlight_[token] = std::move(iovecs);
  Track(sqe, token);
  return env.Undefined();
}

Napi::Value Ring::PrepFsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsBoolean() || !info[2].IsNumber()) {
    ThrowType(env, "prepFsync(fd, datasync, token)");
    return env.Undefined();
  }
  io_uring_sqe* sqe = NextSqe(env);
  if (sqe == nullptr) return env.Undefined();
  io_uring_prep_fsync(sqe, info[0].As<Napi::Number>().Int32Value(),
                      info[1].As<Napi::Boolean>().Value() ? IORING_FSYNC_DATASYNC : 0);
  Track(sqe, ToToken(info[2]));
  return env.Undefined();
}

Napi::Value Ring::PrepFallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 5)) {
    ThrowType(env, "prepFallocate(fd, mode, byteOffset, byteLength, token)");
    return env.Undefined();
  }
  io_uring_sqe* sqe = NextSqe(env);
  if (sqe == nullptr) return env.Undefined();
  io_uring_prep_fallocate(sqe, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value(),
                          static_cast<off_t>(info[2].As<Napi::Number>().Int64Value()),
                          static_cast<off_t>(info[3].As<Napi::Number>().Int64Value()));
  Track(sqe, ToToken(info[4]));
  return env.Undefined();
}

// liburing 2.3 has no uring_cmd helper: fill the SQE by hand, clearing both halves of a
// 128-byte SQE so no stale command bytes reach the driver.
io_uring_sqe* Ring::NextUringCmdSqe(Napi::Env env, int fd, uint32_t cmdOp) {
  io_uring_sqe* sqe = NextSqe(env);
  if (sqe != nullptr) SetUringCmd(sqe, fd, cmdOp);
  return sqe;
}

void Ring::SetUringCmd(io_uring_sqe* sqe, int fd, uint32_t cmdOp) {
  std::memset(sqe, 0, sqe128_ ? 128 : 64);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  sqe->cmd_op = cmdOp;
}

Napi::Value Ring::PrepUringCmd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsTypedArray() || !info[3].IsNumber()) {
    ThrowType(env, "prepUringCmd(fd, cmdOp, payload: Uint8Array, token)");
    return env.Undefined();
  }
  void* payload;
  size_t payloadBytes;
  if (!ViewBytes(info[2], &payload, &payloadBytes)) return env.Undefined();
  size_t room = sqe128_ ? kUringCmdBytes128 : kUringCmdBytes64;
  if (payloadBytes > room) {
    Napi::RangeError::New(env, "prepUringCmd: payload larger than the SQE command area").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  io_uring_sqe* sqe = NextUringCmdSqe(env, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Uint32Value());
  if (sqe == nullptr) return env.Undefined();
  std::memcpy(sqe->cmd, payload, payloadBytes);
  Track(sqe, ToToken(info[3]));
  return env.Undefined();
}

// stageSqes(records: Float64Array): JS queues the requests of its hot path (ublk FETCH_REQ and
// COMMIT_AND_FETCH_REQ, reads and writes of memory whose address it knows) by writing them into
// `records` instead of by a call each: a request then crosses N-API once (the wait that delivers
// it), not once per SQE. records[0] is how many are staged; record i is the kStagedRecordWords
// numbers from 1 + i * kStagedRecordWords:
//   kUblkIoCmd: kind, fd, cmdOp, queueId, tag, result, bufAddress, token
//   kRead:      kind, fd, address, byteLength, fileByteOffset, 0, 0, token
//   kWrite:     kind, fd, address, byteLength, fileByteOffset, rwFlags, 0, token
// submit(), wait() and prepStaged() turn them into SQEs and lower the count to what is left.
Napi::Value Ring::StageSqes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[0].As<Napi::Float64Array>().ElementLength() < 1 + kStagedRecordWords) {
    ThrowType(env, "stageSqes(records: Float64Array of 1 + 8 * n numbers)");
    return env.Undefined();
  }
  Napi::Float64Array records = info[0].As<Napi::Float64Array>();
  stagedSqes_ = Napi::Persistent(records);
  // As for the completion arrays (KeepCompletionArrays): the pointer is taken once.
  stagedWords_ = records.Data();
  stagedCapacity_ = (records.ElementLength() - 1) / kStagedRecordWords;
  return env.Undefined();
}

// timeWaitsInto(times: Float64Array): from now on every wait() writes into times[0] how long it
// waited in the kernel (polling and sleeping), in microseconds, without the collecting after it.
// Timed here rather than around the call in JS: performance.now() costs a caller far more than
// its clock (Node checks the receiver's brand with a hasOwnProperty each call: 5 % of a queue
// thread's CPU under TCG).
Napi::Value Ring::TimeWaitsInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[0].As<Napi::Float64Array>().ElementLength() < 1) {
    ThrowType(env, "timeWaitsInto(times: Float64Array of at least 1 number)");
    return env.Undefined();
  }
  Napi::Float64Array times = info[0].As<Napi::Float64Array>();
  waitTimes_ = Napi::Persistent(times);
  waitMicros_ = times.Data();
  return env.Undefined();
}

Napi::Value Ring::PrepStaged(const Napi::CallbackInfo& info) {
  PrepStagedSqes();
  return info.Env().Undefined();
}

void Ring::PrepStagedSqes() {
  double* words = stagedWords_;
  if (words == nullptr || !open_ || words[0] == 0) return;
  size_t staged = std::min(static_cast<size_t>(words[0]), stagedCapacity_);
  size_t prepared = 0;
  for (; prepared < staged; prepared++) {
    const double* record = words + 1 + prepared * kStagedRecordWords;
    int err = 0;
    io_uring_sqe* sqe = TryNextSqe(&err);
    if (sqe == nullptr) break;
    int fd = static_cast<int>(record[1]);
    switch (static_cast<StagedKind>(static_cast<int>(record[0]))) {
      case StagedKind::kUblkIoCmd: {
        SetUringCmd(sqe, fd, static_cast<uint32_t>(record[2]));
        UblkIoCmd cmd{};
        cmd.queueId = static_cast<uint16_t>(record[3]);
        cmd.tag = static_cast<uint16_t>(record[4]);
        cmd.result = static_cast<int32_t>(record[5]);
        cmd.bufAddress = static_cast<uint64_t>(record[6]);
        std::memcpy(sqe->cmd, &cmd, sizeof cmd);
        break;
      }
      case StagedKind::kRead:
        io_uring_prep_read(sqe, fd, reinterpret_cast<void*>(static_cast<uintptr_t>(record[2])),
                           static_cast<unsigned>(record[3]), static_cast<uint64_t>(record[4]));
        break;
      case StagedKind::kWrite:
        io_uring_prep_write(sqe, fd, reinterpret_cast<const void*>(static_cast<uintptr_t>(record[2])),
                            static_cast<unsigned>(record[3]), static_cast<uint64_t>(record[4]));
        sqe->rw_flags = static_cast<__kernel_rwf_t>(record[5]);
        break;
      default:
        // Only IoRing writes records, so this is a bug there; still, the SQE from TryNextSqe
        // holds whatever it held before and must not reach the kernel as that.
        io_uring_prep_nop(sqe);
        break;
    }
    Track(sqe, static_cast<uint64_t>(record[7]));
  }
  // What got no SQE waits at the front for the next submit; the kernel takes them in any order.
  size_t left = staged - prepared;
  if (left > 0 && prepared > 0) {
    std::memmove(words + 1, words + 1 + prepared * kStagedRecordWords, left * kStagedRecordWords * sizeof(double));
  }
  words[0] = static_cast<double>(left);
}

// What liburing 2.8's io_uring_prep_cmd_discard does: the range travels in addr (start) and
// addr3 (length), both in bytes; the kernel checks alignment, bounds and FMODE_WRITE itself.
Napi::Value Ring::PrepBlockDiscard(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 4)) {
    ThrowType(env, "prepBlockDiscard(fd, byteOffset, byteLength, token)");
    return env.Undefined();
  }
  io_uring_sqe* sqe = NextUringCmdSqe(env, info[0].As<Napi::Number>().Int32Value(), kBlockUringCmdDiscard);
  if (sqe == nullptr) return env.Undefined();
  sqe->addr = ToByteOffset(info[1]);
  sqe->addr3 = ToByteOffset(info[2]);
  Track(sqe, ToToken(info[3]));
  return env.Undefined();
}

Napi::Value Ring::PrepCancel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 2)) {
    ThrowType(env, "prepCancel(targetToken, token)");
    return env.Undefined();
  }
  io_uring_sqe* sqe = NextSqe(env);
  if (sqe == nullptr) return env.Undefined();
  io_uring_prep_cancel64(sqe, ToToken(info[0]), 0);
  Track(sqe, ToToken(info[1]));
  return env.Undefined();
}

Napi::Value Ring::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!open_) {
    Napi::Error::New(env, "ring is closed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  PrepStagedSqes();
  int submitted = io_uring_submit(&ring_);
  if (submitted == -EAGAIN || submitted == -EBUSY || submitted == -EINTR) {
    // The CQ is backed up; ReapCompletions submits the leftovers once it has made room.
    return Napi::Number::New(env, 0);
  }
  if (submitted < 0) {
    ThrowErrno(env, "io_uring_submit", -submitted);
    return env.Undefined();
  }
  return Napi::Number::New(env, submitted);
}

Napi::Value Ring::Close(const Napi::CallbackInfo& info) {
  Teardown();
  return info.Env().Undefined();
}

// keepUntilExit(): from now on the kernel's ring outlives this object and every close of it; only
// the process's exit releases it (IoRing.keepUntilExit says why). Close-on-exec, so that no
// program the daemon runs holds the ring: the next daemon's START_USER_RECOVERY waits for it.
Napi::Value Ring::KeepUntilExit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!open_) {
    Napi::Error::New(env, "ring is closed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (keptFd_ < 0) {
    keptFd_ = fcntl(ring_.ring_fd, F_DUPFD_CLOEXEC, 0);
    if (keptFd_ < 0) ThrowErrno(env, "fcntl(F_DUPFD_CLOEXEC)", errno);
  }
  return env.Undefined();
}

void Ring::OnEventFdReadable(uv_poll_t* handle, int status, int events) {
  Ring* self = static_cast<Ring*>(handle->data);
  if (self == nullptr || !self->open_) return;
  self->DrainEventFd();
  self->PollForNext(self->ReapCompletions());
}

// A thread that sleeps in epoll between a client's requests is woken for each, and in a VM the
// wakeup costs more than the request: so poll the ring for the next one, as a queue thread does
// before it sleeps (PollFor), while the client keeps coming back within the budget. One poll per
// wakeup at most, ending at the first completion: timers and the loop's other handles wait no
// longer than pollMicros_. The eventfd signal of what the poll found brings the next wakeup,
// which finds nothing left to reap and polls again while the last poll found something.
void Ring::PollForNext(unsigned reaped) {
  if (pollMicros_ <= 0 || !open_) return;
  bool clientActive = reaped > 0 ? reaped <= pollMaxBatch_ : lastPollFound_;
  lastPollFound_ = false;
  if (!clientActive || io_uring_cq_ready(&ring_) > 0) return;
  PrepStagedSqes();  // what a callback staged for a later flush goes in with the poll's first enter
  if (PollFor(1, pollMicros_, MonotonicNanos()) < 0 || !open_) return;
  lastPollFound_ = io_uring_cq_ready(&ring_) > 0;
  if (lastPollFound_) ReapCompletions();
}

// pollAfterWakeups(micros, maxBatch): from now on, an event-loop ring polls up to `micros` for
// the next completion after a wakeup that found at most `maxBatch` (PollForNext); 0 stops it.
// Caller-driven rings poll in wait() instead.
Napi::Value Ring::PollAfterWakeups(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 2) || info[0].As<Napi::Number>().Int64Value() < 0 || info[1].As<Napi::Number>().Int64Value() < 1) {
    ThrowType(env, "pollAfterWakeups(micros >= 0, maxBatch >= 1)");
    return env.Undefined();
  }
  pollMicros_ = callerDriven_ ? 0 : info[0].As<Napi::Number>().Int64Value();
  pollMaxBatch_ = info[1].As<Napi::Number>().Uint32Value();
  return env.Undefined();
}

void Ring::DrainEventFd() {
  // Drained before reaping: a CQE posted after this read signals the eventfd again, so none
  // is left behind until some later, unrelated wakeup.
  uint64_t count;
  while (read(eventFd_, &count, sizeof count) == sizeof count) {
  }
}

unsigned Ring::CollectBatch() {
  // CQEs that did not fit the CQ wait on the kernel's overflow list (IORING_SQ_CQ_OVERFLOW), and
  // completions may wait as task work (IORING_SQ_TASKRUN); neither reaches the CQ, nor signals
  // the eventfd again, until someone enters the kernel for events. Do that whenever the CQ is
  // empty, so "0 ready" always means "nothing completed", whatever this liburing's peek does.
  if (io_uring_cq_ready(&ring_) == 0 &&
      (IO_URING_READ_ONCE(*ring_.sq.kflags) & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN)) != 0) {
    io_uring_get_events(&ring_);
  }
  unsigned ready = io_uring_peek_batch_cqe(&ring_, cqes_.data(), static_cast<unsigned>(cqes_.size()));
  if (ready == 0) return 0;
  int32_t* tokens = tokensData_;
  int32_t* results = resultsData_;
  for (unsigned i = 0; i < ready; i++) {
    uint64_t token = cqes_[i]->user_data;
    // JS makes every token, and each fits 31 bits (IoRing.nextToken says why).
    tokens[i] = static_cast<int32_t>(token);
    results[i] = cqes_[i]->res;
    if (!iovecsInFlight_.empty()) iovecsInFlight_.erase(token);
  }
  io_uring_cq_advance(&ring_, ready);
  inFlight_ = inFlight_ > ready ? inFlight_ - ready : 0;
  if (inFlight_ == 0 && poll_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  return ready;
}

Napi::Value Ring::Reap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!open_) return Napi::Number::New(env, 0);
  return Napi::Number::New(env, CollectBatch());
}

// wait(minComplete, timeoutMs[, pollMicros]): submit what is queued and block until minComplete
// completions are ready or timeoutMs (-1: no limit) has passed, in one io_uring_enter; then
// collect up to a batch like reap(). A signal or the timeout just returns what is ready (maybe 0).
// With pollMicros, it first polls that long (io_uring_enter calls that run the completions'
// task work but never sleep): in a VM, a thread that sleeps and is woken costs more than that.
Napi::Value Ring::Wait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 2) || (info.Length() > 2 && !info[2].IsNumber())) {
    ThrowType(env, "wait(minComplete, timeoutMs[, pollMicros])");
    return env.Undefined();
  }
  if (!open_) return Napi::Number::New(env, 0);
  unsigned minComplete = info[0].As<Napi::Number>().Uint32Value();
  int64_t timeoutMs = info[1].As<Napi::Number>().Int64Value();
  int64_t pollMicros = info.Length() > 2 ? info[2].As<Napi::Number>().Int64Value() : 0;
  PrepStagedSqes();
  bool polls = minComplete > 0 && pollMicros > 0 && io_uring_cq_ready(&ring_) < minComplete;
  int64_t startNanos = waitMicros_ != nullptr || polls ? MonotonicNanos() : 0;
  int err;
  if (polls) {
    err = PollFor(minComplete, pollMicros, startNanos);
    if (err < 0) {
      ThrowErrno(env, "io_uring_enter", -err);
      return env.Undefined();
    }
  }
  if (minComplete == 0 || io_uring_cq_ready(&ring_) >= minComplete) {
    err = io_uring_submit(&ring_);
  } else if (timeoutMs < 0) {
    err = io_uring_submit_and_wait(&ring_, minComplete);
  } else {
    __kernel_timespec timeout{};
    timeout.tv_sec = timeoutMs / 1000;
    timeout.tv_nsec = (timeoutMs % 1000) * 1000000;
    io_uring_cqe* cqe = nullptr;
    err = io_uring_submit_and_wait_timeout(&ring_, &cqe, minComplete, &timeout, nullptr);
  }
  if (err < 0 && err != -ETIME && err != -EINTR && err != -EAGAIN && err != -EBUSY) {
    ThrowErrno(env, "io_uring_enter", -err);
    return env.Undefined();
  }
  if (waitMicros_ != nullptr) *waitMicros_ = static_cast<double>(MonotonicNanos() - startNanos) / 1000;
  return Napi::Number::New(env, CollectBatch());
}

namespace {

template <Napi::Value (Ring::*Method)(const Napi::CallbackInfo&)>
Napi::Value CallBound(const Napi::CallbackInfo& info) {
  return (static_cast<Ring*>(info.Data())->*Method)(info);
}

}  // namespace

// boundMethods(): the ring's methods, each as a plain function that carries the Ring in its
// callback data. An instance method first unwraps `this` (napi_unwrap: a private-symbol lookup
// through V8's runtime) and takes V8's slow API-call path, which checks the receiver: at QD 1 a
// queue thread's one call per request (wait) spent 4 % of the request's CPU in the unwrap alone
// (tools/profile-guest.sh). Each function holds the ring object, so none can outlive it.
Napi::Value Ring::BoundMethods(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object methods = Napi::Object::New(env);
  auto bind = [&](const char* name, Napi::Function function) {
    function.Set("ring", Value());
    methods.Set(name, function);
  };
  bind("prepRead", Napi::Function::New(env, CallBound<&Ring::PrepRead>, "prepRead", this));
  bind("prepWrite", Napi::Function::New(env, CallBound<&Ring::PrepWrite>, "prepWrite", this));
  bind("prepReadv", Napi::Function::New(env, CallBound<&Ring::PrepReadv>, "prepReadv", this));
  bind("prepWritev", Napi::Function::New(env, CallBound<&Ring::PrepWritev>, "prepWritev", this));
  bind("prepFsync", Napi::Function::New(env, CallBound<&Ring::PrepFsync>, "prepFsync", this));
  bind("prepFallocate", Napi::Function::New(env, CallBound<&Ring::PrepFallocate>, "prepFallocate", this));
  bind("prepUringCmd", Napi::Function::New(env, CallBound<&Ring::PrepUringCmd>, "prepUringCmd", this));
  bind("stageSqes", Napi::Function::New(env, CallBound<&Ring::StageSqes>, "stageSqes", this));
  bind("timeWaitsInto", Napi::Function::New(env, CallBound<&Ring::TimeWaitsInto>, "timeWaitsInto", this));
  bind("prepStaged", Napi::Function::New(env, CallBound<&Ring::PrepStaged>, "prepStaged", this));
  bind("prepBlockDiscard", Napi::Function::New(env, CallBound<&Ring::PrepBlockDiscard>, "prepBlockDiscard", this));
  bind("prepCancel", Napi::Function::New(env, CallBound<&Ring::PrepCancel>, "prepCancel", this));
  bind("submit", Napi::Function::New(env, CallBound<&Ring::Submit>, "submit", this));
  bind("reap", Napi::Function::New(env, CallBound<&Ring::Reap>, "reap", this));
  bind("wait", Napi::Function::New(env, CallBound<&Ring::Wait>, "wait", this));
  bind("close", Napi::Function::New(env, CallBound<&Ring::Close>, "close", this));
  bind("keepUntilExit", Napi::Function::New(env, CallBound<&Ring::KeepUntilExit>, "keepUntilExit", this));
  bind("pollAfterWakeups", Napi::Function::New(env, CallBound<&Ring::PollAfterWakeups>, "pollAfterWakeups", this));
  return methods;
}

int Ring::PollFor(unsigned minComplete, int64_t pollMicros, int64_t startNanos) {
  int64_t deadlineNanos = startNanos + pollMicros * 1000;
  int64_t nowNanos = startNanos;
  int64_t yieldAtNanos = startNanos + kPollYieldEveryNanos;
  bool enter = true;
  unsigned looksSinceClock = 0;
  do {
    // Between yields, enter the kernel only when it has something for us: task work queued (a
    // ublk command completed, a read done) or CQEs held back on the overflow list. Under TCG a
    // system call costs tens of microseconds, which an io_uring_enter per look added to the
    // time a request waited to be seen.
    enter = enter || (IO_URING_READ_ONCE(*ring_.sq.kflags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0 ||
            io_uring_sq_ready(&ring_) > 0;
    if (enter) {
      int err = io_uring_submit_and_get_events(&ring_);
      if (err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY) return err;
    }
    if (io_uring_cq_ready(&ring_) >= minComplete) return 0;
    if (taskrunFlag_ && !enter && ++looksSinceClock < kPollLooksPerClockRead) continue;
    looksSinceClock = 0;
    if (taskrunFlag_) nowNanos = MonotonicNanos();
    if (!taskrunFlag_ || nowNanos >= yieldAtNanos) {
      // Poll only with a CPU nobody else wants: a runnable task here (the client itself, when it
      // shares this CPU) runs first.
      sched_yield();
      nowNanos = MonotonicNanos();
      yieldAtNanos = nowNanos + kPollYieldEveryNanos;
      enter = true;
      continue;
    }
    enter = false;
  } while (nowNanos < deadlineNanos);
  return 0;
}

unsigned Ring::ReapCompletions() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  unsigned total = 0;
  while (open_) {
    unsigned ready = CollectBatch();
    if (ready == 0) break;
    total += ready;
    PrepStagedSqes();  // leftovers of a backed-up Submit, now that there may be room
    if (io_uring_sq_ready(&ring_) > 0) io_uring_submit(&ring_);

    onCompletions_.MakeCallback(Value(), {Napi::Number::New(env, ready)}, *asyncContext_);
    if (env.IsExceptionPending()) {
      // No JS frame is below us: hand the error to process 'uncaughtException' like any
      // callback from the loop would.
      napi_fatal_exception(env, env.GetAndClearPendingException().Value());
      return total;
    }
  }
  return total;
}

}  // namespace ublkdm
