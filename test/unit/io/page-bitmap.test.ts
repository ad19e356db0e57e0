import { strict as assert } from 'node:assert';

import { PageBitmap } from '../../../src/io/page-bitmap';

const PAGE = 4096;
const CHUNK_BYTES = 32768 * PAGE;

describe('PageBitmap (pages of a file, by byte range)', () => {
  it('knows nothing at first, and a range only once every page it touches is marked', () => {
    const pages = new PageBitmap();
    assert.equal(pages.covers(0, PAGE), false);
    pages.mark(PAGE, 3 * PAGE);
    assert.equal(pages.covers(PAGE, 3 * PAGE), true);
    assert.equal(pages.covers(PAGE + 512, PAGE + 1024), true, 'a sector inside a marked page');
    assert.equal(pages.covers(0, 2 * PAGE), false, 'reaches into an unmarked page');
    assert.equal(pages.covers(2 * PAGE, 3 * PAGE + 512), false, 'one sector into the next page');
    assert.equal(pages.touchesAny(0, PAGE), false);
    assert.equal(pages.touchesAny(0, PAGE + 512), true, 'one sector into a marked page');
    assert.equal(pages.touchesAny(3 * PAGE, 64 * PAGE), false);
  });

  it('marks and unmarks whole pages: a partial page at an end counts as the page', () => {
    const pages = new PageBitmap();
    pages.mark(512, 2 * PAGE - 512);
    assert.equal(pages.covers(0, 2 * PAGE), true);
    pages.unmark(PAGE + 512, PAGE + 1024);
    assert.equal(pages.covers(0, PAGE), true);
    assert.equal(pages.covers(PAGE, PAGE + 512), false, 'the page a punch touched');
  });

  it('clears every page and every chunk at once', () => {
    const pages = new PageBitmap();
    pages.mark(0, 2 * CHUNK_BYTES);
    pages.clear();
    assert.equal(pages.touchesAny(0, 2 * CHUNK_BYTES), false);
    assert.equal((pages as unknown as { chunks: Map<number, Uint32Array> }).chunks.size, 0);
  });

  it('spans chunks, and unmarking where nothing was marked makes no chunk', () => {
    const pages = new PageBitmap();
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
