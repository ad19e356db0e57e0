/** A FIFO with O(1) shift and push-to-head, for the client's job lists. */
export class JobQueue<T> {
  private items: T[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  pushHead(item: T): void {
    if (this.head > 0) this.items[--this.head] = item;
    else this.items.unshift(item);
  }

  shift(): T | undefined {
    if (this.head === this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined as T;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    }
    return item;
  }

  /** The item `index` places from the front. */
  at(index: number): T {
    return this.items[this.head + index];
  }

  removeAt(index: number): T {
    if (index === 0) return this.shift() as T;
    return this.items.splice(this.head + index, 1)[0];
  }

  /** Moves every item of `other` to the tail of this queue. */
  spliceTail(other: JobQueue<T>): void {
    for (let item = other.shift(); item !== undefined; item = other.shift()) this.push(item);
  }
}
