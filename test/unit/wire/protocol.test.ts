import assert from 'node:assert/strict';
import {
  LineSplitter,
  PROTOCOL_VERSION,
  ProtocolError,
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  type Request,
} from '../../../src/wire/protocol';

function rejects(line: string, pattern: RegExp): void {
  assert.throws(() => decodeRequest(line), (err: unknown) => err instanceof ProtocolError && pattern.test(err.message));
}

describe('protocol', () => {
  const requests: Request[] = [
    { verb: 'create', name: 'vol0', table: '0 8 zero\n', options: { readOnly: false, queues: 2, depth: 64 } },
    { verb: 'create', name: 'vol0', table: '0 8 zero', options: { readOnly: true } },
    { verb: 'reload', name: 'vol0', table: '0 8 error' },
    { verb: 'remove', name: 'vol0' },
    { verb: 'suspend', name: 'vol0', noflush: false },
    { verb: 'suspend', name: 'vol0', noflush: true },
    { verb: 'wait', name: 'vol0', eventNr: 3 },
    { verb: 'resume', name: 'vol0' },
    { verb: 'ls' },
    { verb: 'ls', target: 'linear' },
    { verb: 'table', inactive: false },
    { verb: 'table', name: 'vol0', inactive: true },
    { verb: 'status', name: 'vol0' },
    { verb: 'info' },
    { verb: 'message', name: 'vol0', sector: 0, words: ['drop_writes'] },
    { verb: 'param' },
    { verb: 'param', name: 'raid1_resync_throttle' },
    { verb: 'param', name: 'raid1_resync_throttle', value: '50' },
    { verb: 'version' },
    { verb: 'failures' },
    { verb: 'shutdown', removeDevices: false },
    { verb: 'shutdown', removeDevices: true },
  ];

  for (const request of requests) {
    it(`round-trips ${JSON.stringify(request)}`, () => {
      const line = encodeRequest(request);
      assert.ok(line.endsWith('\n'));
      assert.equal(line.indexOf('\n'), line.length - 1, 'one line per message');
      assert.deepEqual(decodeRequest(line.trimEnd()), request);
    });
  }

  it('round-trips success and error responses', () => {
    const ok = encodeResponse({ ok: true, result: [{ name: 'a', major: 259, minor: 0 }] });
    assert.deepEqual(decodeResponse(ok), { ok: true, result: [{ name: 'a', major: 259, minor: 0 }] });
    const failed = encodeResponse({ ok: false, error: { message: 'device a is busy: mounted (1 mount)', code: 'EBUSY' } });
    assert.deepEqual(decodeResponse(failed), { ok: false, error: { message: 'device a is busy: mounted (1 mount)', code: 'EBUSY' } });
  });

  it('refuses a shutdown that does not say whether to remove the devices', () => {
    rejects(JSON.stringify({ v: PROTOCOL_VERSION, verb: 'shutdown' }), /"removeDevices" must be a boolean/);
  });

  it('rejects lines that are not JSON objects', () => {
    rejects('not json', /not JSON/);
    rejects('[1,2]', /not a JSON object/);
    rejects('null', /not a JSON object/);
  });

  it('rejects another protocol version', () => {
    rejects(JSON.stringify({ v: PROTOCOL_VERSION + 1, verb: 'ls' }), /protocol version/);
    rejects(JSON.stringify({ verb: 'ls' }), /protocol version/);
    assert.throws(() => decodeResponse(JSON.stringify({ v: 0, ok: true, result: 1 })), ProtocolError);
  });

  it('rejects unknown verbs and missing or mistyped fields', () => {
    const v = PROTOCOL_VERSION;
    rejects(JSON.stringify({ v, verb: 'format_disk' }), /unknown verb/);
    rejects(JSON.stringify({ v, verb: 'remove' }), /"name"/);
    rejects(JSON.stringify({ v, verb: 'remove', name: '' }), /"name"/);
    rejects(JSON.stringify({ v, verb: 'create', name: 'a', table: 5, options: { readOnly: false } }), /"table"/);
    rejects(JSON.stringify({ v, verb: 'create', name: 'a', table: '0 8 zero' }), /"options"/);
    rejects(JSON.stringify({ v, verb: 'create', name: 'a', table: '', options: { readOnly: false, queues: 0 } }), /"queues"/);
    rejects(JSON.stringify({ v, verb: 'create', name: 'a', table: '', options: { readOnly: false, depth: 1.5 } }), /"depth"/);
    rejects(JSON.stringify({ v, verb: 'table', name: 'a' }), /"inactive"/);
    rejects(JSON.stringify({ v, verb: 'message', name: 'a', sector: -1, words: ['x'] }), /"sector"/);
    rejects(JSON.stringify({ v, verb: 'message', name: 'a', sector: 0, words: [] }), /"words"/);
    rejects(JSON.stringify({ v, verb: 'message', name: 'a', sector: 0, words: [1] }), /"words"/);
    rejects(JSON.stringify({ v, verb: 'param', value: '5' }), /"value" needs a "name"/);
    rejects(JSON.stringify({ v, verb: 'param', name: 'raid1_resync_throttle', value: 5 }), /"value"/);
  });

  it('rejects responses without a proper envelope', () => {
    const v = PROTOCOL_VERSION;
    assert.throws(() => decodeResponse(JSON.stringify({ v, ok: true })), /without "result"/);
    assert.throws(() => decodeResponse(JSON.stringify({ v, ok: false, error: 'boom' })), /\{message, code\}/);
    assert.throws(() => decodeResponse(JSON.stringify({ v, result: 1 })), /boolean "ok"/);
  });

  it('splits a stream into lines however it is chunked', () => {
    const splitter = new LineSplitter();
    assert.deepEqual(splitter.push('{"a":'), []);
    assert.deepEqual(splitter.push('1}\n{"b"'), ['{"a":1}']);
    assert.deepEqual(splitter.push(':2}\n\n{"c":3}\n'), ['{"b":2}', '{"c":3}']);
  });

  it('refuses a line longer than the limit', () => {
    const splitter = new LineSplitter(16);
    assert.deepEqual(splitter.push('0123456789'), []);
    assert.throws(() => splitter.push('0123456789'), ProtocolError);
  });
});
