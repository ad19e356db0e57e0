import { strict as assert } from 'node:assert';

import * as abi from '../../../src/ublk/abi';

/** Reads little-endian fields at spec offsets, independently of the encoders. */
function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

describe('ublk ABI encoding (spec ublk.md)', () => {
  it('decodes a GET_QUEUE_AFFINITY bitmap (native longs, little-endian) into ascending CPU numbers', () => {
    assert.equal(abi.CPU_SET_BYTES % 8, 0);
    const bitmap = new Uint8Array(abi.CPU_SET_BYTES);
    assert.deepEqual(abi.decodeCpuSet(bitmap), []);
    view(bitmap).setBigUint64(0, 0b1100n | (1n << 63n), true); // CPUs 2, 3 and 63
    view(bitmap).setBigUint64(8, 1n, true); // CPU 64
    bitmap[127] = 0x80; // CPU 1023
    assert.deepEqual(abi.decodeCpuSet(bitmap), [2, 3, 63, 64, 1023]);
  });

  it('control and I/O command numbers match the spec table (§3)', () => {
    assert.equal(abi.UBLK_U_CMD_GET_QUEUE_AFFINITY, 0x80207501);
    assert.equal(abi.UBLK_U_CMD_GET_DEV_INFO, 0x80207502);
    assert.equal(abi.UBLK_U_CMD_ADD_DEV, 0xc0207504);
    assert.equal(abi.UBLK_U_CMD_DEL_DEV, 0xc0207505);
    assert.equal(abi.UBLK_U_CMD_START_DEV, 0xc0207506);
    assert.equal(abi.UBLK_U_CMD_STOP_DEV, 0xc0207507);
    assert.equal(abi.UBLK_U_CMD_SET_PARAMS, 0xc0207508);
    assert.equal(abi.UBLK_U_CMD_GET_PARAMS, 0x80207509);
    assert.equal(abi.UBLK_U_CMD_START_USER_RECOVERY, 0xc0207510);
    assert.equal(abi.UBLK_U_CMD_END_USER_RECOVERY, 0xc0207511);
    assert.equal(abi.UBLK_U_CMD_GET_FEATURES, 0x80207513);
    assert.equal(abi.UBLK_U_IO_FETCH_REQ, 0xc0107520);
    assert.equal(abi.UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0xc0107521);
  });

  it('ublksrv_ctrl_cmd is 32 bytes with dev_id@0 queue_id@4 len@6 addr@8 data0@16 (§4.1)', () => {
    const bytes = abi.encodeCtrlCmd({ devId: 7, bufAddress: 0x12345678abcd, bufByteLength: 64, data0: 4242n });
    assert.equal(bytes.byteLength, 32);
    const v = view(bytes);
    assert.equal(v.getUint32(0, true), 7);
    assert.equal(v.getUint16(4, true), 0xffff);
    assert.equal(v.getUint16(6, true), 64);
    assert.equal(v.getBigUint64(8, true), 0x12345678abcdn);
    assert.equal(v.getBigUint64(16, true), 4242n);
    assert.ok(bytes.subarray(24).every((b) => b === 0));
  });

  it('ublksrv_ctrl_dev_info encodes the request fields and decodes the kernel answer (§4.2)', () => {
    const bytes = abi.encodeDevInfo({
      queues: 2, depth: 128, maxIoBufBytes: 524288, devId: 0xffffffff, flags: 0x40n, serverFlags: 0x1234_5678_9abc_def0n,
    });
    assert.equal(bytes.byteLength, 64);
    const v = view(bytes);
    assert.equal(v.getUint16(0, true), 2);
    assert.equal(v.getUint16(2, true), 128);
    assert.equal(v.getUint16(4, true), 0, 'state must be 0 on ADD_DEV');
    assert.equal(v.getUint32(8, true), 524288);
    assert.equal(v.getUint32(12, true), 0xffffffff);
    assert.equal(v.getInt32(16, true), 0);
    assert.equal(v.getBigUint64(24, true), 0x40n);
    assert.equal(v.getBigUint64(32, true), 0x1234_5678_9abc_def0n, 'ublksrv_flags@32: the server\'s own mark');

    v.setUint16(4, 1, true);
    v.setUint32(12, 3, true);
    v.setInt32(16, -1, true);
    v.setUint32(40, 1000, true);
    v.setUint32(44, 1001, true);
    const info = abi.decodeDevInfo(bytes);
    assert.deepEqual(info, {
      queues: 2,
      depth: 128,
      state: abi.UblkDevState.Live,
      maxIoBufBytes: 524288,
      devId: 3,
      serverPid: -1,
      flags: 0x40n,
      serverFlags: 0x1234_5678_9abc_def0n,
      ownerUid: 1000,
      ownerGid: 1001,
    });
  });

  it('ublk_params: header, basic@8 and discard@40, 64 bytes (§4.3)', () => {
    const bytes = abi.encodeParams({
      basic: {
        attrs: abi.UBLK_ATTR_VOLATILE_CACHE | abi.UBLK_ATTR_FUA,
        logicalBlockShift: 9,
        physicalBlockShift: 12,
        ioOptShift: 12,
        ioMinShift: 9,
        maxSectors: 1024,
        chunkSectors: 0,
        devSectors: 2 ** 33 + 5,
        virtBoundaryMask: 0n,
      },
      discard: {
        discardAlignment: 0,
        discardGranularity: 4096,
        maxDiscardSectors: 8388607,
        maxWriteZeroesSectors: 8388607,
        maxDiscardSegments: 1,
      },
    });
    assert.equal(bytes.byteLength, 64);
    const v = view(bytes);
    assert.equal(v.getUint32(0, true), 64, 'len');
    assert.equal(v.getUint32(4, true), abi.UBLK_PARAM_TYPE_BASIC | abi.UBLK_PARAM_TYPE_DISCARD, 'types');
    assert.equal(v.getUint32(8, true), 0b1100, 'attrs');
    assert.deepEqual([...bytes.subarray(12, 16)], [9, 12, 12, 9], 'shifts');
    assert.equal(v.getUint32(16, true), 1024, 'max_sectors');
    assert.equal(v.getUint32(20, true), 0, 'chunk_sectors');
    assert.equal(v.getBigUint64(24, true), 2n ** 33n + 5n, 'dev_sectors');
    assert.equal(v.getBigUint64(32, true), 0n, 'virt_boundary_mask');
    assert.equal(v.getUint32(40, true), 0, 'discard_alignment');
    assert.equal(v.getUint32(44, true), 4096, 'discard_granularity');
    assert.equal(v.getUint32(48, true), 8388607, 'max_discard_sectors');
    assert.equal(v.getUint32(52, true), 8388607, 'max_write_zeroes_sectors');
    assert.equal(v.getUint16(56, true), 1, 'max_discard_segments');
  });

  it('ublk_params without discard sets only the basic type bit', () => {
    const basic = {
      attrs: 0, logicalBlockShift: 9, physicalBlockShift: 9, ioOptShift: 9, ioMinShift: 9,
      maxSectors: 8, chunkSectors: 0, devSectors: 100, virtBoundaryMask: 0n,
    };
    const bytes = abi.encodeParams({ basic });
    assert.equal(view(bytes).getUint32(4, true), abi.UBLK_PARAM_TYPE_BASIC);
    assert.ok(bytes.subarray(40).every((b) => b === 0));
    assert.deepEqual(abi.decodeParams(bytes), { basic });
  });

  it('GET_PARAMS: the query asks for 80 bytes and devt@60 decodes (§4.3)', () => {
    const bytes = abi.paramsQueryBuffer();
    assert.equal(bytes.byteLength, 80);
    const v = view(bytes);
    assert.equal(v.getUint32(0, true), 80);
    v.setUint32(4, abi.UBLK_PARAM_TYPE_BASIC | abi.UBLK_PARAM_TYPE_DEVT, true);
    v.setBigUint64(24, 2048n, true);
    v.setUint32(60, 240, true);
    v.setUint32(64, 0, true);
    v.setUint32(68, 259, true);
    v.setUint32(72, 3, true);
    const params = abi.decodeParams(bytes);
    assert.equal(params.basic?.devSectors, 2048);
    assert.equal(params.discard, undefined);
    assert.deepEqual(params.devt, { charMajor: 240, charMinor: 0, diskMajor: 259, diskMinor: 3 });
  });

  it('ublksrv_io_desc: 24-byte entries indexed by tag, op in the low byte (§4.4)', () => {
    const mapping = new ArrayBuffer(4096);
    const v = new DataView(mapping);
    const tag = 5;
    const base = tag * 24;
    v.setUint32(base, abi.UBLK_IO_OP_WRITE | abi.UBLK_IO_F_FUA, true);
    v.setUint32(base + 4, 16, true);
    v.setBigUint64(base + 8, 2n ** 40n + 3n, true);
    v.setBigUint64(base + 16, 0x7f0012340000n, true);
    const desc = abi.decodeIoDesc(new Uint32Array(mapping), tag);
    assert.deepEqual(desc, {
      op: abi.UBLK_IO_OP_WRITE,
      flags: abi.UBLK_IO_F_FUA,
      sectorCount: 16,
      sector: 2 ** 40 + 3,
      bufAddress: 0x7f0012340000,
    });
    assert.equal(abi.decodeIoDesc(new Uint32Array(mapping), tag - 1).sectorCount, 0);

    const kept: abi.IoDesc = { op: 9, flags: 9, sectorCount: 9, sector: 9, bufAddress: 9 };
    assert.equal(abi.decodeIoDescInto(new Uint32Array(mapping), tag, kept), kept, 'decoded into the object given');
    assert.deepEqual(kept, desc);
    abi.decodeIoDescInto(new Uint32Array(mapping), tag - 1, kept);
    assert.deepEqual(kept, { op: 0, flags: 0, sectorCount: 0, sector: 0, bufAddress: 0 }, 'every field is overwritten');
  });

  it('descriptor mmap: 98304-byte stride per queue, length rounded up to pages (§6.1)', () => {
    assert.equal(abi.descriptorMmapByteOffset(0), 0);
    assert.equal(abi.descriptorMmapByteOffset(3), 3 * 98304);
    assert.equal(abi.descriptorMmapByteLength(128), 4096);
    assert.equal(abi.descriptorMmapByteLength(171), 8192);
    assert.equal(abi.descriptorMmapByteLength(4096), 98304);
  });
});
