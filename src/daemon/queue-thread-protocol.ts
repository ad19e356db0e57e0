import type { MessagePort } from 'node:worker_threads';
import type { DeviceKey } from '../io/block-device';
import type { QueuePlacement } from './queue-placement';

/**
 * The messages between the daemon thread and its queue threads (daemon/queue-threads.ts and
 * daemon/queue-thread.ts). Queue thread k serves queue k of every device served by threads.
 * Messages to a queue thread go through a MessagePort it reads with receiveMessageOnPort when
 * its doorbell (an eventfd read sitting in its ring) rings, since it waits in io_uring_enter,
 * not in libuv. Forwarded requests and their answers do not: they go through shared memory
 * (forward-channel.ts), and only the buffers they use are announced here.
 */

/**
 * A table a queue thread builds its own copy of: the live table's `dmsetup table` text, and the
 * identity of every device it names, which the copy must find again (so a path that now names
 * another file is refused rather than written to).
 */
export interface TablePlan {
  readonly text: string;
  readonly devices: ReadonlyArray<{ readonly spec: string; readonly key: DeviceKey }>;
  /**
   * The segments of owner-thread targets the copy views rather than copies (Target.queueViewShare):
   * the thread serves part of their I/O and forwards the rest. Absent when there are none.
   */
  readonly views?: ReadonlyArray<{ readonly startSector: number; readonly share: SharedArrayBuffer }>;
}

export interface QueueThreadData {
  /** The eventfd the daemon thread writes after posting to `port`. */
  readonly doorbellFd: number;
  readonly port: MessagePort;
  /** Set to 1 by the daemon thread when the thread must stop waiting in its ring for good. */
  readonly stopFlag: Int32Array;
  /** How long the thread polls its ring before it sleeps (PollPolicy's budget; 0: never). */
  readonly pollMicros: number;
  /** Where the thread runs relative to the CPUs that submit to its queues. */
  readonly placement: QueuePlacement;
  /** The daemon thread's count of hole punches (io/punch-count.ts), which the thread counts with. */
  readonly punchCounter: Int32Array;
  /** The RecordRing (forward-channel.ts) of the requests the thread forwards: it writes, the daemon thread reads. */
  readonly requestRing: SharedArrayBuffer;
  /** The RecordRing of their answers: the daemon thread writes, the thread reads (after its doorbell). */
  readonly answerRing: SharedArrayBuffer;
}

type Sequenced = { readonly seq: number };

/**
 * `table`: a plan to serve requests from a local copy, or null to forward every request to the
 * daemon thread (tables with stateful targets, whose one instance must see all I/O, and no view).
 */
export type AttachMessage = Sequenced & {
  readonly kind: 'attach';
  readonly devId: number;
  readonly queueId: number;
  readonly charFd: number;
  readonly queues: number;
  readonly depth: number;
  readonly maxIoBytes: number;
  readonly sizeSectors: number;
  readonly table: TablePlan | null;
  /** The CPUs whose requests blk-mq sends to this queue (empty if unknown). */
  readonly submitterCpus: readonly number[];
  /** The device has UBLK_F_NEED_GET_DATA: the thread serves its table in place where it can. */
  readonly needGetData: boolean;
};

export type ToQueueThread =
  | AttachMessage
  /** Suspend the local copy (no-op while forwarding: the daemon thread's dispatcher holds the I/O). */
  | (Sequenced & { readonly kind: 'suspend'; readonly devId: number; readonly noflush: boolean })
  /** Resume; with `swap`, first replace the local table (or start/stop forwarding). */
  | (Sequenced & { readonly kind: 'resume'; readonly devId: number; readonly swap?: TablePlan | null })
  | { readonly kind: 'exit' };

/** Whether a queue now serves from a local table copy (false: it forwards). */
export type Reply = { readonly kind: 'reply'; readonly seq: number; readonly error?: string; readonly local?: boolean };

export type FromQueueThread =
  | Reply
  /**
   * A shared buffer forwarded requests name by id (forward-channel.ts' SharedBufferPool): new,
   * with its memory, or dropped, without. Sent before any request that names it.
   */
  | { readonly kind: 'buffer'; readonly id: number; readonly share?: SharedArrayBuffer }
  | { readonly kind: 'retired'; readonly devId: number; readonly queueId: number; readonly error?: string }
  | { readonly kind: 'event'; readonly devId: number }
  | { readonly kind: 'warn'; readonly message: string };
