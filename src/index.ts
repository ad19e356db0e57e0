// The public library surface: what a test, a tool or a new target's author imports.
export * from './base/units';
export * from './base/errno';
export * from './io/bio';
export * from './io/block-device';
export { IoRing, type IoRingOptions } from './io/ring';
export { openFileDevice, FileDevice, type OpenFileDeviceOptions } from './io/file-device';
export * from './dm/target';
export { DaemonScope, TargetTypeRegistry, type ScopeKey, type InternalDevice } from './dm/scope';
export { expectArgCount, openDeviceArea, parseSectorNumber, type DeviceArea } from './dm/table-args';
export { builtInTargetTypes } from './targets';
export * from './dmio';
export * from './kcopyd';
export { createDevice, InProcessDm, InProcessDevice, type CreateDeviceOptions, type InProcessDmOptions } from './daemon/in-process';
export { MemoryDevice, IoGate, memoryDeviceOpener, type MemoryDeviceOptions } from './testing/memory-device';
export { FaultDevice } from './testing/fault-device';
export { loadMemoryTable, testScope, submitted, type MemoryTableOptions } from './testing/tables';
