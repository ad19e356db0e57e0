import { strict as assert } from 'node:assert';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { IoOp } from '../../../src/io/bio';
import { openRequestPath } from '../../../tools/request-path';

describe('tools/request-path: the request path on an instant ring', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'request-path-test-'));
  });
  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('serves null requests: one COMMIT_AND_FETCH each, nothing else', async () => {
    const requestPath = await openRequestPath('null', 4, IoOp.Read, dir);
    try {
      const served = requestPath.serve(1000);
      assert.ok(served >= 1000 && served < 1000 + 4, `served ${served}`);
      requestPath.native.submit(); // the last answers' commands are still staged
      const { ublkCommands, reads, writes } = requestPath.native.staged;
      // 4 FETCHes, then one COMMIT_AND_FETCH per request answered.
      assert.equal(ublkCommands, 4 + served);
      assert.equal(reads + writes, 0);
    } finally {
      await requestPath.close();
    }
  });

  for (const op of [IoOp.Read, IoOp.Write] as const) {
    it(`stages each linear ${op === IoOp.Read ? 'read' : 'write'} of a tag buffer through the O_DIRECT descriptor`, async () => {
      // A read or write that is not staged (a call into the addon each) makes the instant ring
      // throw: the path the harness times would no longer be the queue thread's.
      const requestPath = await openRequestPath('linear', 32, op, dir);
      try {
        const served = requestPath.serve(2000);
        requestPath.native.submit();
        const { reads, writes } = requestPath.native.staged;
        // One each for the requests answered, and for those (32 at most) still in service.
        const issued = op === IoOp.Read ? reads : writes;
        assert.ok(issued >= served && issued <= served + 32, `${issued} issued for ${served} answered`);
        assert.equal(op === IoOp.Read ? writes : reads, 0);
        assert.ok(requestPath.native.waits > 0);
      } finally {
        await requestPath.close();
      }
    });
  }

  it('serves tmpfs linear writes in place: a NEED_GET_DATA and a COMMIT_AND_FETCH each, no ring I/O', async () => {
    // The path of a queue thread's tmpfs linear on a device with UBLK_F_NEED_GET_DATA: a write
    // that fell back to a pwrite or a staged write would not be the one the guest's bench times.
    const requestPath = await openRequestPath('linear-inplace', 8, IoOp.Write, dir);
    try {
      const { dispatcher } = requestPath;
      const place = dispatcher.placeWrite.bind(dispatcher);
      let placed = 0;
      dispatcher.placeWrite = (bio) => {
        const address = place(bio);
        if (address !== 0) placed++;
        return address;
      };
      const served = requestPath.serve(1000);
      assert.ok(placed >= served, `${placed} of ${served} writes placed in the file`);
      requestPath.native.submit();
      const { ublkCommands, reads, writes } = requestPath.native.staged;
      // 8 FETCHes, then per write answered its NEED_GET_DATA and COMMIT_AND_FETCH; a write still
      // in service has had its NEED_GET_DATA.
      assert.ok(ublkCommands >= 8 + 2 * served && ublkCommands <= 8 + 2 * served + 8, `${ublkCommands} commands for ${served} writes`);
      assert.equal(reads + writes, 0);
    } finally {
      await requestPath.close();
    }
  });
});
