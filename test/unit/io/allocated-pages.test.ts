import { strict as assert } from 'node:assert';

import { AllocatedPages } from '../../../src/io/allocated-pages';

const PAGE = 4096;
const CHUNK_BYTES = 32768 * PAGE;

describe('AllocatedPages (where a file is known to hold data)', () => {
  it('knows nothing at first, and a range only once every page it touches is marked', () => {
    const pages = new AllocatedPages();
    assert.equal(pages.covers(0, PAGE), false);
    pages.mark(PAGE, 3 * PAGE);
    assert.equal(pages.covers(PAGE, 3 * PAGE), true);
    assert.equal(pages.covers(PAGE + 512, PAGE + 1024), true, 'a sector inside a marked page');
    assert.equal(pages.covers(0, 2 * PAGE), false, 'reaches into an unmarked page');
    assert.equal(pages.covers(2 * PAGE, 3 * PAGE + 512), false, 'one sector into the next page');
  });

  it('marks and unmarks whole pages: a partial page at an end counts as the page', () => {
    const pages = new AllocatedPages();
    pages.mark(512, 2 * PAGE - 512);
    assert.equal(pages.covers(0, 2 * PAGE), true);
    pages.unmark(PAGE + 512, PAGE + 1024);
    assert.equal(pages.covers(0, PAGE), true);
    assert.equal(pages.covers(PAGE, PAGE + 512), false, 'the page a punch touched');
  });

  it('spans chunks, and unmarking where nothing was marked makes no chunk', () => {
    const pages = new AllocatedPages();
    pages.mark(CHUNK_BYTES - PAGE, CHUNK_BYTES + PAGE);
    assert.equal(pages.covers(CHUNK_BYTES - PAGE, CHUNK_BYTES + PAGE), true);
    assert.equal(pages.covers(CHUNK_BYTES - 2 * PAGE, CHUNK_BYTES + PAGE), false);
    pages.unmark(0, 8 * CHUNK_BYTES);
    assert.equal(pages.covers(CHUNK_BYTES - PAGE, CHUNK_BYTES), false);
    assert.equal((pages as unknown as { chunks: Map<number, Uint32Array> }).chunks.size, 2, 'only the two chunks ever marked');
    // A terabyte-sized sparse file costs only the chunks of its extents.
    const terabyte = 2 ** 40;
    pages.mark(terabyte, terabyte + PAGE);
    assert.equal(pages.covers(terabyte, terabyte + PAGE), true);
    assert.equal(pages.covers(terabyte - PAGE, terabyte), false);
    assert.equal((pages as unknown as { chunks: Map<number, Uint32Array> }).chunks.size, 3);
  });
});
