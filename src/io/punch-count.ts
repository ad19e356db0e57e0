/**
 * How many holes this process's threads have punched in the files they serve, counted in memory
 * every thread shares.
 *
 * A FileDevice serving in place remembers which pages of its file hold data, so that it asks
 * the file (lseek) once per extent rather than once per request. Each queue thread opens its own
 * FileDevice on a file, so what one thread's discard punches, another's still remembers as data,
 * and would name to ublk: its copy then faults a page into the hole (memory loop's reads never
 * take), and on a full tmpfs fails, which ublk answers by requeuing the read. So every punch is
 * counted here before it is made, and a FileDevice that sees the count move forgets what it
 * learned (FileDevice.inPlaceAddress, once per wait of its ring).
 *
 * The daemon thread's counter is handed to each queue thread it starts (QueueThreadData), which
 * adopts it before opening any file.
 */
let punches: Int32Array = new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT));

/** The counter, for a thread about to be started. */
export function sharedPunchCounter(): Int32Array {
  return punches;
}

/** Count with `counter` (another thread's sharedPunchCounter()) from now on. */
export function adoptPunchCounter(counter: Int32Array): void {
  if (!(counter.buffer instanceof SharedArrayBuffer) || counter.length < 1) throw new TypeError('adoptPunchCounter: an Int32Array over a SharedArrayBuffer');
  punches = counter;
}

/** The punches counted so far (wrapping at 2^31: compare for equality only). */
export function punchCount(): number {
  return Atomics.load(punches, 0);
}

/** Count a punch about to be made; returns the count before it. */
export function countPunch(): number {
  return Atomics.add(punches, 0, 1);
}
